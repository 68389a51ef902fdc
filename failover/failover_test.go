package failover

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
)

// fakeClock runs timers synchronously inside Advance, in due order.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 4, 9, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// Advance moves time forward by d, firing due timers at their own times.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.done && !t.at.After(target) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		next.done = true
		c.now = next.at
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = target
	c.mu.Unlock()
}

// fakeProbe answers probes with the error set per upstream and records them.
type fakeProbe struct {
	clock *fakeClock
	mu    sync.Mutex
	err   [2]error
	calls [2][]time.Time
}

func (p *fakeProbe) probe(ctx context.Context, u Upstream) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls[u] = append(p.calls[u], p.clock.Now())
	return p.err[u]
}

func (p *fakeProbe) set(u Upstream, err error) {
	p.mu.Lock()
	p.err[u] = err
	p.mu.Unlock()
}

func (p *fakeProbe) count(u Upstream) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.calls[u])
}

// logs captures log records.
type logs struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if r.Level == slog.LevelWarn {
			s := r.Message
			r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
			out = append(out, s)
		}
	}
	return out
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

func testFailover() config.Failover {
	return config.Failover{
		FailureThreshold: 3,
		ProbeInterval:    config.D(5 * time.Second),
		ProbeMaxInterval: config.D(5 * time.Minute),
		FailbackAfter:    config.D(30 * time.Second),
		FallbackReadOnly: true,
	}
}

type rig struct {
	m        *Monitor
	clock    *fakeClock
	probe    *fakeProbe
	logs     *logs
	switches []Switch
}

func newRig(t *testing.T, cfg config.Failover, hasFallback bool) *rig {
	t.Helper()
	r := &rig{clock: newFakeClock(), logs: &logs{}}
	r.probe = &fakeProbe{clock: r.clock}
	r.m = New(cfg, hasFallback, r.probe.probe, slog.New(r.logs), r.clock)
	r.m.OnSwitch = func(s Switch) { r.switches = append(r.switches, s) }
	t.Cleanup(r.m.Close)
	return r
}

func (r *rig) fail(n int) {
	for range n {
		r.m.Failure(r.m.Active(), errRefused)
	}
}

// TestHealthyPrimaryIsNeverProbed: below the threshold, and with successes
// in between, nothing switches and nothing is probed, however long it runs.
func TestHealthyPrimaryIsNeverProbed(t *testing.T) {
	r := newRig(t, testFailover(), true)
	for range 100 {
		r.fail(2)
		r.m.Success(Primary)
		r.clock.Advance(time.Minute)
	}
	r.m.Lost(Primary, errors.New("EOF"))
	r.clock.Advance(24 * time.Hour)
	if r.m.Active() != Primary || len(r.switches) != 0 {
		t.Fatalf("switched on a healthy primary: %v", r.switches)
	}
	if n := r.probe.count(Primary) + r.probe.count(Fallback); n != 0 {
		t.Fatalf("%d probes of a healthy primary", n)
	}
	if !r.m.Serving() {
		t.Fatal("not serving")
	}
}

func TestSwitchAfterThreshold(t *testing.T) {
	r := newRig(t, testFailover(), true)
	r.fail(2)
	if r.m.Active() != Primary {
		t.Fatal("switched below the threshold")
	}
	r.m.Success(Primary) // resets the count
	r.fail(2)
	if r.m.Active() != Primary {
		t.Fatal("a success did not reset the count")
	}
	r.m.Failure(Primary, &pgconn.PgError{Severity: "FATAL", Code: "XX000",
		Message: "Your account or project has exceeded the compute time quota. Upgrade your plan to increase limits."})
	if r.m.Active() != Fallback {
		t.Fatal("did not switch at the threshold")
	}
	if len(r.switches) != 1 || r.switches[0].From != Primary || r.switches[0].To != Fallback {
		t.Fatalf("switches = %+v", r.switches)
	}
	if !strings.Contains(r.switches[0].Reason, "3 consecutive failures") {
		t.Errorf("reason = %q", r.switches[0].Reason)
	}
	w := r.logs.warnings()
	if len(w) != 1 || !strings.Contains(w[0], "fallback") || !strings.Contains(w[0], "compute time quota") {
		t.Errorf("WARN lines = %q", w)
	}
	if !r.m.Serving() {
		t.Error("not serving on a working fallback")
	}
	// More failures of the primary (sessions still on it) change nothing.
	r.m.Failure(Primary, errRefused)
	r.m.Success(Primary)
	if r.m.Active() != Fallback || len(r.switches) != 1 {
		t.Fatal("traffic on the old primary changed the state")
	}
}

