// Package pool keeps a capped set of upstream connections for one database and
// hands them to clients: idle connections first, new ones up to Size, overflow
// ones up to Size+MaxOverflow only while clients queue, and a priority-ordered
// FIFO queue bounded by a wait deadline after that.
//
// The pool knows nothing of the wire protocol: a connection is anything that
// can report itself dead and be closed. It never opens a connection no client
// asked for (no warm minimum): on Neon every new session wakes the compute.
package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is an upstream connection as the pool sees it.
type Conn interface {
	// Dead reports whether the connection can no longer serve (closed by the
	// upstream, broken, or retired); the pool never hands out a dead one.
	Dead() bool
	// Close closes the connection and returns once the upstream has let
	// go of it, or soon after (a bounded wait): the pool counts the
	// connection against its caps until then, so that the upstream never
	// holds more than they allow. It may be called more than once.
	Close()
}

// Taker is a queued caller that can put a released connection to use on the
// releasing goroutine, before its own goroutine runs: a proxy writes the
// caller's pending request at once, so the upstream does not sit idle while
// the caller is scheduled.
type Taker[C Conn] interface {
	// Take is called with the connection handed to the caller; it reports
	// whether it used it. Either way the caller's Acquire then returns it.
	Take(c C) bool
}

// A LateTaker is a Taker whose caller did not stay to wait (AcquireLater):
// Wake is called on the delivering goroutine, after the result is in,
// whenever that result needs the caller (the connection not taken, or an
// error); a result Take used needs nobody, so no goroutine is woken for it.
type LateTaker[C Conn] interface {
	Taker[C]
	Wake()
}

// Later is a queued AcquireLater whose caller went on; Wait ends it.
type Later[C Conn] struct {
	p *Pool[C]
	w *waiter[C]
}

// Deadline is when the wait times out (zero: never): the caller must call
// Wait by then, or when woken, whichever comes first.
func (l *Later[C]) Deadline() time.Time { return l.w.deadline }

// Wait returns the queued acquire's result as AcquireFor would, blocking
// until it is in. Called once.
func (l *Later[C]) Wait() (C, bool, error) { return l.p.wait(l.w.ctx, l.w) }

// Leaser grants the leases a fleet-wide cap on connections is made of
// (package fleet): the pool opens a connection only after TryTake, and
// gives the lease back when the connection closes or its dial fails.
type Leaser interface {
	// TryTake takes a lease for one more connection, or reports that none
	// is free now: the caller then queues and the pool tries again later.
	// It is called without the pool's lock held.
	TryTake() bool
	// Give returns one lease. It is called with the pool's lock held and
	// must not block.
	Give()
}

// ErrFull, wrapped in an error of Options.Dial, says the upstream refused
// the connection because it has too many (SQLSTATE 53300): as when a lease
// is refused, the caller queues (it is not an error for it) and the pool
// tries again later, with backoff.
var ErrFull = errors.New("pool: no room upstream")

// Retry delays after a refused lease or a full upstream: the first, doubled
// while the refusals last, up to the last.
const (
	minRetryDelay = 20 * time.Millisecond
	maxRetryDelay = 250 * time.Millisecond
)

// ErrWaitTimeout is returned by Acquire when no connection freed up within the wait timeout.
var ErrWaitTimeout = errors.New("pool: wait timeout")

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("pool: closed")

// Options configure a Pool. Zero values are valid except Dial.
type Options[C Conn] struct {
	// Size is the number of connections kept; at least 1.
	Size int
	// MaxOverflow is how many more may open while clients queue; they close on release when nobody waits.
	MaxOverflow int
	// WaitTimeout bounds a queued Acquire; 0 waits until the context ends.
	WaitTimeout time.Duration
	// IdleTimeout closes connections idle in the pool longer than this; 0 keeps them.
	IdleTimeout time.Duration
	// Lifetime closes connections older than this when they are released or found idle; 0 keeps them.
	Lifetime time.Duration
	// Dial opens a new connection. It is called without the pool's lock held.
	Dial func(ctx context.Context) (C, error)
	// Retire, when set, is asked on release and on acquire of an idle connection
	// whether the connection should be closed instead of reused (e.g. it points at
	// an upstream no longer in use).
	Retire func(C) bool
	// Leases, when set, must grant a lease before each connection opens.
	Leases Leaser
}

