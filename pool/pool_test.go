package pool

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeConn struct {
	id     int
	dead   atomic.Bool
	closed atomic.Int32
}

func (c *fakeConn) Dead() bool { return c.dead.Load() }
func (c *fakeConn) Close()     { c.closed.Add(1); c.dead.Store(true) }

type dialer struct {
	n    atomic.Int32
	fail atomic.Bool
}

func (d *dialer) dial(ctx context.Context) (*fakeConn, error) {
	if d.fail.Load() {
		return nil, errors.New("refused")
	}
	return &fakeConn{id: int(d.n.Add(1))}, nil
}

func newPool(t *testing.T, size, overflow int, wait time.Duration) (*Pool[*fakeConn], *dialer) {
	d := &dialer{}
	p := New(Options[*fakeConn]{Size: size, MaxOverflow: overflow, WaitTimeout: wait, Dial: d.dial})
	t.Cleanup(p.Close)
	return p, d
}

func TestNoConnectionUntilAsked(t *testing.T) {
	p, d := newPool(t, 4, 0, time.Second)
	if s := p.Stats(); s.Idle+s.Active+s.Opening != 0 || d.n.Load() != 0 {
		t.Fatalf("pool opened connections nobody asked for: %+v", s)
	}
	c, err := p.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	c2, _ := p.Acquire(context.Background(), 0)
	if c2 != c || d.n.Load() != 1 {
		t.Fatalf("idle connection not reused: dials=%d", d.n.Load())
	}
}

func TestCapAndWaitTimeout(t *testing.T) {
	p, d := newPool(t, 2, 0, 50*time.Millisecond)
	a, _ := p.Acquire(context.Background(), 0)
	b, _ := p.Acquire(context.Background(), 0)
	if _, err := p.Acquire(context.Background(), 0); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("third acquire over size 2: got %v, want ErrWaitTimeout", err)
	}
	if d.n.Load() != 2 {
		t.Fatalf("dials = %d, want 2", d.n.Load())
	}
	p.Release(a)
	p.Release(b)
	if s := p.Stats(); s.WaitTimeouts != 1 || s.Idle != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOverflowOnlyWhileQueued(t *testing.T) {
	p, d := newPool(t, 1, 1, time.Second)
	a, _ := p.Acquire(context.Background(), 0)
	b, err := p.Acquire(context.Background(), 0) // would queue: overflow opens
	if err != nil || d.n.Load() != 2 {
		t.Fatalf("overflow: err=%v dials=%d", err, d.n.Load())
	}
	p.Release(b) // overflow and nobody waits: closed
	closed(t, p)
	if b.closed.Load() != 1 {
		t.Fatal("overflow connection kept after release with no waiters")
	}
	p.Release(a)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("idle = %d, want 1", s.Idle)
	}
}

func TestHandoffFIFOAndPriority(t *testing.T) {
	p, _ := newPool(t, 1, 0, 5*time.Second)
	held, _ := p.Acquire(context.Background(), 0)
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	start := func(id, prio int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(context.Background(), prio)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
			p.Release(c)
		}()
		waitFor(t, func() bool { return p.Stats().Waiting >= id })
	}
	start(1, 0)
	start(2, 0)
	start(3, 10) // higher priority jumps the queue
	p.Release(held)
	wg.Wait()
	if len(order) != 3 || order[0] != 3 || order[1] != 1 || order[2] != 2 {
		t.Fatalf("service order %v, want [3 1 2]", order)
	}
}

func TestDeadConnectionsNeverHandedOut(t *testing.T) {
	p, d := newPool(t, 2, 0, time.Second)
	a, _ := p.Acquire(context.Background(), 0)
	p.Release(a)
	a.dead.Store(true) // died while idle, before the pump removed it
	b, err := p.Acquire(context.Background(), 0)
	if err != nil || b == a || d.n.Load() != 2 {
		t.Fatalf("got dead connection back: err=%v same=%v dials=%d", err, b == a, d.n.Load())
	}
	// Remove takes an idle connection out at once.
	p.Release(b)
	if !p.Remove(b) || p.Stats().Idle != 0 {
		t.Fatal("Remove did not take the idle connection out")
	}
}

