package textcache

import (
	"container/list"
	"fmt"
	"sync"
	"testing"
)

func TestBounded(t *testing.T) {
	for _, size := range []int{1, 7, 64, 100, 1000, 5000} {
		c := New[string](size)
		for i := 0; i < 3*size+10; i++ {
			c.Put(fmt.Sprint(i), fmt.Sprint(i))
		}
		if n := c.Len(); n > size {
			t.Errorf("size %d: holds %d entries", size, n)
		}
		// Whatever survived maps to its own value.
		for i := 0; i < 3*size+10; i++ {
			k := fmt.Sprint(i)
			if v, ok := c.Get(k); ok && v != k {
				t.Fatalf("size %d: %q maps to %q", size, k, v)
			}
		}
	}
}

func TestKeepsHotEntries(t *testing.T) {
	c := New[int](10)
	c.Put("hot", 1)
	for i := 0; i < 100; i++ {
		if _, ok := c.Get("hot"); !ok {
			t.Fatalf("hot entry evicted after %d cold inserts", i)
		}
		c.Put(fmt.Sprint(i), 0)
	}
}

func TestFirstPutWins(t *testing.T) {
	c := New[int](10)
	c.Put("k", 1)
	c.Put("k", 2)
	if v, _ := c.Get("k"); v != 1 {
		t.Errorf("Get = %d, want the first value 1", v)
	}
	if v, ok := c.GetBytes([]byte("k")); !ok || v != 1 {
		t.Errorf("GetBytes = %d, %v", v, ok)
	}
	if _, ok := c.Get("absent"); ok {
		t.Error("absent key found")
	}
}

func TestHitDoesNotAllocate(t *testing.T) {
	c := New[*int](100)
	q := "UPDATE pgbench_accounts SET abalance = abalance + 0 WHERE aid = 0;"
	qb := []byte(q) // longer than the 32-byte stack buffer of string(b)
	c.Put(q, new(int))
	if n := testing.AllocsPerRun(100, func() { c.Get(q) }); n != 0 {
		t.Errorf("Get hit: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { c.GetBytes(qb) }); n != 0 {
		t.Errorf("GetBytes hit: %v allocs", n)
	}
}

func TestConcurrent(t *testing.T) {
	c := New[string](128) // 2 shards, much smaller than the key set
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				k := fmt.Sprint((i * (g + 1)) % 500)
				if v, ok := c.Get(k); ok && v != k {
					t.Errorf("%q maps to %q", k, v)
					return
				}
				c.Put(k, k)
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 128 {
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
	v   bool
}

func (l *lru) get(k string) (bool, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.items[k]
	if !ok {
		return false, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruEntry).v, true
}

func (l *lru) put(k string, v bool) {
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

// BenchmarkHit compares hits in the CLOCK cache with a mutex LRU, serially
// and from all Ps at once, on pgbench-like texts.
func BenchmarkHit(b *testing.B) {
	var qs []string
	for i := range 64 {
		qs = append(qs, fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", i))
	}
	clock := New[bool](4096)
	lr := &lru{ll: list.New(), items: map[string]*list.Element{}, size: 4096}
	for _, q := range qs {
		clock.Put(q, true)
		lr.put(q, true)
	}
	for _, tc := range []struct {
		name string
		get  func(string) (bool, bool)
	}{{"clock", clock.Get}, {"lru", lr.get}} {
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