// Pool is a capped pool of connections of type C. Safe for concurrent use.
type Pool[C Conn] struct {
	mu      sync.Mutex
	opts    Options[C]
	idle    []idleConn[C] // LIFO: the most recently used is reused first, so the rest can idle out
	total   int           // open, opening or closing connections
	opening int           // dials under way
	closing int           // closes under way (closeLocked)
	waiters waitQueue[C]
	closed  bool
	born    map[any]connInfo // each connection counted in total
	// ctx ends on Close: it aborts the dials made for queued callers.
	ctx    context.Context
	cancel context.CancelFunc

	// refusing is set from a refusal (no lease, upstream full) until a dial
	// succeeds: the queue's head is then retried after retryDelay (0: none
	// yet), a timer armed while retryArmed.
	refusing   bool
	retryDelay time.Duration
	retryArmed bool

	stats Stats
	// waitTotal is Stats.WaitTotal, kept apart: every wait adds to it, and
	// needs no lock for that.
	waitTotal atomic.Int64

	testHookRecycled func() // tests: runs after a waiter went back for reuse
}

// connInfo is what the pool keeps of a connection it counts.
type connInfo struct {
	born    time.Time // when it was dialed, for Lifetime
	closing bool      // counted in closing
}

type idleConn[C Conn] struct {
	conn  C
	since time.Time
}

// Stats are the pool's counters and gauges.
type Stats struct {
	Idle, Active, Opening, Waiting int
	// Closing: connections the pool closed that the upstream has not let
	// go of yet; they count against the caps.
	Closing int
	// Size and MaxOverflow are the current limits.
	Size, MaxOverflow int
	// Dials, DialErrors, WaitTimeouts, Waits count since start.
	Dials, DialErrors, WaitTimeouts, Waits uint64
	// LeaseRefusals counts connections not opened for want of a lease;
	// UpstreamFull dials the upstream refused as full (ErrFull). Neither is
	// in DialErrors: the callers queued.
	LeaseRefusals, UpstreamFull uint64
	// WaitTotal is the summed time clients spent queued.
	WaitTotal time.Duration
}