func TestDialFailureFreesSlotForWaiter(t *testing.T) {
	p, d := newPool(t, 1, 0, time.Second)
	a, _ := p.Acquire(context.Background(), 0)
	got := make(chan error, 1)
	go func() {
		c, err := p.Acquire(context.Background(), 0)
		if err == nil {
			p.Release(c)
		}
		got <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	p.Discard(a) // slot frees: the waiter gets a fresh dial
	if err := <-got; err != nil {
		t.Fatalf("waiter after discard: %v", err)
	}
	if d.n.Load() != 2 {
		t.Fatalf("dials = %d, want 2", d.n.Load())
	}
}

func TestSweepIdleTimeoutAndLifetime(t *testing.T) {
	d := &dialer{}
	p := New(Options[*fakeConn]{Size: 2, IdleTimeout: time.Minute, Dial: d.dial})
	defer p.Close()
	a, _ := p.Acquire(context.Background(), 0)
	p.Release(a)
	p.Sweep(time.Now())
	if p.Stats().Idle != 1 {
		t.Fatal("swept a fresh idle connection")
	}
	p.Sweep(time.Now().Add(2 * time.Minute))
	closed(t, p)
	if p.Stats().Idle != 0 || a.closed.Load() != 1 {
		t.Fatal("idle connection past IdleTimeout kept")
	}
	p.SetLimits(2, 0, time.Second, 0, time.Nanosecond)
	b, _ := p.Acquire(context.Background(), 0)
	time.Sleep(time.Millisecond)
	p.Release(b)
	closed(t, p)
	if b.closed.Load() != 1 {
		t.Fatal("connection past Lifetime returned to the pool")
	}
}

func TestSetLimitsShrinksAndGrows(t *testing.T) {
	p, _ := newPool(t, 3, 0, time.Second)
	var cs []*fakeConn
	for i := 0; i < 3; i++ {
		c, _ := p.Acquire(context.Background(), 0)
		cs = append(cs, c)
	}
	for _, c := range cs {
		p.Release(c)
	}
	p.SetLimits(1, 0, time.Second, 0, 0)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("after shrink idle = %d, want 1", s.Idle)
	}
	p.SetLimits(2, 0, time.Second, 0, 0)
	a, _ := p.Acquire(context.Background(), 0)
	b, err := p.Acquire(context.Background(), 0)
	if err != nil || a == b {
		t.Fatalf("grown pool: %v", err)
	}
}

func TestCloseFailsWaiters(t *testing.T) {
	d := &dialer{}
	p := New(Options[*fakeConn]{Size: 1, Dial: d.dial})
	a, _ := p.Acquire(context.Background(), 0)
	got := make(chan error, 1)
	go func() { _, err := p.Acquire(context.Background(), 0); got <- err }()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	p.Close()
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter after Close: %v", err)
	}
	p.Release(a)
	closed(t, p)
	if a.closed.Load() != 1 {
		t.Fatal("connection released after Close not closed")
	}
}

// closed waits for the closes the pool started to end.
func closed[C Conn](t *testing.T, p *Pool[C]) {
	t.Helper()
	waitFor(t, func() bool { return p.Stats().Closing == 0 })
}

// slowClose is a connection whose Close waits for its upstream (release).
type slowClose struct {
	fakeConn
	release chan struct{}
}

func (c *slowClose) Close() { <-c.release; c.fakeConn.Close() }

// TestClosingCountsAgainstTheCap: a connection the pool closes holds its
// slot until its Close returns (the upstream has let go of it): a caller
// arriving meanwhile queues instead of opening one more, and gets the
// connection dialed once the slot frees.
func TestClosingCountsAgainstTheCap(t *testing.T) {
	release := make(chan struct{})
	var dials atomic.Int32
	p := New(Options[*slowClose]{Size: 1, MaxOverflow: 1, WaitTimeout: 5 * time.Second, Dial: func(context.Context) (*slowClose, error) {
		return &slowClose{fakeConn: fakeConn{id: int(dials.Add(1))}, release: release}, nil
	}})
	a, _ := p.Acquire(context.Background(), 0)
	b, _ := p.Acquire(context.Background(), 0) // overflow
	p.Release(b)                               // nobody waits: b closes, slowly
	if s := p.Stats(); s.Closing != 1 || s.Active != 1 {
		t.Fatalf("after the overflow release: %+v, want 1 closing, 1 active", s)
	}
	got := make(chan *slowClose, 1)
	go func() { c, _ := p.Acquire(context.Background(), 0); got <- c }()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials while a close was under way, want 2 (no third over the cap)", n)
	}
	close(release)
	c := <-got
	if c == nil || c == a || c == b || dials.Load() != 3 {
		t.Fatalf("waiter got %v after %d dials, want a third connection", c, dials.Load())
	}
	closed(t, p)
	if b.closed.Load() != 1 {
		t.Fatal("the overflow connection was not closed")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	d := &dialer{}
	p := New(Options[*fakeConn]{Size: 4, Dial: d.dial})
	defer p.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := p.Acquire(context.Background(), 0)
			if err != nil {
				b.Fatal(err)
			}
			p.Release(c)
		}
	})
}

