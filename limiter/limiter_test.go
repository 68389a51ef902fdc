package limiter

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
)

// fakeClock is a Clock whose Sleep advances time at once: a single test
// goroutine sees exactly the waits the limiter asks for, without waiting.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	slept  time.Duration
	sleeps int
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.slept += d
	c.sleeps++
	c.mu.Unlock()
	return nil
}

func (c *fakeClock) Sleeps() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sleeps
}

// withTick sets the janitor period; < 0 runs none, the test calls tick.
func withTick(d time.Duration) Option { return func(o *options) { o.tick = d } }

// withRedisBackoff shortens the Redis probe backoff.
func withRedisBackoff(lo, hi time.Duration) Option {
	return func(o *options) { o.retryMin, o.retryMax = lo, hi }
}

// logBuf collects the limiter's log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) Count(s string) int { return strings.Count(l.String(), s) }

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testLimiter builds a Limiter on cfg with a fake clock, no janitor and a
// registry of its own; it is closed when the test ends.
func testLimiter(t *testing.T, cfg *config.Config, clk Clock, opts ...Option) (*Limiter, *prometheus.Registry, *logBuf) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &logBuf{}
	all := append([]Option{WithClock(clk), WithRegisterer(reg), withTick(-1)}, opts...)
	l, err := New(cfg, logs.logger(), all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, reg, logs
}

// testConfig is the defaults plus rules, with the per-rule defaults Load applies.
func testConfig(limits ...config.Limit) *config.Config {
	cfg := config.Default()
	for _, l := range limits {
		if l.Action == "" {
			l.Action = "delay"
		}
		if l.Burst == 0 {
			l.Burst = 1
		}
		if l.Action == "delay" && l.MaxDelay.Duration == 0 {
			l.MaxDelay = config.D(config.DefaultMaxDelay)
		}
		cfg.Limits = append(cfg.Limits, l)
	}
	return cfg
}

var day0 = time.Date(2026, 4, 10, 0, 0, 0, 0, time.UTC)

func TestNilIsNoOp(t *testing.T) {
	var l *Limiter
	s := l.Match(Client{Application: "x"})
	ctx := context.Background()
	if s != nil || s.Admit(ctx) != nil || s.AcquireConn(ctx) != nil || s.Priority() != 0 || l.Budget().Exhausted() || l.Budget().Action() != "" {
		t.Fatal("nil limiter or session is not a no-op")
	}
	s.ReleaseConn()
	s.Observe()
	l.ObserveUpstreamQuery("app", "x", day0)
	l.Reconfigure(config.Default())
	if l.Close() != nil || l.Status() != nil {
		t.Fatal("nil limiter")
	}
}

// A client no rule matches pays no allocation and no lock per query.
func TestNoRuleSessionIsFree(t *testing.T) {
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "availability-worker", QueriesPerMinute: 10, MaxConnections: 2})
	l, _, _ := testLimiter(t, cfg, newFakeClock(day0))
	s := l.Match(Client{Database: "app", Application: "web"})
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if s.Admit(ctx) != nil || s.AcquireConn(ctx) != nil {
			t.Fatal("refused")
		}
		s.Observe()
		s.ReleaseConn()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per query for a client without rules", allocs)
	}
}

func BenchmarkAdmitNoRule(b *testing.B) {
	l, err := New(testConfig(config.Limit{Name: "w", ApplicationName: "w", QueriesPerSecond: 1}), nil, withTick(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	s := l.Match(Client{Application: "web"})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Admit(ctx)
		s.Observe()
	}
}

func BenchmarkAdmitRuleLocal(b *testing.B) {
	l, err := New(testConfig(config.Limit{Name: "w", ApplicationName: "w", QueriesPerSecond: 1e9, Burst: 1000, Action: "reject"}), nil, withTick(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	s := l.Match(Client{Application: "w"})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Admit(ctx)
	}
}

func TestReconfigureKeepsState(t *testing.T) {
	clk := newFakeClock(day0)
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "w", QueriesPerMinute: 10, Burst: 3, Action: "reject"})
	l, _, _ := testLimiter(t, cfg, clk)
	s := l.Match(Client{Application: "w"})
	ctx := context.Background()
	for range 3 {
		if err := s.Admit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s.Admit(ctx) == nil {
		t.Fatal("4th query within burst 3 admitted")
	}
	// Same name, new burst: the empty bucket stays empty.
	cfg2 := testConfig(config.Limit{Name: "workers", ApplicationName: "w", QueriesPerMinute: 10, Burst: 10, Action: "reject", Priority: 3})
	l.Reconfigure(cfg2)
	if s.Admit(ctx) == nil {
		t.Fatal("reload refilled the bucket of a surviving rule")
	}
	if s.Priority() != 3 {
		t.Fatalf("session did not pick up the reloaded rule: priority %d", s.Priority())
	}
	st := l.status()
	if st.Rules[0].Admitted != 3 || st.Rules[0].Rejected != 2 {
		t.Fatalf("counters lost on reload: %+v", st.Rules[0])
	}
	// A renamed rule starts full.
	l.Reconfigure(testConfig(config.Limit{Name: "pollers", ApplicationName: "w", QueriesPerMinute: 10, Burst: 2, Action: "reject"}))
	if err := s.Admit(ctx); err != nil {
		t.Fatalf("new rule's bucket not full: %v", err)
	}
	// No rules: nothing limits.
	l.Reconfigure(testConfig())
	for range 10 {
		if err := s.Admit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Close stops the janitor and the Redis probe.
func TestCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := testConfig(config.Limit{Name: "w", ApplicationName: "w", QueriesPerSecond: 1})
	cfg.Limiter.RedisURL = "redis://127.0.0.1:1/0" // down: the probe runs
	l, err := New(cfg, nil, withTick(5*time.Millisecond), withRedisBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	if s := l.Match(Client{Application: "w"}); s.Admit(context.Background()) != nil {
		t.Fatal("session after Close refused")
	}
}