// New returns an empty pool: no connection opens until a client asks for one.
func New[C Conn](opts Options[C]) *Pool[C] {
	if opts.Size < 1 {
		opts.Size = 1
	}
	p := &Pool[C]{opts: opts, born: make(map[any]connInfo)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Acquire returns a connection, dialing one if the pool is under its cap, or
// queues until one is released. Higher priority waiters are served first, FIFO
// within a priority. It returns ErrWaitTimeout after Options.WaitTimeout, or a
// dial error when a connection it opened for this caller failed.
func (p *Pool[C]) Acquire(ctx context.Context, priority int) (C, error) {
	c, _, err := p.AcquireFor(ctx, priority, nil)
	return c, err
}

// AcquireFor is Acquire for a caller that, if it has to queue, lets t take
// the connection it is handed on the releasing goroutine (see Taker);
// taken reports whether t did.
func (p *Pool[C]) AcquireFor(ctx context.Context, priority int, t Taker[C]) (c C, taken bool, err error) {
	c, taken, w, err := p.acquire(ctx, priority, t, false)
	if w != nil {
		return p.wait(ctx, w)
	}
	return c, taken, err
}

// AcquireLater is AcquireFor for a caller that, when it has to queue, goes
// on instead of blocking: it gets a Later, and t is woken when the result
// needs it (see LateTaker). A connection t takes is then used without the
// caller's goroutine being scheduled at all until it next has work.
func (p *Pool[C]) AcquireLater(ctx context.Context, priority int, t LateTaker[C]) (C, *Later[C], error) {
	c, _, w, err := p.acquire(ctx, priority, t, true)
	if w != nil {
		return c, &Later[C]{p: p, w: w}, nil
	}
	return c, nil, err
}

// acquire returns a connection at once, or queues and returns the waiter.
func (p *Pool[C]) acquire(ctx context.Context, priority int, t Taker[C], late bool) (c C, taken bool, queued *waiter[C], err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return c, false, nil, ErrClosed
	}
	if c, ok := p.popIdleLocked(); ok {
		p.mu.Unlock()
		return c, false, nil, nil
	}
	// Open a new connection when under Size, or under Size+MaxOverflow now
	// that this client would otherwise queue; not while refusals are being
	// retried (no room upstream: one try per retry delay, not one per
	// caller); with leases, only when nobody queues already (a lease freed
	// goes to the queue's head, by priority).
	full := false
	if p.total < p.opts.Size+p.opts.MaxOverflow && !p.refusing && (p.opts.Leases == nil || p.waiters.len() == 0) {
		p.total++
		p.opening++
		p.mu.Unlock()
		c, err := p.open(ctx)
		if !errors.Is(err, ErrFull) {
			return c, false, nil, err
		}
		// No room upstream (no lease, or the upstream is full): queue like
		// any caller over the pool's cap, and try again later.
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return c, false, nil, ErrClosed
		}
		if c, ok := p.popIdleLocked(); ok {
			p.mu.Unlock()
			return c, false, nil, nil
		}
		full = true
	}
	w := p.waiters.push(priority)
	now := time.Now()
	w.taker, w.ctx, w.deadline, w.late, w.since = t, ctx, time.Time{}, late, now
	if d := p.opts.WaitTimeout; d > 0 {
		w.deadline = now.Add(d)
	}
	p.stats.Waits++
	// Queued under the cap: a lease (or room upstream) is what is missing.
	// Ask for it now, or, while refusals last, at the next retry.
	ask := false
	if roomy := p.total < p.opts.Size+p.opts.MaxOverflow; full || roomy && p.refusing {
		p.retryLaterLocked()
	} else {
		ask = roomy
	}
	p.mu.Unlock()
	if ask {
		p.refill()
	}
	return c, false, w, nil
}

// open takes a lease, when the pool has a Leaser, and dials, for a caller
// already counted in total and opening. Without a lease it returns ErrFull.
func (p *Pool[C]) open(ctx context.Context) (C, error) {
	if l := p.opts.Leases; l != nil && !l.TryTake() {
		p.mu.Lock()
		p.total--
		p.opening--
		p.stats.LeaseRefusals++
		p.mu.Unlock()
		var zero C
		return zero, ErrFull
	}
	return p.dial(ctx)
}

// retryLaterLocked arranges one more try for the queue's head after the
// retry delay, which doubles while refusals go on (up to maxRetryDelay) and
// resets when a dial succeeds; each success tries for the next waiter
// (dialFor). A released connection serves the queue meanwhile.
func (p *Pool[C]) retryLaterLocked() {
	p.refusing = true
	if p.retryArmed || p.closed {
		return
	}
	p.retryArmed = true
	d := max(p.retryDelay, minRetryDelay)
	p.retryDelay = min(2*d, maxRetryDelay)
	time.AfterFunc(d, func() {
		p.mu.Lock()
		p.retryArmed = false
		p.mu.Unlock()
		p.refill()
	})
}

// requeue puts a waiter whose connection could not open for want of room
// back at the head of its priority, unless its wait is over (then it gets
// why) or a connection went idle meanwhile (then it gets that), and tries
// again later.
func (p *Pool[C]) requeue(w *waiter[C]) {
	p.mu.Lock()
	var err error
	switch {
	case p.closed:
		err = ErrClosed
	case w.ctx.Err() != nil:
		err = w.ctx.Err()
	case !w.deadline.IsZero() && !time.Now().Before(w.deadline):
		p.stats.WaitTimeouts++
		err = ErrWaitTimeout
	}
	if err != nil {
		p.mu.Unlock()
		deliver(w, result[C]{err: err})
		return
	}
	// A connection released while this waiter was out of the queue went
	// idle: it is the waiter's.
	if c, ok := p.popIdleLocked(); ok {
		p.mu.Unlock()
		taken := w.taker != nil && w.taker.Take(c)
		deliver(w, result[C]{conn: c, taken: taken})
		return
	}
	p.waiters.pushFront(w)
	p.retryLaterLocked()
	p.mu.Unlock()
}

