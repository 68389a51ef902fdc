package readonly

import (
	"container/list"
	"fmt"
	"sync"
	"testing"
)

func TestCacheBounded(t *testing.T) {
	for _, size := range []int{1, 7, 64, 100, 1000, 5000} {
		c := newCache(size)
		for i := 0; i < 3*size+10; i++ {
			c.put(fmt.Sprint(i), write(fmt.Sprint(i)))
		}
		if n := c.len(); n > size {
			t.Errorf("size %d: holds %d entries", size, n)
		}
		// Whatever survived maps to its own verdict.
		for i := 0; i < 3*size+10; i++ {
			k := fmt.Sprint(i)
			if v, ok := c.get(k); ok && v.Reason != k {
				t.Fatalf("size %d: %q maps to %+v", size, k, v)
			}
		}
	}
}

func TestCacheKeepsHotEntries(t *testing.T) {
	c := newCache(10)
	c.put("hot", read)
	for i := 0; i < 100; i++ {
		if _, ok := c.get("hot"); !ok {
			t.Fatalf("hot entry evicted after %d cold inserts", i)
		}
		c.put(fmt.Sprint(i), read)
	}
}

func TestCacheHitDoesNotAllocate(t *testing.T) {
	c := New(100)
	q := "SELECT 1"
	qb := []byte(pgbenchUpdate) // longer than the 32-byte stack buffer of string(b)
	c.Classify(q)
	c.ClassifyBytes(qb)
	if n := testing.AllocsPerRun(100, func() { c.Classify(q) }); n != 0 {
		t.Errorf("Classify hit: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { c.ClassifyBytes(qb) }); n != 0 {
		t.Errorf("ClassifyBytes hit: %v allocs", n)
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := newCache(128) // 2 shards, much smaller than the key set
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				k := fmt.Sprint((i * (g + 1)) % 500)
				if v, ok := c.get(k); ok && v.Reason != k {
					t.Errorf("%q maps to %+v", k, v)
					return
				}
				c.put(k, write(k))
			}
		}()
	}
	wg.Wait()
	if n := c.len(); n > 128 {
		t.Errorf("holds %d entries", n)
	}
}

// lru is a mutex-guarded LRU, kept only to measure the CLOCK cache against.
type lru struct {
	mu    sync.Mutex
	ll    *list.List
	items map[string]*list.Element
	size  int
}

type lruEntry struct {
	key string
	v   Verdict
}

func (l *lru) get(k string) (Verdict, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.items[k]
	if !ok {
		return Verdict{}, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruEntry).v, true
}

func (l *lru) put(k string, v Verdict) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.items[k]; ok {
		return
	}
	l.items[k] = l.ll.PushFront(&lruEntry{k, v})
	if l.ll.Len() > l.size {
		e := l.ll.Back()
		l.ll.Remove(e)
		delete(l.items, e.Value.(*lruEntry).key)
	}
}

// BenchmarkCacheHit compares hits in the CLOCK cache with a mutex LRU,
// serially and from all Ps at once.
func BenchmarkCacheHit(b *testing.B) {
	qs := pgbenchScript()
	clock := newCache(4096)
	lr := &lru{ll: list.New(), items: map[string]*list.Element{}, size: 4096}
	for _, q := range qs {
		clock.put(q, read)
		lr.put(q, read)
	}
	for _, tc := range []struct {
		name string
		get  func(string) (Verdict, bool)
	}{{"clock", clock.get}, {"lru", lr.get}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tc.get(qs[i%len(qs)])
				i++
			}
		})
		b.Run(tc.name+"-parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					tc.get(qs[i%len(qs)])
				}
			})
		})
	}
}
