package limiter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
)

// pollResult is what a polling worker got over a run.
type pollResult struct {
	polls, admitted, delayed, refused int
	maxDelay                          time.Duration
	lastErr                           error
}

// pollWorker simulates the post-mortem's worker: a query every 50 ms (after
// the previous one returned) for run, under the fake clock. After each worker
// query, a web client's query goes through its own session and must never
// wait.
func pollWorker(t *testing.T, l *Limiter, clk *fakeClock, run time.Duration) pollResult {
	t.Helper()
	ctx := context.Background()
	worker := l.Match(Client{Database: "app", User: "app", Application: "availability-worker"})
	web := l.Match(Client{Database: "app", User: "app", Application: "branding-web"})
	var r pollResult
	end := clk.Now().Add(run)
	for clk.Now().Before(end) {
		clk.Advance(50 * time.Millisecond)
		r.polls++
		before := clk.Now()
		err := worker.Admit(ctx)
		waited := clk.Now().Sub(before)
		switch {
		case err != nil:
			r.refused++
			r.lastErr = err
		case waited > 0:
			r.delayed++
			r.admitted++
		default:
			r.admitted++
		}
		r.maxDelay = max(r.maxDelay, waited)
		sleeps := clk.Sleeps()
		if err := web.Admit(ctx); err != nil || clk.Sleeps() != sleeps {
			t.Fatalf("web client without a rule was refused or delayed: %v", err)
		}
	}
	return r
}

func workerRule(action string) config.Limit {
	return config.Limit{Name: "workers", ApplicationName: "availability-worker", QueriesPerMinute: 10, Burst: 5, Action: action}
}

func TestDelayGivesWorkerItsShare(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, _ := testLimiter(t, testConfig(workerRule("delay")), clk)
	r := pollWorker(t, l, clk, 2*time.Minute)
	// The bucket starts full (5), then one token every 6 s from the first
	// query at 50 ms: tokens at 6.05 s, 12.05 s, ... 120.05 s.
	if r.admitted != 5+20 || r.delayed != 20 || r.refused != r.polls-25 {
		t.Fatalf("delay rule over 2 minutes: %+v; want 25 admitted (burst 5 + 10/min), 20 of them delayed", r)
	}
	if r.maxDelay > 5*time.Second {
		t.Fatalf("a query was held %v, beyond max_delay = 5s", r.maxDelay)
	}
	var le *LimitError
	if !errors.As(r.lastErr, &le) || le.SQLState() != "53400" || le.Rule != "workers" || le.Setting != "limits.queries_per_minute" {
		t.Fatalf("refusal: %#v", r.lastErr)
	}
	for _, want := range []string{`rate limit "workers" exceeded: queries_per_minute = 10 (burst 5)`, "beyond max_delay = 5s", "raise limits.queries_per_minute"} {
		if !strings.Contains(le.Message, want) {
			t.Errorf("message %q lacks %q", le.Message, want)
		}
	}
	if got := testutil.ToFloat64(l.m.delayed.WithLabelValues("workers")); got != 20 {
		t.Errorf("pgguard_limiter_delayed_total = %v, want 20", got)
	}
	if got := testutil.ToFloat64(l.m.rejected.WithLabelValues("workers")); int(got) != r.refused {
		t.Errorf("pgguard_limiter_rejected_total = %v, want %d", got, r.refused)
	}
	t.Logf("delay: %d polls in 2 min at 50 ms: %d admitted (%d delayed, longest %v), %d refused: %s",
		r.polls, r.admitted, r.delayed, r.maxDelay, r.refused, le.Message)
}

func TestRejectGivesWorkerItsShare(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, _ := testLimiter(t, testConfig(workerRule("reject")), clk)
	r := pollWorker(t, l, clk, 2*time.Minute)
	// Tokens at 6.05 s ... 114.05 s; the poll at 120.05 s is not made.
	if r.admitted != 5+19 || r.delayed != 0 || clk.Sleeps() != 0 {
		t.Fatalf("reject rule over 2 minutes: %+v; want 24 admitted, none delayed", r)
	}
	var le *LimitError
	if !errors.As(r.lastErr, &le) || le.SQLState() != "53400" {
		t.Fatalf("refusal: %#v", r.lastErr)
	}
	want := `rate limit "workers" exceeded: queries_per_minute = 10 (burst 5); raise limits.queries_per_minute or lower the client's query rate`
	if le.Message != want {
		t.Fatalf("message\n got %q\nwant %q", le.Message, want)
	}
	t.Logf("reject: %d polls in 2 min at 50 ms: %d admitted, %d refused with %q", r.polls, r.admitted, r.refused, le.Message)
}

func TestDelayCancelledGivesTokenBack(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, _ := testLimiter(t, testConfig(workerRule("delay")), clk)
	s := l.Match(Client{Application: "availability-worker"})
	for range 5 {
		if err := s.Admit(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(2 * time.Second) // the next token is 4 s away: within max_delay
	st := l.st["workers"]
	st.mu.Lock()
	before := st.bucket.level(clk.Now())
	st.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Admit(ctx)
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, context.Canceled) || le.Setting != "limits.queries_per_minute" {
		t.Fatalf("cancelled delay: %v", err)
	}
	st.mu.Lock()
	after := st.bucket.level(clk.Now())
	st.mu.Unlock()
	if diff := after - before; diff > 1e-9 || diff < -1e-9 {
		t.Fatalf("cancelled wait kept its token: %v tokens before, %v after", before, after)
	}
}

func TestBucketSeveralRates(t *testing.T) {
	var b bucket
	now := day0
	b.reshape([nRates]float64{2, 10.0 / 60, 0}, 3, now) // 2/s and 10/min, burst 3
	n := 0
	for i := range 600 { // 60 s at 100 ms
		if _, _, ok := b.take(now.Add(time.Duration(i)*100*time.Millisecond), 0); ok {
			n++
		}
	}
	if n != 3+9 && n != 3+10 { // the minute rate binds: 3 + 60 s x 10/min
		t.Fatalf("%d admitted; want the per-minute rate to bind (12 or 13)", n)
	}
	ok, bind := true, -1
	for i := 0; ok && i < 3; i++ {
		_, bind, ok = b.take(now.Add(60*time.Second), 0)
	}
	if ok || bind != perMinute {
		t.Fatalf("bind %d ok %v; want the per-minute rate named", bind, ok)
	}
}
