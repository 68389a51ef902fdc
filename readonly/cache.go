package readonly

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// cache is a bounded map from query text to Verdict, split into shards so
// that concurrent lookups do not contend on one lock. Each shard evicts with
// the CLOCK algorithm: a hit only sets a reference bit under the read lock,
// so hits never take the write lock and never allocate.
type cache struct {
	seed   maphash.Seed
	mask   uint64 // len(shards)-1; len(shards) is a power of two
	shards []shard
}

// shard is one lock's worth of the cache.
type shard struct {
	mu    sync.RWMutex
	index map[string]int32 // text → position in slots; guarded by mu
	slots []slot           // grows to cap(slots), then reused; guarded by mu
	hand  int              // next slot the clock looks at; guarded by mu
	_     [64]byte         // keep neighbouring shards' locks apart
}

// slot holds one cached verdict.
type slot struct {
	key string
	v   Verdict
	ref atomic.Bool // set by hits under the read lock, cleared by the clock
}

// maxShards bounds the shard count; minShardSize keeps small caches whole.
const (
	maxShards    = 16
	minShardSize = 64
)

// newCache returns a cache holding up to size entries (size > 0).
func newCache(size int) *cache {
	n := 1
	for n < maxShards && size/(n*2) >= minShardSize {
		n *= 2
	}
	c := &cache{seed: maphash.MakeSeed(), mask: uint64(n - 1), shards: make([]shard, n)}
	for i := range c.shards {
		per := size / n
		if i < size%n {
			per++
		}
		c.shards[i].index = make(map[string]int32, per)
		c.shards[i].slots = make([]slot, 0, per)
	}
	return c
}

// get looks key up.
func (c *cache) get(key string) (Verdict, bool) {
	return c.shards[maphash.String(c.seed, key)&c.mask].get(key)
}

// getBytes looks key up without converting it to a string.
func (c *cache) getBytes(key []byte) (Verdict, bool) {
	s := &c.shards[maphash.Bytes(c.seed, key)&c.mask]
	s.mu.RLock()
	i, ok := s.index[string(key)] // no allocation: string(key) only indexes
	v := s.hit(i, ok)
	s.mu.RUnlock()
	return v, ok
}

// put stores v for key, evicting another entry when the shard is full.
func (c *cache) put(key string, v Verdict) {
	c.shards[maphash.String(c.seed, key)&c.mask].put(key, v)
}

func (s *shard) get(key string) (Verdict, bool) {
	s.mu.RLock()
	i, ok := s.index[key]
	v := s.hit(i, ok)
	s.mu.RUnlock()
	return v, ok
}

// hit marks slot i referenced and returns its verdict; s.mu is read-locked.
func (s *shard) hit(i int32, ok bool) Verdict {
	if !ok {
		return Verdict{}
	}
	sl := &s.slots[i]
	if !sl.ref.Load() { // avoid dirtying the cache line on every hit
		sl.ref.Store(true)
	}
	return sl.v
}

func (s *shard) put(key string, v Verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.index[key]; ok {
		return // another goroutine classified the same text first
	}
	if len(s.slots) < cap(s.slots) {
		s.slots = append(s.slots, slot{key: key, v: v})
		s.index[key] = int32(len(s.slots) - 1)
		return
	}
	// Sweep: spare referenced entries once, evict the first unreferenced.
	for {
		sl := &s.slots[s.hand]
		if sl.ref.Load() {
			sl.ref.Store(false)
			s.hand = (s.hand + 1) % len(s.slots)
			continue
		}
		delete(s.index, sl.key)
		sl.key, sl.v = key, v
		s.index[key] = int32(s.hand)
		s.hand = (s.hand + 1) % len(s.slots)
		return
	}
}

// len returns the number of cached entries.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.index)
		s.mu.RUnlock()
	}
	return n
}
