package limiter

import (
	"context"
	"sync"
)

// connSem caps the server connections a rule's clients hold at once. Waiters
// are served first come, first served; a waiter whose context ends gives up
// its place, or passes on a slot granted to it in the meantime, so a
// cancelled wait never keeps a slot.
type connSem struct {
	mu         sync.Mutex
	cap        int // max_connections; < 0 before the first update
	held       int
	n          int // waiters queued
	head, tail *connWaiter
}

type connWaiter struct {
	ready      chan struct{} // closed when granted
	granted    bool          // guarded by connSem.mu
	prev, next *connWaiter
}

// acquire takes a slot, waiting in line until one frees or ctx ends.
func (s *connSem) acquire(ctx context.Context) error {
	s.mu.Lock()
	if s.head == nil && s.held < s.cap {
		s.held++
		s.mu.Unlock()
		return nil
	}
	if err := ctx.Err(); err != nil {
		s.mu.Unlock()
		return err
	}
	w := &connWaiter{ready: make(chan struct{})}
	s.push(w)
	s.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	if w.granted { // granted as ctx ended: hand the slot on
		s.held--
	} else {
		s.remove(w)
	}
	s.grant()
	s.mu.Unlock()
	return ctx.Err()
}

// release frees a slot taken by acquire.
func (s *connSem) release() {
	s.mu.Lock()
	s.held--
	s.grant()
	s.mu.Unlock()
}

// setCap changes max_connections; a lower cap takes effect as slots free.
func (s *connSem) setCap(n int) {
	s.mu.Lock()
	s.cap = n
	s.grant()
	s.mu.Unlock()
}

// state reports held slots and queued waiters.
func (s *connSem) state() (held, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.n
}

// grant hands free slots to the longest waiters. Caller holds mu.
func (s *connSem) grant() {
	for s.head != nil && s.held < s.cap {
		w := s.head
		s.remove(w)
		s.held++
		w.granted = true
		close(w.ready)
	}
}

func (s *connSem) push(w *connWaiter) {
	w.prev = s.tail
	if s.tail != nil {
		s.tail.next = w
	} else {
		s.head = w
	}
	s.tail = w
	s.n++
}

func (s *connSem) remove(w *connWaiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		s.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		s.tail = w.prev
	}
	w.prev, w.next = nil, nil
	s.n--
}

// AcquireConn is called before the session takes a server connection from
// the pool. For every matched rule with max_connections it waits, first come
// first served, for one of the rule's slots; when ctx ends first (the proxy's
// ctx carries pool.wait_timeout) it returns a *LimitError naming
// max_connections and keeps nothing. A session holds at most one set of
// slots: a second call before ReleaseConn returns nil at once.
func (s *Session) AcquireConn(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.refresh()
	if len(s.capped) == 0 || len(s.held) > 0 {
		return nil
	}
	start := s.l.clock.Now()
	for _, r := range s.capped { // by name: one lock order for everyone
		if err := r.st.sem.acquire(ctx); err != nil {
			s.ReleaseConn()
			r.st.rejected.Add(1)
			r.st.mRejected.Inc()
			return r.connError(s.l.clock.Now().Sub(start), err)
		}
		s.held = append(s.held, &r.st.sem)
	}
	return nil
}

// CapsConnections reports whether a matched rule sets max_connections, so
// callers can skip preparing a wait for AcquireConn when none does.
func (s *Session) CapsConnections() bool {
	if s == nil {
		return false
	}
	s.refresh()
	return len(s.capped) > 0
}

// ReleaseConn gives back the slots taken by AcquireConn, when the session
// returns its server connection. No-op when it holds none.
func (s *Session) ReleaseConn() {
	if s == nil {
		return
	}
	for i, sem := range s.held {
		sem.release()
		s.held[i] = nil
	}
	s.held = s.held[:0]
}
