// Package textcache is a bounded, concurrent map from SQL text to what a
// package decided about it (the read-only classifier's verdicts, the result
// cache's statement analyses). Lookups never allocate, not even for a key
// given as bytes, and hits never take a write lock.
package textcache

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Cache maps text to V, holding at most the size given to New. It is split
// into shards so that concurrent lookups do not contend on one lock. Each
// shard evicts with the CLOCK algorithm: a hit only sets a reference bit
// under the read lock. Safe for concurrent use.
type Cache[V any] struct {
	seed   maphash.Seed
	mask   uint64 // len(shards)-1; len(shards) is a power of two
	shards []shard[V]
}

// shard is one lock's worth of the cache.
type shard[V any] struct {
	mu    sync.RWMutex
	index map[string]int32 // text → position in slots; guarded by mu
	slots []slot[V]        // grows as texts come, up to size, then reused; guarded by mu
	size  int              // entries the shard holds at most
	hand  int              // next slot the clock looks at; guarded by mu
	_     [64]byte         // keep neighbouring shards' locks apart
}

// slot holds one cached value.
type slot[V any] struct {
	key string
	v   V
	ref atomic.Bool // set by hits under the read lock, cleared by the clock
}

// maxShards bounds the shard count; minShardSize keeps small caches whole.
const (
	maxShards    = 16
	minShardSize = 64
)

// New returns a cache holding up to size entries (size > 0). Memory is
// taken as entries come, not up front: a sidecar that sees a few dozen
// texts keeps a few dozen.
func New[V any](size int) *Cache[V] {
	n := 1
	for n < maxShards && size/(n*2) >= minShardSize {
		n *= 2
	}
	c := &Cache[V]{seed: maphash.MakeSeed(), mask: uint64(n - 1), shards: make([]shard[V], n)}
	for i := range c.shards {
		per := size / n
		if i < size%n {
			per++
		}
		c.shards[i].index = map[string]int32{}
		c.shards[i].size = per
	}
	return c
}

// Get looks key up.
func (c *Cache[V]) Get(key string) (V, bool) {
	return c.shards[maphash.String(c.seed, key)&c.mask].get(key)
}

// GetBytes looks key up without converting it to a string.
func (c *Cache[V]) GetBytes(key []byte) (V, bool) {
	s := &c.shards[maphash.Bytes(c.seed, key)&c.mask]
	s.mu.RLock()
	i, ok := s.index[string(key)] // no allocation: string(key) only indexes
	v := s.hit(i, ok)
	s.mu.RUnlock()
	return v, ok
}

// Put stores v for key unless key is present, evicting another entry when
// the shard is full. The cache keeps key: pass a string that pins no larger
// buffer.
func (c *Cache[V]) Put(key string, v V) {
	c.shards[maphash.String(c.seed, key)&c.mask].put(key, v)
}

// Len returns the number of cached entries.
func (c *Cache[V]) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.index)
		s.mu.RUnlock()
	}
	return n
}

func (s *shard[V]) get(key string) (V, bool) {
	s.mu.RLock()
	i, ok := s.index[key]
	v := s.hit(i, ok)
	s.mu.RUnlock()
	return v, ok
}

// hit marks slot i referenced and returns its value; s.mu is read-locked.
func (s *shard[V]) hit(i int32, ok bool) V {
	if !ok {
		var zero V
		return zero
	}
	sl := &s.slots[i]
	if !sl.ref.Load() { // avoid dirtying the cache line on every hit
		sl.ref.Store(true)
	}
	return sl.v
}

func (s *shard[V]) put(key string, v V) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.index[key]; ok {
		return // another goroutine decided the same text first
	}
	if len(s.slots) < s.size {
		s.slots = append(s.slots, slot[V]{key: key, v: v})
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
