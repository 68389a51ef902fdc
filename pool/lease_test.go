package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// capLeaser grants at most max leases, shared by every pool given it: a
// fleet cap in miniature.
type capLeaser struct {
	mu        sync.Mutex
	max, held int
	peak      int
}

func (l *capLeaser) TryTake() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held >= l.max {
		return false
	}
	l.held++
	l.peak = max(l.peak, l.held)
	return true
}

func (l *capLeaser) Give() {
	l.mu.Lock()
	l.held--
	l.mu.Unlock()
}

func (l *capLeaser) setMax(n int) {
	l.mu.Lock()
	l.max = n
	l.mu.Unlock()
}

// Two pools of 4 share 3 leases: never more than 3 connections, every
// caller served (the refused ones queue and are served by releases or by
// a retry once a lease frees), no lease lost.
func TestLeasesCapConnectionsAcrossPools(t *testing.T) {
	l := &capLeaser{max: 3}
	var open atomic.Int32
	var peakOpen atomic.Int32
	dial := func(ctx context.Context) (*fakeConn, error) {
		n := open.Add(1)
		for {
			p := peakOpen.Load()
			if n <= p || peakOpen.CompareAndSwap(p, n) {
				break
			}
		}
		return &fakeConn{}, nil
	}
	var pools []*Pool[*fakeConn]
	for range 2 {
		p := New(Options[*fakeConn]{Size: 4, WaitTimeout: 5 * time.Second, Dial: dial, Leases: l,
			IdleTimeout: time.Millisecond})
		t.Cleanup(p.Close)
		pools = append(pools, p)
	}
	// The janitor's sweep closes idle connections, giving their leases to
	// the pool whose callers queue.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				for _, p := range pools {
					p.Sweep(time.Now())
				}
			}
		}
	}()
	var wg sync.WaitGroup
	var errs atomic.Int32
	for i := range 16 {
		p := pools[i%2]
		wg.Go(func() {
			for range 20 {
				c, err := p.Acquire(context.Background(), 0)
				if err != nil {
					errs.Add(1)
					return
				}
				time.Sleep(100 * time.Microsecond)
				if i%3 == 0 { // some connections die: their lease must come back
					c.Close()
					open.Add(-1)
					p.Discard(c)
					continue
				}
				p.Release(c)
			}
		})
	}
	wg.Wait()
	if errs.Load() != 0 {
		t.Fatalf("%d callers got an error; want all served", errs.Load())
	}
	if l.peak > 3 {
		t.Fatalf("peak leases %d over the cap 3", l.peak)
	}
	for _, p := range pools {
		p.CloseIdle()
		closed(t, p)
	}
	if l.held != 0 {
		t.Fatalf("leases held after every connection closed: %d, want 0", l.held)
	}
	s := pools[0].Stats()
	s1 := pools[1].Stats()
	if s.LeaseRefusals+s1.LeaseRefusals == 0 {
		t.Fatalf("no lease was ever refused with 16 callers on 3 leases: the test did not test")
	}
}

// A caller refused a lease queues with its priority: when a lease frees,
// the highest priority waiter is served first.
func TestLeaseRefusedCallersKeepPriority(t *testing.T) {
	l := &capLeaser{max: 0}
	p := New(Options[*fakeConn]{Size: 4, WaitTimeout: 5 * time.Second, Leases: l,
		Dial: func(ctx context.Context) (*fakeConn, error) { return &fakeConn{}, nil }})
	t.Cleanup(p.Close)
	order := make(chan int, 3)
	var wg sync.WaitGroup
	for i, prio := range []int{0, 5, 1} {
		wg.Go(func() {
			c, err := p.Acquire(context.Background(), prio)
			if err != nil {
				t.Error(err)
				return
			}
			order <- prio
			time.Sleep(20 * time.Millisecond)
			p.Release(c)
		})
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	l.setMax(1)
	wg.Wait()
	close(order)
	var got []int
	for v := range order {
		got = append(got, v)
	}
	if fmt.Sprint(got) != "[5 1 0]" {
		t.Fatalf("served in priority order %v, want [5 1 0]", got)
	}
}

// An upstream that refuses connections as full (ErrFull) is no error for
// the caller: it queues, the dial is retried, and a release serves it.
func TestUpstreamFullQueuesTheCaller(t *testing.T) {
	var room atomic.Int32
	room.Store(1)
	p := New(Options[*fakeConn]{Size: 4, WaitTimeout: 5 * time.Second,
		Dial: func(ctx context.Context) (*fakeConn, error) {
			if room.Add(-1) < 0 {
				room.Add(1)
				return nil, fmt.Errorf("%w: sorry, too many clients already", ErrFull)
			}
			return &fakeConn{}, nil
		}})
	t.Cleanup(p.Close)
	a, err := p.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		b, err := p.Acquire(context.Background(), 0)
		if err == nil {
			p.Release(b)
		}
		got <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	time.Sleep(3 * minRetryDelay) // retries meet a full upstream
	p.Release(a)                  // ... and a release serves the caller
	if err := <-got; err != nil {
		t.Fatalf("caller refused by a full upstream got %v, want to wait and be served", err)
	}
	if s := p.Stats(); s.UpstreamFull == 0 || s.DialErrors != 0 {
		t.Fatalf("stats %+v: want UpstreamFull counted, no dial errors", s)
	}
	// Room upstream again: a queued caller gets its own connection by retry.
	c1, _ := p.Acquire(context.Background(), 0)
	go func() {
		time.Sleep(50 * time.Millisecond)
		room.Add(1)
	}()
	c2, err := p.Acquire(context.Background(), 0)
	if err != nil || c2 == c1 {
		t.Fatalf("retry after room came back: %v", err)
	}
	// A full upstream that stays full: the caller's wait times out (pgguard's
	// own 53300, naming pool.wait_timeout), never the upstream's error.
	p.SetLimits(4, 0, 100*time.Millisecond, 0, 0)
	if _, err := p.Acquire(context.Background(), 0); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("full upstream past the wait: %v, want ErrWaitTimeout", err)
	}
}
