package limiter

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMaxConnectionsKeepsWorkersToTheirShare(t *testing.T) {
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "availability-worker", MaxConnections: 2})
	l, _, _ := testLimiter(t, cfg, realClock{})
	sem := &l.st["workers"].sem
	ctx := context.Background()
	w := make([]*Session, 6)
	for i := range w {
		w[i] = l.Match(Client{Database: "app", Application: "availability-worker"})
	}
	for _, s := range w[:2] {
		if err := s.AcquireConn(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := w[0].AcquireConn(ctx); err != nil { // already holding: no second slot
		t.Fatal(err)
	}

	// A third worker times out (pool.wait_timeout) with a 53400 naming
	// max_connections, and takes nothing.
	tctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	err := w[2].AcquireConn(tctx)
	cancel()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, context.DeadlineExceeded) || le.Setting != "limits.max_connections" ||
		!strings.Contains(le.Message, `connection limit "workers" reached: max_connections = 2`) {
		t.Fatalf("timed-out acquire: %v", err)
	}
	if held, waiting := sem.state(); held != 2 || waiting != 0 {
		t.Fatalf("after a timeout: held %d waiting %d, want 2 and 0", held, waiting)
	}
	w[2].ReleaseConn() // holds nothing: must not free a slot
	if held, _ := sem.state(); held != 2 {
		t.Fatalf("ReleaseConn without a slot freed one: held %d", held)
	}

	// A web client without a rule is never held up.
	web := l.Match(Client{Database: "app", Application: "branding-web"})
	if err := web.AcquireConn(ctx); err != nil {
		t.Fatal(err)
	}

	// Waiters are served in arrival order.
	order := make(chan int, 3)
	var wg sync.WaitGroup
	for i := 3; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w[i].AcquireConn(ctx); err != nil {
				t.Error(err)
				return
			}
			order <- i
		}()
		waitFor(t, "waiter queued", func() bool { _, n := sem.state(); return n == i-2 })
	}
	w[0].ReleaseConn()
	if a := <-order; a != 3 {
		t.Fatalf("served %d first, want 3 (FIFO)", a)
	}
	w[1].ReleaseConn()
	if b := <-order; b != 4 {
		t.Fatalf("served %d second, want 4 (FIFO)", b)
	}
	w[3].ReleaseConn()
	if c := <-order; c != 5 {
		t.Fatalf("served %d, want 5", c)
	}
	wg.Wait()
	w[4].ReleaseConn()
	w[5].ReleaseConn()
	if held, waiting := sem.state(); held != 0 || waiting != 0 {
		t.Fatalf("at the end: held %d waiting %d", held, waiting)
	}
	if st := l.status(); st.Rules[0].Rejected != 1 {
		t.Fatalf("rejected = %d, want 1", st.Rules[0].Rejected)
	}
}

// Timeouts racing with releases never leak or overdraw a slot.
func TestConnCancelRace(t *testing.T) {
	var s connSem
	s.setCap(2)
	var inUse, peak atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((g*7+i)%5)*50*time.Microsecond)
				if s.acquire(ctx) == nil {
					n := inUse.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(20 * time.Microsecond)
					inUse.Add(-1)
					s.release()
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if held, waiting := s.state(); held != 0 || waiting != 0 || peak.Load() > 2 {
		t.Fatalf("held %d waiting %d peak %d", held, waiting, peak.Load())
	}
}

// Removing a rule, or its cap, lets its waiters through.
func TestConnCapRemovedOnReload(t *testing.T) {
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "w", MaxConnections: 1})
	l, _, _ := testLimiter(t, cfg, realClock{})
	a, b := l.Match(Client{Application: "w"}), l.Match(Client{Application: "w"})
	if err := a.AcquireConn(context.Background()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.AcquireConn(context.Background()) }()
	waitFor(t, "b queued", func() bool { _, n := l.st["workers"].sem.state(); return n == 1 })
	l.Reconfigure(testConfig())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a.ReleaseConn()
	b.ReleaseConn()
}