// taker records what it was handed and on which goroutine's behalf.
type taker struct {
	take  bool
	got   *fakeConn
	inRel atomic.Bool // Take ran while Release was still under way
	rel   *atomic.Bool
}

func (k *taker) Take(c *fakeConn) bool {
	k.got = c
	k.inRel.Store(k.rel.Load())
	return k.take
}

// TestTakerRunsOnRelease: a queued caller's Taker gets the released
// connection on the releasing goroutine, before Acquire returns, and
// Acquire reports whether it used it.
func TestTakerRunsOnRelease(t *testing.T) {
	for _, take := range []bool{true, false} {
		p, _ := newPool(t, 1, 0, time.Second)
		held, _ := p.Acquire(context.Background(), 0)
		var releasing atomic.Bool
		k := &taker{take: take, rel: &releasing}
		type got struct {
			c     *fakeConn
			taken bool
			err   error
		}
		done := make(chan got)
		go func() {
			c, taken, err := p.AcquireFor(context.Background(), 0, k)
			done <- got{c, taken, err}
		}()
		for p.Stats().Waiting == 0 {
			time.Sleep(time.Millisecond)
		}
		releasing.Store(true)
		p.Release(held)
		releasing.Store(false)
		r := <-done
		if r.err != nil || r.c != held || r.taken != take || k.got != held || !k.inRel.Load() {
			t.Fatalf("take=%v: Acquire %+v, Take got %v during Release %v", take, r, k.got, k.inRel.Load())
		}
	}
}

// lateTaker is a taker that did not stay to wait: it counts its wake-ups.
type lateTaker struct {
	taker
	woken atomic.Int32
}

func (k *lateTaker) Wake() { k.woken.Add(1) }

// TestAcquireLater: a caller that goes on instead of waiting is handed a
// released connection on the releasing goroutine like AcquireFor's; it is
// woken only when the result needs it (not taken, an error, a timeout
// reached by Wait itself), and Wait then returns what AcquireFor would.
func TestAcquireLater(t *testing.T) {
	for _, take := range []bool{true, false} {
		p, _ := newPool(t, 1, 0, time.Second)
		held, _ := p.Acquire(context.Background(), 0)
		var releasing atomic.Bool
		k := &lateTaker{taker: taker{take: take, rel: &releasing}}
		c, later, err := p.AcquireLater(context.Background(), 0, k)
		if c != nil || later == nil || err != nil || later.Deadline().IsZero() {
			t.Fatalf("take=%v: AcquireLater with the pool busy = %v, %v, %v; want queued with a deadline", take, c, later, err)
		}
		releasing.Store(true)
		p.Release(held)
		releasing.Store(false)
		if want := map[bool]int32{true: 0, false: 1}[take]; k.woken.Load() != want || k.got != held || !k.inRel.Load() {
			t.Fatalf("take=%v: woken %d times (want %d), Take got %v during Release %v", take, k.woken.Load(), want, k.got, k.inRel.Load())
		}
		c, taken, err := later.Wait()
		if c != held || taken != take || err != nil {
			t.Fatalf("take=%v: Wait = %v, %v, %v", take, c, taken, err)
		}
		p.Release(c)
	}
	// The pool closes: the caller is woken and told.
	p, _ := newPool(t, 1, 0, time.Second)
	held, _ := p.Acquire(context.Background(), 0)
	k := &lateTaker{taker: taker{take: true, rel: new(atomic.Bool)}}
	_, later, _ := p.AcquireLater(context.Background(), 0, k)
	p.Close()
	if _, _, err := later.Wait(); err != ErrClosed || k.woken.Load() != 1 {
		t.Fatalf("closed: Wait error %v, woken %d times; want ErrClosed, once", err, k.woken.Load())
	}
	p.Release(held)
	// Its wait times out: Wait, called when the deadline passed, says so.
	p, _ = newPool(t, 1, 0, 20*time.Millisecond)
	held, _ = p.Acquire(context.Background(), 0)
	k = &lateTaker{taker: taker{take: true, rel: new(atomic.Bool)}}
	_, later, _ = p.AcquireLater(context.Background(), 0, k)
	time.Sleep(time.Until(later.Deadline()))
	if _, _, err := later.Wait(); err != ErrWaitTimeout || p.Stats().Waiting != 0 {
		t.Fatalf("timed out: Wait error %v, %d still waiting; want ErrWaitTimeout, none", err, p.Stats().Waiting)
	}
	p.Release(held)
}