func TestNotFailuresAreIgnored(t *testing.T) {
	r := newRig(t, testFailover(), true)
	for range 10 {
		r.m.Failure(Primary, context.Canceled)
		r.m.Lost(Primary, net.ErrClosed)
		r.m.Failure(Primary, nil)
	}
	if r.m.Active() != Primary || r.m.State().Primary.ConsecutiveFailures != 0 {
		t.Fatalf("state = %+v", r.m.State())
	}
}

// TestLostCoalesced: connections dying together count once.
func TestLostCoalesced(t *testing.T) {
	r := newRig(t, testFailover(), true)
	for range 20 {
		r.m.Lost(Primary, errors.New("read: connection reset by peer: EOF"))
	}
	if n := r.m.State().Primary.ConsecutiveFailures; n != 1 {
		t.Fatalf("20 simultaneous losses counted %d times, want 1", n)
	}
	r.clock.Advance(1100 * time.Millisecond)
	r.m.Lost(Primary, errors.New("EOF"))
	if n := r.m.State().Primary.ConsecutiveFailures; n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	r.m.Failure(Primary, errRefused)
	if r.m.Active() != Fallback {
		t.Fatal("losses plus a failed dial did not reach the threshold")
	}
}

// TestOldFailuresForgotten: failures more than five minutes apart do not
// add up, however few successes come between them.
func TestOldFailuresForgotten(t *testing.T) {
	r := newRig(t, testFailover(), true)
	for range 10 {
		r.m.Lost(Primary, errors.New("EOF"))
		r.clock.Advance(6 * time.Minute)
	}
	if r.m.Active() != Primary {
		t.Fatal("sporadic losses over an hour switched upstreams")
	}
	r.m.Lost(Primary, errors.New("EOF"))
	r.clock.Advance(4 * time.Minute)
	r.m.Lost(Primary, errors.New("EOF"))
	r.clock.Advance(4 * time.Minute)
	r.m.Failure(Primary, errRefused)
	if r.m.Active() != Fallback {
		t.Fatal("failures within five minutes of each other did not add up")
	}
}

// TestProbeBackoff: probes start at probe_interval and double up to
// probe_max_interval while the primary stays down.
func TestProbeBackoff(t *testing.T) {
	r := newRig(t, testFailover(), true)
	r.probe.set(Primary, errRefused)
	start := r.clock.Now()
	r.fail(3)
	r.clock.Advance(40 * time.Minute)
	want := []time.Duration{5, 15, 35, 75, 155, 315, 615, 915, 1215, 1515, 1815, 2115}
	got := r.probe.calls[Primary]
	if len(got) != len(want) {
		t.Fatalf("%d probes in 40 min, want %d: %v", len(got), len(want), got)
	}
	for i, at := range got {
		if d := at.Sub(start); d != want[i]*time.Second {
			t.Errorf("probe %d at +%s, want +%ds", i, d, want[i])
		}
	}
	if r.probe.count(Fallback) != 0 {
		t.Error("probed a working fallback")
	}
	st := r.m.State()
	if st.NextProbe.IsZero() || st.ProbeIntervalSeconds != 300 {
		t.Errorf("state = %+v", st)
	}
}