// deliver hands w its result, and wakes a caller that did not stay to
// wait (AcquireLater) when the result needs it.
func deliver[C Conn](w *waiter[C], r result[C]) {
	t, late := w.taker, w.late // w may be reused once r is in
	w.ready <- r
	if late && !r.taken {
		t.(LateTaker[C]).Wake()
	}
}

func (p *Pool[C]) wait(ctx context.Context, w *waiter[C]) (C, bool, error) {
	var zero C
	start := w.since
	var timeout <-chan time.Time
	if !w.deadline.IsZero() {
		d := time.Until(w.deadline)
		if w.timer == nil {
			w.timer = time.NewTimer(d)
		} else {
			w.timer.Reset(d)
		}
		timeout = w.timer.C
	}
	var err error
	select {
	case r := <-w.ready:
		p.noteWait(start)
		p.recycle(w)
		return r.conn, r.taken, r.err
	case <-timeout:
		err = ErrWaitTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.mu.Lock()
	if p.waiters.remove(w) {
		if err == ErrWaitTimeout {
			p.stats.WaitTimeouts++
		}
		p.mu.Unlock()
		p.noteWait(start)
		p.recycle(w)
		return zero, false, err
	}
	p.mu.Unlock()
	// A connection was handed over just as the wait ended: use it.
	r := <-w.ready
	p.noteWait(start)
	p.recycle(w)
	return r.conn, r.taken, r.err
}

// recycle puts a waiter whose wait is over back for reuse, its timer
// stopped first: once reused, a Stop or a firing would hit the next wait.
func (p *Pool[C]) recycle(w *waiter[C]) {
	if w.timer != nil {
		w.timer.Stop()
	}
	w.taker, w.ctx, w.late = nil, nil, false
	p.waiters.free.Put(w)
	if p.testHookRecycled != nil {
		p.testHookRecycled()
	}
}

func (p *Pool[C]) noteWait(start time.Time) {
	p.waitTotal.Add(int64(time.Since(start)))
}

// dial opens a connection for a caller that has already been counted in total.
func (p *Pool[C]) dial(ctx context.Context) (C, error) {
	c, err := p.opts.Dial(ctx)
	p.mu.Lock()
	p.opening--
	p.stats.Dials++
	if err != nil {
		p.total--
		if p.opts.Leases != nil {
			p.opts.Leases.Give()
		}
		if errors.Is(err, ErrFull) {
			p.stats.UpstreamFull++
			p.mu.Unlock()
			var zero C
			return zero, err
		}
		p.stats.DialErrors++
		p.mu.Unlock()
		// Our slot is free again: let the next waiter try its own dial.
		p.refill()
		var zero C
		return zero, err
	}
	p.born[any(c)] = connInfo{born: time.Now()}
	p.refusing, p.retryDelay = false, 0
	p.mu.Unlock()
	return c, nil
}

// Release returns a connection acquired from the pool. A dead or retired
// connection is closed; otherwise it goes to the first waiter, or back to the
// idle list, or is closed when it is overflow and nobody waits.
func (p *Pool[C]) Release(c C) {
	p.mu.Lock()
	if c.Dead() {
		p.forgetLocked(c)
		p.mu.Unlock()
		c.Close()
		p.refill()
		return
	}
	if p.closed || p.retireLocked(c) {
		p.closeLocked(c)
		p.mu.Unlock()
		return
	}
	if w := p.waiters.pop(); w != nil {
		p.mu.Unlock()
		taken := w.taker != nil && w.taker.Take(c)
		deliver(w, result[C]{conn: c, taken: taken})
		return
	}
	if p.total-p.closing > p.opts.Size {
		p.closeLocked(c)
		p.mu.Unlock()
		return
	}
	p.idle = append(p.idle, idleConn[C]{conn: c, since: time.Now()})
	p.mu.Unlock()
}

// Discard closes a connection that was acquired and can no longer be used.
func (p *Pool[C]) Discard(c C) {
	p.mu.Lock()
	p.forgetLocked(c)
	p.mu.Unlock()
	c.Close()
	p.refill()
}

// Remove takes a connection that died while idle out of the pool. It reports
// whether the connection was idle in this pool (false: a client holds it, and
// will Release or Discard it).
func (p *Pool[C]) Remove(c C) bool {
	p.mu.Lock()
	for i := range p.idle {
		if any(p.idle[i].conn) == any(c) {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			p.forgetLocked(c)
			p.mu.Unlock()
			c.Close()
			p.refill()
			return true
		}
	}
	p.mu.Unlock()
	return false
}

// refill starts a dial for the first waiter when a connection slot has
// freed up, and reports whether it tried. With leases, the lease is taken
// first and the waiter chosen after, so it goes to the queue's head (by
// priority) at the time it is granted. The dial ends with the waiter's
// wait (its deadline or context) and on Close; when the upstream is full
// the waiter goes back to the head of the queue.
func (p *Pool[C]) refill() bool {
	p.mu.Lock()
	if p.closed || p.waiters.len() == 0 || p.total >= p.opts.Size+p.opts.MaxOverflow {
		p.mu.Unlock()
		return false
	}
	p.total++
	p.opening++
	if p.opts.Leases == nil {
		w := p.waiters.pop()
		p.mu.Unlock()
		go p.dialFor(w)
		return true
	}
	p.mu.Unlock()
	go func() {
		if !p.opts.Leases.TryTake() {
			p.mu.Lock()
			p.total--
			p.opening--
			p.stats.LeaseRefusals++
			if p.waiters.len() > 0 {
				p.retryLaterLocked()
			}
			p.mu.Unlock()
			return
		}
		p.mu.Lock()
		w := p.waiters.pop()
		if w == nil { // the waiters gave up meanwhile
			p.total--
			p.opening--
			p.opts.Leases.Give()
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.dialFor(w)
	}()
	return true
}

// dialFor dials for waiter w, popped from the queue and counted in total
// (and holding its lease), and hands it the result.
func (p *Pool[C]) dialFor(w *waiter[C]) {
	wctx, deadline := w.ctx, w.deadline
	ctx, cancel := context.WithCancel(p.ctx)
	if !deadline.IsZero() {
		ctx, cancel = context.WithDeadline(p.ctx, deadline)
	}
	stop := context.AfterFunc(wctx, cancel)
	c, err := p.dial(ctx)
	stop()
	cancel()
	if errors.Is(err, ErrFull) {
		p.requeue(w)
		return
	}
	if err != nil {
		err = p.refillError(err, wctx, ctx)
	}
	deliver(w, result[C]{conn: c, err: err})
	if err == nil {
		p.refill() // room for this one: maybe for the next waiter too
	}
}

// refillError says why a dial made for a waiter failed: the pool closed, the
// waiter gave up or ran out of time, or the dial's own error.
func (p *Pool[C]) refillError(err error, wctx, ctx context.Context) error {
	switch {
	case p.ctx.Err() != nil:
		return ErrClosed
	case wctx.Err() != nil:
		return wctx.Err()
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		p.mu.Lock()
		p.stats.WaitTimeouts++
		p.mu.Unlock()
		return ErrWaitTimeout
	}
	return err
}

func (p *Pool[C]) popIdleLocked() (C, bool) {
	for n := len(p.idle); n > 0; n = len(p.idle) {
		ic := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if ic.conn.Dead() {
			p.forgetLocked(ic.conn)
			go ic.conn.Close()
			continue
		}
		if p.retireLocked(ic.conn) {
			p.closeLocked(ic.conn)
			continue
		}
		return ic.conn, true
	}
	var zero C
	return zero, false
}

func (p *Pool[C]) retireLocked(c C) bool {
	if p.opts.Lifetime > 0 {
		if ci, ok := p.born[any(c)]; ok && time.Since(ci.born) > p.opts.Lifetime {
			return true
		}
	}
	return p.opts.Retire != nil && p.opts.Retire(c)
}

func (p *Pool[C]) forgetLocked(c C) {
	if ci, ok := p.born[any(c)]; ok {
		delete(p.born, any(c))
		p.total--
		if ci.closing {
			p.closing--
		}
		if p.opts.Leases != nil {
			p.opts.Leases.Give()
		}
	}
}

// closeLocked closes c, which is no longer handed out, off the caller's
// goroutine (its Close waits for the upstream): c counts against the caps
// until Close returns, then its slot serves the queue (mu held).
func (p *Pool[C]) closeLocked(c C) {
	ci, ok := p.born[any(c)]
	if !ok || ci.closing {
		return
	}
	ci.closing = true
	p.born[any(c)] = ci
	p.closing++
	go func() {
		c.Close()
		p.mu.Lock()
		p.forgetLocked(c)
		p.mu.Unlock()
		p.refill()
	}()
}

// Sweep closes idle connections past IdleTimeout or Lifetime, and dead ones.
// The janitor calls it periodically.
func (p *Pool[C]) Sweep(now time.Time) {
	var dead []C
	p.mu.Lock()
	kept := p.idle[:0]
	for _, ic := range p.idle {
		expired := p.opts.IdleTimeout > 0 && now.Sub(ic.since) > p.opts.IdleTimeout
		switch {
		case ic.conn.Dead():
			p.forgetLocked(ic.conn)
			dead = append(dead, ic.conn)
		case expired || p.retireLocked(ic.conn):
			p.closeLocked(ic.conn)
		default:
			kept = append(kept, ic)
		}
	}
	clear(p.idle[len(kept):])
	p.idle = kept
	p.mu.Unlock()
	for _, c := range dead {
		c.Close()
	}
	if len(dead) > 0 {
		p.refill()
	}
}

// SetLimits changes the pool's limits live. Extra idle connections close at
// once; extra busy ones close when released.
func (p *Pool[C]) SetLimits(size, maxOverflow int, waitTimeout, idleTimeout, lifetime time.Duration) {
	if size < 1 {
		size = 1
	}
	p.mu.Lock()
	p.opts.Size, p.opts.MaxOverflow = size, maxOverflow
	p.opts.WaitTimeout, p.opts.IdleTimeout, p.opts.Lifetime = waitTimeout, idleTimeout, lifetime
	for p.total-p.closing > size && len(p.idle) > 0 {
		ic := p.idle[0]
		p.idle = p.idle[1:]
		p.closeLocked(ic.conn)
	}
	p.mu.Unlock()
	// A larger pool may serve waiters at once.
	for i := 0; i < size+maxOverflow; i++ {
		p.refill()
	}
}

// Idle returns the idle connections, for inspection (e.g. SHOW SERVERS).
func (p *Pool[C]) Idle() []C {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]C, len(p.idle))
	for i, ic := range p.idle {
		out[i] = ic.conn
	}
	return out
}