// TestReusedWaiterKeepsItsTimeout: a waiter goes back for reuse only once
// its wait timer is stopped, so the next caller that reuses it still times
// out. A hook runs a second caller right after the first one's waiter is
// recycled, on the same P (GOMAXPROCS 1), so it gets that waiter.
func TestReusedWaiterKeepsItsTimeout(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for i := 0; i < 8; i++ {
		p, _ := newPool(t, 1, 0, 200*time.Millisecond)
		held, _ := p.Acquire(context.Background(), 0)
		second := make(chan error, 1)
		var once sync.Once
		p.testHookRecycled = func() {
			once.Do(func() {
				go func() { _, err := p.Acquire(context.Background(), 0); second <- err }()
				for p.Stats().Waiting == 0 {
					runtime.Gosched()
				}
				time.Sleep(10 * time.Millisecond) // let it reach its wait
			})
		}
		first := make(chan *fakeConn, 1)
		go func() { c, _ := p.Acquire(context.Background(), 0); first <- c }()
		waitFor(t, func() bool { return p.Stats().Waiting == 1 })
		p.Release(held)
		c := <-first
		select {
		case err := <-second:
			if !errors.Is(err, ErrWaitTimeout) {
				t.Fatalf("second waiter: %v, want ErrWaitTimeout", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("round %d: the second waiter, on a reused waiter, never timed out (wait_timeout 200ms)", i)
		}
		p.Release(c)
	}
}

// hangingDialer connects the first n dials and hangs the rest until their
// context ends: an upstream that stopped answering.
type hangingDialer struct {
	n     int32
	dials atomic.Int32
}

func (d *hangingDialer) dial(ctx context.Context) (*fakeConn, error) {
	if i := d.dials.Add(1); i <= d.n {
		return &fakeConn{id: int(i)}, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// refillWaiter returns a pool whose only connection is discarded while a
// caller queues, so the pool dials a new one for that caller (refill) on an
// upstream that no longer answers; the caller's result arrives on the channel.
func refillWaiter(t *testing.T, wait time.Duration) (*Pool[*fakeConn], chan error) {
	d := &hangingDialer{n: 1}
	p := New(Options[*fakeConn]{Size: 1, WaitTimeout: wait, Dial: d.dial})
	t.Cleanup(p.Close)
	held, err := p.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { _, err := p.Acquire(context.Background(), 0); got <- err }()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	p.Discard(held)
	waitFor(t, func() bool { return d.dials.Load() == 2 })
	return p, got
}

// TestRefillDialBoundedByWaitTimeout: a dial the pool starts for a queued
// caller ends at that caller's wait timeout, which it gets.
func TestRefillDialBoundedByWaitTimeout(t *testing.T) {
	p, got := refillWaiter(t, 200*time.Millisecond)
	select {
	case err := <-got:
		if !errors.Is(err, ErrWaitTimeout) {
			t.Fatalf("queued caller: %v, want ErrWaitTimeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued caller still waiting 5s after its 200ms wait timeout: the dial made for it ignores it")
	}
	if s := p.Stats(); s.WaitTimeouts != 1 || s.Opening != 0 || s.Active != 0 {
		t.Fatalf("stats after the timed-out dial: %+v", s)
	}
}

// TestRefillDialEndsOnClose: Close aborts a dial made for a queued caller.
func TestRefillDialEndsOnClose(t *testing.T) {
	p, got := refillWaiter(t, 0)
	p.Close()
	select {
	case err := <-got:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("queued caller after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued caller still waiting 5s after Close: the dial made for it ignores it")
	}
}
