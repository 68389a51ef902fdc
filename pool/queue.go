package pool

import (
	"context"
	"sync"
	"time"
)

// waiter is one queued Acquire. ready receives exactly one result.
type waiter[C Conn] struct {
	ready      chan result[C]
	timer      *time.Timer // wait timeout, reused with the waiter
	taker      Taker[C]    // may take the connection on the releasing goroutine
	ctx        context.Context
	deadline   time.Time // end of the wait; zero: none
	since      time.Time // when it queued
	late       bool      // AcquireLater: the taker is a LateTaker, woken by deliver
	priority   int
	prev, next *waiter[C]
}

type result[C Conn] struct {
	conn  C
	taken bool // the waiter's Taker used it
	err   error
}

// waitQueue orders waiters by priority (highest first), FIFO within a
// priority. Queues are short and priorities few, so a list per priority in a
// small sorted slice is enough. Guarded by the pool's lock.
type waitQueue[C Conn] struct {
	levels []level[C] // sorted by priority, highest first
	n      int
	free   sync.Pool
}

type level[C Conn] struct {
	priority   int
	head, tail *waiter[C]
}

func (q *waitQueue[C]) len() int { return q.n }

// push appends a waiter at its priority's tail.
func (q *waitQueue[C]) push(priority int) *waiter[C] {
	w, _ := q.free.Get().(*waiter[C])
	if w == nil {
		w = &waiter[C]{ready: make(chan result[C], 1)}
	}
	w.priority = priority
	l := q.level(priority)
	w.prev, w.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
	q.n++
	return w
}

// pushFront puts w, popped earlier, back at its priority's head.
func (q *waitQueue[C]) pushFront(w *waiter[C]) {
	l := q.level(w.priority)
	w.prev, w.next = nil, l.head
	if l.head != nil {
		l.head.prev = w
	} else {
		l.tail = w
	}
	l.head = w
	q.n++
}

// level returns priority's level, adding it in order when missing.
func (q *waitQueue[C]) level(priority int) *level[C] {
	i := 0
	for i < len(q.levels) && q.levels[i].priority > priority {
		i++
	}
	if i == len(q.levels) || q.levels[i].priority != priority {
		q.levels = append(q.levels, level[C]{})
		copy(q.levels[i+1:], q.levels[i:])
		q.levels[i] = level[C]{priority: priority}
	}
	return &q.levels[i]
}

// pop removes and returns the first waiter, or nil.
func (q *waitQueue[C]) pop() *waiter[C] {
	for i := range q.levels {
		if w := q.levels[i].head; w != nil {
			q.unlink(i, w)
			return w
		}
	}
	return nil
}

// remove takes w out of the queue; false if it was no longer queued.
func (q *waitQueue[C]) remove(w *waiter[C]) bool {
	for i := range q.levels {
		if q.levels[i].priority != w.priority {
			continue
		}
		for x := q.levels[i].head; x != nil; x = x.next {
			if x == w {
				q.unlink(i, w)
				return true
			}
		}
	}
	return false
}

func (q *waitQueue[C]) unlink(i int, w *waiter[C]) {
	l := &q.levels[i]
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next = nil, nil
	q.n--
	if l.head == nil {
		q.levels = append(q.levels[:i], q.levels[i+1:]...)
	}
}