// CloseIdle closes every idle connection (e.g. when the upstream switches).
func (p *Pool[C]) CloseIdle() {
	p.mu.Lock()
	for _, ic := range p.idle {
		p.closeLocked(ic.conn)
	}
	p.idle = nil
	p.mu.Unlock()
}

// Close closes idle connections and fails every waiter; connections in use
// close as they are released.
func (p *Pool[C]) Close() {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	for _, ic := range p.idle {
		p.closeLocked(ic.conn)
	}
	p.idle = nil
	var ws []*waiter[C]
	for w := p.waiters.pop(); w != nil; w = p.waiters.pop() {
		ws = append(ws, w)
	}
	p.mu.Unlock()
	for _, w := range ws {
		deliver(w, result[C]{err: ErrClosed})
	}
}

// Stats returns a snapshot of the pool's state and counters.
func (p *Pool[C]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.WaitTotal = time.Duration(p.waitTotal.Load())
	s.Idle = len(p.idle)
	s.Opening = p.opening
	s.Closing = p.closing
	s.Active = p.total - s.Idle - s.Opening - s.Closing
	s.Waiting = p.waiters.len()
	s.Size, s.MaxOverflow = p.opts.Size, p.opts.MaxOverflow
	return s
}

// String describes the pool for logs.
func (p *Pool[C]) String() string {
	s := p.Stats()
	return fmt.Sprintf("pool(active=%d idle=%d opening=%d waiting=%d size=%d+%d)",
		s.Active, s.Idle, s.Opening, s.Waiting, s.Size, s.MaxOverflow)
}
