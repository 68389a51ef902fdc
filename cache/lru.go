package cache

import (
	"sync"
	"time"
)

// lru is the in-process cache in front of Redis: entries by digest, least
// recently used evicted first, bounded in bytes. It saves moving a reply
// over the network; it never decides freshness alone (every hit still
// compares generations).
type lru struct {
	mu    sync.Mutex
	m     map[[32]byte]*lruNode // guarded by mu
	head  lruNode               // sentinel: head.next is the most recent
	bytes int                   // guarded by mu
	max   int                   // guarded by mu; 0 stores nothing
}

type lruNode struct {
	e          *entry
	prev, next *lruNode
}

func newLRU(max int) *lru {
	l := &lru{m: map[[32]byte]*lruNode{}, max: max}
	l.head.prev, l.head.next = &l.head, &l.head
	return l
}

// get returns the entry for digest, dropping it if it expired by now.
func (l *lru) get(digest [32]byte, now time.Time) *entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.m[digest]
	if n == nil {
		return nil
	}
	if !now.Before(n.e.expires) {
		l.remove(n)
		return nil
	}
	l.unlink(n)
	l.pushFront(n)
	return n.e
}

// put stores e, replacing an entry of the same digest, and evicts the least
// recently used until the bound holds. An entry larger than the bound is
// not kept.
func (l *lru) put(e *entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.m[e.digest]; old != nil {
		l.remove(old)
	}
	if e.size() > l.max {
		return
	}
	n := &lruNode{e: e}
	l.m[e.digest] = n
	l.pushFront(n)
	l.bytes += e.size()
	l.trim()
}

// drop forgets digest's entry.
func (l *lru) drop(digest [32]byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.m[digest]; n != nil {
		l.remove(n)
	}
}

// clear forgets everything.
func (l *lru) clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.m)
	l.head.prev, l.head.next = &l.head, &l.head
	l.bytes = 0
}

// resize changes the bound, evicting as needed.
func (l *lru) resize(max int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max = max
	l.trim()
}

// stats returns the entries and bytes held, and the bound.
func (l *lru) stats() (entries, bytes, max int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m), l.bytes, l.max
}

// trim evicts from the tail until the bound holds; l.mu is held.
func (l *lru) trim() {
	for l.bytes > l.max && l.head.prev != &l.head {
		l.remove(l.head.prev)
	}
}

// remove unlinks n and forgets it; l.mu is held.
func (l *lru) remove(n *lruNode) {
	l.unlink(n)
	delete(l.m, n.e.digest)
	l.bytes -= n.e.size()
}

func (l *lru) unlink(n *lruNode) { n.prev.next, n.next.prev = n.next, n.prev }

func (l *lru) pushFront(n *lruNode) {
	n.prev, n.next = &l.head, l.head.next
	l.head.next.prev = n
	l.head.next = n
}