// TestFailback: traffic returns once every probe succeeded for
// failback_after, and a failed probe restarts that period.
func TestFailback(t *testing.T) {
	r := newRig(t, testFailover(), true)
	r.probe.set(Primary, errRefused)
	r.fail(3)
	r.clock.Advance(40 * time.Second) // probes at +5, +15, +35 failed; next at +75
	r.probe.set(Primary, nil)
	r.clock.Advance(35 * time.Second) // +75: first success
	healthyAt := r.clock.Now()
	if st := r.m.State(); !st.PrimaryHealthySince.Equal(healthyAt) {
		t.Fatalf("healthy since %v, want %v", st.PrimaryHealthySince, healthyAt)
	}
	r.clock.Advance(12 * time.Second) // +87: probes at +80, +85 ok
	r.probe.set(Primary, errRefused)
	r.clock.Advance(5 * time.Second) // +92: +90 failed: period restarts, backoff 10s
	if !r.m.State().PrimaryHealthySince.IsZero() {
		t.Fatal("a failed probe did not restart the healthy period")
	}
	r.probe.set(Primary, nil)
	r.clock.Advance(8 * time.Second) // +100 ok: healthy from here
	healthyAt = r.clock.Now()
	r.clock.Advance(29 * time.Second)
	if r.m.Active() != Fallback {
		t.Fatal("failed back before failback_after")
	}
	r.clock.Advance(time.Second)
	if r.m.Active() != Primary {
		t.Fatalf("still on the fallback %s after the primary became healthy", r.clock.Now().Sub(healthyAt))
	}
	if len(r.switches) != 2 || r.switches[1].To != Primary || !r.switches[1].At.Equal(healthyAt.Add(30*time.Second)) {
		t.Fatalf("switches = %+v", r.switches)
	}
	// Back on a healthy primary: no more probes, ever.
	n := r.probe.count(Primary)
	r.clock.Advance(time.Hour)
	if r.probe.count(Primary) != n {
		t.Fatal("probed the primary after failing back")
	}
	if st := r.m.State(); !st.NextProbe.IsZero() || st.Primary.Down {
		t.Fatalf("state after failback: %+v", st)
	}
	// And it can fail over again.
	r.fail(3)
	if r.m.Active() != Fallback {
		t.Fatal("no second failover")
	}
}

func TestFailbackAfterZero(t *testing.T) {
	cfg := testFailover()
	cfg.FailbackAfter = config.D(0)
	r := newRig(t, cfg, true)
	r.fail(3)
	r.clock.Advance(5 * time.Second)
	if r.m.Active() != Primary {
		t.Fatal("failback_after = 0 did not return at the first good probe")
	}
}

func TestRecentSwitches(t *testing.T) {
	cfg := testFailover()
	cfg.FailbackAfter = config.D(0)
	r := newRig(t, cfg, true)
	for range 6 { // 12 switches: away at each fail(3), back at the next probe
		r.fail(3)
		r.clock.Advance(5 * time.Second)
	}
	st := r.m.State()
	if st.Switches != 12 || len(st.RecentSwitches) != maxRecent {
		t.Fatalf("switches %d, recent %d; want 12 and %d", st.Switches, len(st.RecentSwitches), maxRecent)
	}
	for i, sw := range st.RecentSwitches {
		want := r.switches[len(r.switches)-1-i]
		if sw != want {
			t.Errorf("recent[%d] = %+v, want %+v (newest first)", i, sw, want)
		}
	}
	if *st.LastSwitch != st.RecentSwitches[0] || st.LastSwitch.To != Primary {
		t.Errorf("last switch %+v", st.LastSwitch)
	}
}

// TestNoFallback: the primary is marked down (not serving) and probed, and
// comes back with a good dial or a good probe.
func TestNoFallback(t *testing.T) {
	r := newRig(t, testFailover(), false)
	r.probe.set(Primary, errRefused)
	r.fail(3)
	if r.m.Active() != Primary || r.m.Serving() || len(r.switches) != 0 {
		t.Fatalf("active %s serving %v switches %v", r.m.Active(), r.m.Serving(), r.switches)
	}
	if w := r.logs.warnings(); len(w) != 1 || !strings.Contains(w[0], "no fallback") {
		t.Errorf("WARN lines = %q", w)
	}
	r.clock.Advance(6 * time.Second)
	if r.probe.count(Primary) != 1 {
		t.Fatal("a down primary without fallback is not probed")
	}
	r.m.Success(Primary) // a client's dial worked
	if !r.m.Serving() {
		t.Fatal("a successful dial did not end the outage")
	}
	r.clock.Advance(time.Hour)
	if r.probe.count(Primary) != 1 {
		t.Fatal("probing went on after the primary came back")
	}

	r.fail(3)
	r.probe.set(Primary, nil)
	r.clock.Advance(5 * time.Second)
	if !r.m.Serving() {
		t.Fatal("a good probe did not end the outage")
	}
}

// TestFallbackDown: on the fallback, a failing fallback means nothing can
// serve; it is probed with the primary and recovers.
func TestFallbackDown(t *testing.T) {
	r := newRig(t, testFailover(), true)
	r.probe.set(Primary, errRefused)
	r.probe.set(Fallback, errRefused)
	r.fail(3)
	r.fail(2)
	if !r.m.Serving() {
		t.Fatal("not serving below the fallback's threshold")
	}
	r.fail(1)
	if r.m.Serving() || r.m.Active() != Fallback {
		t.Fatal("a failing fallback still counts as serving")
	}
	r.clock.Advance(5 * time.Second)
	if r.probe.count(Fallback) != 1 {
		t.Fatal("a down fallback is not probed")
	}
	r.probe.set(Fallback, nil)
	r.clock.Advance(10 * time.Second)
	if !r.m.Serving() {
		t.Fatal("a good fallback probe did not restore it")
	}
	r.clock.Advance(20 * time.Second)
	if r.probe.count(Fallback) != 2 {
		t.Fatalf("a working fallback is still probed: %d", r.probe.count(Fallback))
	}
}

func TestCloseStopsProbing(t *testing.T) {
	r := newRig(t, testFailover(), true)
	r.probe.set(Primary, errRefused)
	r.fail(3)
	r.m.Close()
	r.clock.Advance(time.Hour)
	if r.probe.count(Primary) != 0 {
		t.Fatal("probed after Close")
	}
}

func TestConfigureLive(t *testing.T) {
	r := newRig(t, testFailover(), true)
	cfg := testFailover()
	cfg.FailureThreshold = 1
	r.m.Configure(cfg)
	r.fail(1)
	if r.m.Active() != Fallback {
		t.Fatal("new failure_threshold not applied")
	}
}

func TestStateJSON(t *testing.T) {
	r := newRig(t, testFailover(), true)
	b, _ := json.Marshal(r.m.State())
	if s := string(b); !strings.Contains(s, `"active":"primary"`) || strings.Contains(s, "next_probe") || !strings.Contains(s, `"fallback":{`) {
		t.Errorf("healthy state JSON: %s", s)
	}
	r.fail(3)
	b, _ = json.Marshal(r.m.State())
	var back State
	if err := json.Unmarshal(b, &back); err != nil || back.Active != Fallback || back.LastSwitch.From != Primary {
		t.Errorf("state JSON does not read back: %v %+v", err, back)
	}
	if err := json.Unmarshal([]byte(`{"active":"secondary"}`), &back); err == nil {
		t.Error("an unknown upstream name was accepted")
	}
	s := string(b)
	for _, want := range []string{`"active":"fallback"`, `"next_probe":`, `"last_switch":{"from":"primary","to":"fallback"`, `"down":true`, "connection refused"} {
		if !strings.Contains(s, want) {
			t.Errorf("state JSON lacks %s: %s", want, s)
		}
	}
}

// TestConcurrent exercises the Monitor from many goroutines with the real
// clock and a tiny probe interval (run with -race).
func TestConcurrent(t *testing.T) {
	cfg := testFailover()
	cfg.ProbeInterval = config.D(time.Millisecond)
	cfg.ProbeMaxInterval = config.D(2 * time.Millisecond)
	cfg.FailbackAfter = config.D(3 * time.Millisecond)
	var flaky sync.Mutex
	n := 0
	m := New(cfg, true, func(ctx context.Context, u Upstream) error {
		flaky.Lock()
		defer flaky.Unlock()
		n++
		if n%3 == 0 {
			return errRefused
		}
		return nil
	}, nil, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				u := m.Active()
				switch (g + i) % 4 {
				case 0:
					m.Success(u)
				case 1:
					m.Lost(u, errRefused)
				default:
					m.Failure(u, errRefused)
				}
				_ = m.State()
				_ = m.Serving()
			}
		}()
	}
	wg.Wait()
	time.Sleep(20 * time.Millisecond)
	m.Close()
	if st := m.State(); st.Switches == 0 {
		t.Errorf("no switches under constant failures: %+v", st)
	}
}
