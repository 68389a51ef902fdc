package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

// source is one application's traffic: a query every `every`, starting at
// `phase` into the day, on a server connection of its own opened at its
// first query.
type source struct {
	app   string
	every time.Duration
	phase time.Duration
}

// replayDay drives a fresh budget model through one day (day0, a mid-month
// Friday) of the given traffic, through the calls the proxy makes, and
// returns its figures at the end of the day.
func replayDay(t *testing.T, suspend time.Duration, srcs ...source) (BudgetStatus, []PollerReport) {
	t.Helper()
	clk := newFakeClock(day0)
	cfg := config.Default()
	cfg.Budget.SuspendAfter = config.D(suspend)
	l, _, _ := testLimiter(t, cfg, clk)
	next := make([]time.Duration, len(srcs))
	conns := make([]*Activity, len(srcs))
	for i, s := range srcs {
		next[i] = s.phase
	}
	for { // merge the sources in time order
		k := -1
		for i := range srcs {
			if next[i] < 24*time.Hour && (k < 0 || next[i] < next[k]) {
				k = i
			}
		}
		if k < 0 {
			break
		}
		at := day0.Add(next[k])
		clk.Set(at)
		if conns[k] == nil {
			conns[k] = l.Connected("app", "", at)
		}
		conns[k].Query(srcs[k].app, at)
		conns[k].Ready(at, false, false)
		next[k] += srcs[k].every
	}
	clk.Set(day0.Add(24 * time.Hour))
	return l.Budget().Snapshot(), l.Budget().Pollers()
}

func awakeOf(st BudgetStatus) time.Duration {
	return time.Duration(math.Round(st.AwakeSeconds * float64(time.Second)))
}

func logReplay(t *testing.T, name string, st BudgetStatus, pollers []PollerReport) {
	t.Helper()
	aw := awakeOf(st)
	t.Logf("%-52s awake %-14v (%5.1f%% of the day) = %.2f CU-h at 0.25 CU; 30 days of it: %.0f CU-h",
		name, aw, 100*aw.Hours()/24, st.CUHours, 30*st.CUHours)
	for _, p := range pollers {
		t.Logf("    poller %-20s %4d queries %d transactions %d connections, gap median %-8v max %-8v alone awake %-12v (%.3f of the day; %s) keeps awake: %v",
			p.Application, p.Queries, p.Transactions, p.Connections, p.MedianGap, p.MaxGap, p.AwakeTime, p.AwakeFraction, AwakeByString(p), p.KeepsAwake)
	}
}

func pollerOf(t *testing.T, ps []PollerReport, app string) PollerReport {
	t.Helper()
	for _, p := range ps {
		if p.Application == app {
			return p
		}
	}
	t.Fatalf("no poller report for %s in %+v", app, ps)
	return PollerReport{}
}

// The post-mortem's traffic through the Active Time model (suspend_after = 5m).
func TestActiveTimeReplay(t *testing.T) {
	const S = 5 * time.Minute
	day := 24 * time.Hour
	for _, tc := range []struct {
		name      string
		srcs      []source
		awake     time.Duration
		keepAwake map[string]bool
	}{
		{"60 s worker alone (before the fix)",
			[]source{{"availability-worker", time.Minute, 0}}, day,
			map[string]bool{"availability-worker": true}},
		// Queries exactly 300 s apart: each arrives as the 5-minute suspend
		// timer expires, which Neon (suspend after 5 minutes of inactivity)
		// and the model count as still awake. The compute never suspends.
		{"300 s worker alone (after the fix)",
			[]source{{"availability-worker", 5 * time.Minute, 0}}, day,
			map[string]bool{"availability-worker": true}},
		// 1 ms past the boundary it suspends 287 times, for 1 ms each.
		{"300.001 s worker alone (boundary + 1 ms)",
			[]source{{"availability-worker", 5*time.Minute + time.Millisecond, 0}}, day - 287*time.Millisecond,
			map[string]bool{"availability-worker": false}},
		{"15 min worker alone",
			[]source{{"availability-worker", 15 * time.Minute, 0}}, 8 * time.Hour,
			map[string]bool{"availability-worker": false}},
		{"other workers alone (240/day = every 6 min)",
			[]source{{"other-workers", 6 * time.Minute, 0}}, 20 * time.Hour,
			map[string]bool{"other-workers": false}},
		{"before: 60 s worker + other workers + branding",
			[]source{{"availability-worker", time.Minute, 0}, {"other-workers", 6 * time.Minute, 17 * time.Second},
				{"branding-web", 600 * time.Millisecond, 0}}, day,
			map[string]bool{"availability-worker": true, "other-workers": false, "branding-web": true}},
		{"after: 300 s worker + other workers",
			[]source{{"availability-worker", 5 * time.Minute, 0}, {"other-workers", 6 * time.Minute, 17 * time.Second}}, day,
			map[string]bool{"availability-worker": true, "other-workers": false}},
	} {
		st, ps := replayDay(t, S, tc.srcs...)
		logReplay(t, tc.name, st, ps)
		if got := awakeOf(st); got != tc.awake {
			t.Errorf("%s: awake %v, want %v", tc.name, got, tc.awake)
		}
		for app, want := range tc.keepAwake {
			if p := pollerOf(t, ps, app); p.KeepsAwake != want {
				t.Errorf("%s: %s KeepsAwake = %v, want %v", tc.name, app, p.KeepsAwake, want)
			}
		}
	}

	// The per-application figures of the first and the 15-minute poller.
	_, ps := replayDay(t, S, source{"availability-worker", time.Minute, 0})
	p := pollerOf(t, ps, "availability-worker")
	if p.Queries != 1440 || p.MedianGap != time.Minute || p.MaxGap != time.Minute || p.AwakeFraction != 1 {
		t.Errorf("60 s poller report: %+v", p)
	}
	_, ps = replayDay(t, S, source{"availability-worker", 15 * time.Minute, 0})
	p = pollerOf(t, ps, "availability-worker")
	if p.Queries != 96 || p.MedianGap != 15*time.Minute || p.AwakeTime != 8*time.Hour || math.Abs(p.AwakeFraction-1.0/3) > 1e-9 {
		t.Errorf("15 min poller report: %+v", p)
	}
}

// The boundary, stated on the model itself: a gap of exactly suspend_after
// keeps the compute awake, one nanosecond more lets it suspend.
func TestSuspendBoundary(t *testing.T) {
	const S = 5 * time.Minute
	for _, tc := range []struct {
		gap   time.Duration
		awake time.Duration
	}{
		{S, 2 * S},                   // [0, S] then [S, 2S]: one period
		{S + time.Nanosecond, 2 * S}, // [0, S], asleep 1 ns, [S+1ns, 2S+1ns]
		{S + time.Minute, 2 * S},
		{time.Minute, time.Minute + S},
	} {
		var c compute
		c.add(day0, day0, S, false)
		c.add(day0.Add(tc.gap), day0.Add(tc.gap), S, false)
		end := day0.Add(tc.gap + S)
		if got := c.awakeLocal(end.Add(time.Hour)); got != tc.awake {
			t.Errorf("gap %v: awake %v, want %v", tc.gap, got, tc.awake)
		}
		if want := 1 + btoi(tc.gap > S); len(c.periods) != want {
			t.Errorf("gap %v: %d awake periods, want %d", tc.gap, len(c.periods), want)
		}
		t.Logf("gap %-12v -> awake %v in %d period(s)", tc.gap, c.awakeLocal(end.Add(time.Hour)), len(c.periods))
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// The union of spans arriving in any order equals the union computed second
// by second, each span extended by suspend_after; folding old periods keeps
// the sum.
func TestComputeUnionAnyOrder(t *testing.T) {
	const S = 5 * time.Second
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var spans []span
		for range 1 + rng.IntN(60) {
			a := time.Duration(rng.IntN(600)) * time.Second
			spans = append(spans, span{day0.Add(a), day0.Add(a + time.Duration(rng.IntN(20))*time.Second)})
		}
		var want time.Duration // brute force, second by second
		for sec := range 700 {
			at := day0.Add(time.Duration(sec) * time.Second)
			for _, sp := range spans {
				if !at.Before(sp.a) && at.Before(sp.b.Add(S)) {
					want += time.Second
					break
				}
			}
		}
		var c compute
		for _, i := range rng.Perm(len(spans)) {
			c.add(spans[i].a, spans[i].b, S, false)
		}
		if got := c.awakeLocal(day0.Add(time.Hour)); got != want {
			t.Fatalf("round %d: awake %v, want %v (spans %v)", round, got, want, spans)
		}
		for i := 1; i < len(c.periods); i++ {
			if !c.periods[i-1].b.Before(c.periods[i].a) {
				t.Fatalf("round %d: periods overlap or touch: %v", round, c.periods)
			}
		}
	}
	// Past maxAwakeSpans periods the older half is folded into a sum.
	var c compute
	for i := range maxAwakeSpans + 10 {
		at := day0.Add(time.Duration(i) * time.Minute)
		c.add(at, at, S, false)
	}
	if got, want := c.awakeLocal(day0.Add(30*24*time.Hour)), time.Duration(maxAwakeSpans+10)*S; got != want || len(c.periods) > maxAwakeSpans {
		t.Fatalf("after folding: awake %v, want %v; %d periods kept", got, want, len(c.periods))
	}
}

func TestBudgetExhausts(t *testing.T) {
	clk := newFakeClock(day0)
	cfg := testConfig(config.Limit{Name: "api", ApplicationName: "api", MaxConnections: 100, Priority: 5})
	cfg.Budget = config.Budget{SuspendAfter: config.D(5 * time.Minute), ComputeUnits: 0.25, MonthlyCUHours: 1, AlertAt: 0.5, OnExhausted: "reject_low_priority"}
	l, _, logs := testLimiter(t, cfg, clk)
	b := l.Budget()
	worker := l.Match(Client{Database: "app", Application: "availability-worker"})
	api := l.Match(Client{Database: "app", Application: "api"})
	ctx := context.Background()
	var alertAt, exhaustedAt time.Duration
	for m := 0; m < 6*60; m++ { // the 60 s worker for 6 hours: 1 CU-h = 4 awake hours at 0.25 CU
		clk.Set(day0.Add(time.Duration(m) * time.Minute))
		if err := worker.Admit(ctx); err != nil {
			break
		}
		l.ObserveUpstreamQuery("app", "availability-worker", clk.Now())
		if alertAt == 0 && logs.Count("reached budget.alert_at") > 0 {
			alertAt = time.Duration(m) * time.Minute
		}
		if b.Exhausted() && exhaustedAt == 0 {
			exhaustedAt = time.Duration(m) * time.Minute
		}
	}
	if n := logs.Count("reached budget.alert_at"); n != 1 {
		t.Fatalf("alert_at WARN %d times, want once\n%s", n, logs)
	}
	if n := logs.Count("budget exhausted"); n != 1 {
		t.Fatalf("exhaustion WARN %d times, want once", n)
	}
	if !b.Exhausted() || b.Action() != ActionRejectLowPriority {
		t.Fatalf("Exhausted %v Action %q", b.Exhausted(), b.Action())
	}
	err := worker.Admit(ctx)
	var le *LimitError
	if !errors.As(err, &le) || le.SQLState() != "53400" || le.Setting != "budget.monthly_cu_hours" {
		t.Fatalf("priority-0 session while exhausted: %v", err)
	}
	if err := api.Admit(ctx); err != nil {
		t.Fatalf("priority-5 session refused: %v", err)
	}
	st := b.Snapshot()
	t.Logf("monthly_cu_hours = 1 at 0.25 CU: alert_at 0.5 WARN after %v awake, exhausted after %v; used %.2f; refusal: %s",
		alertAt, exhaustedAt, st.UsedRatio, le.Message)
	if alertAt < 2*time.Hour-5*time.Minute || alertAt > 2*time.Hour || exhaustedAt < 4*time.Hour-5*time.Minute || exhaustedAt > 4*time.Hour {
		t.Errorf("alert after %v, exhausted after %v; want about 2 h and 4 h", alertAt, exhaustedAt)
	}

	// Another action on reload is reported at once; a larger budget ends it.
	cfg2 := *cfg
	cfg2.Budget.OnExhausted = "read_only"
	l.Reconfigure(&cfg2)
	if b.Action() != ActionReadOnly || worker.Admit(ctx) != nil {
		t.Fatalf("after reload to read_only: Action %q", b.Action())
	}
	cfg3 := cfg2
	cfg3.Budget.MonthlyCUHours = 100
	l.Reconfigure(&cfg3)
	if b.Exhausted() || b.Action() != "" {
		t.Fatal("a raised budget still exhausted")
	}

	// A new month starts from zero, even without queries (janitor tick).
	l.Reconfigure(cfg)
	if !b.Exhausted() {
		t.Fatal("not exhausted again")
	}
	clk.Set(time.Date(2026, 5, 1, 0, 0, 1, 0, time.UTC))
	l.tick()
	if st := b.Snapshot(); b.Exhausted() || b.Action() != "" || st.Month != "2026-05" || st.AwakeSeconds != 0 {
		t.Fatalf("new month: exhausted %v, %+v", b.Exhausted(), st)
	}
	if err := worker.Admit(ctx); err != nil {
		t.Fatal(err)
	}
}

// An awake period running over midnight at the month's end counts from the
// first of the month on.
func TestBudgetMonthBoundary(t *testing.T) {
	start := time.Date(2026, 4, 30, 23, 58, 0, 0, time.UTC)
	clk := newFakeClock(start)
	l, _, _ := testLimiter(t, config.Default(), clk)
	for i := range 5 { // 23:58 .. 00:02
		clk.Set(start.Add(time.Duration(i) * time.Minute))
		l.ObserveUpstreamQuery("app", "w", clk.Now())
	}
	clk.Set(start.Add(time.Hour))
	if st := l.Budget().Snapshot(); st.Month != "2026-05" || st.AwakeSeconds != (7*time.Minute).Seconds() {
		t.Fatalf("%+v; want 7 minutes awake in May (00:00 to 00:07)", st)
	}
}

func TestEndpointKey(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@ep-cool-1.eu-central-1.aws.neon.tech/neondb?sslmode=require": "ep-cool-1.eu-central-1.aws.neon.tech",
		"postgres://u:p@ep-cool-1-pooler.eu-central-1.aws.neon.tech:5432/other":      "ep-cool-1.eu-central-1.aws.neon.tech",
		"postgres://postgres@127.0.0.1:5432/app":                                     "127.0.0.1",
		"host=/tmp dbname=app":                                                       "db",
		fmt.Sprintf("postgres://%s/x", "[::1]:5432"):                                 "::1",
	} {
		if got := endpointKey(in, "db"); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}

// TestLastWake: the model names the application whose activity found the
// compute asleep, a new connection's wake booked to its first client, and
// NoApplication for a connection no client used.
func TestLastWake(t *testing.T) {
	clk := newFakeClock(day0)
	cfg := config.Default()
	cfg.Budget.SuspendAfter = config.D(time.Minute)
	l, _, _ := testLimiter(t, cfg, clk)
	endpoint := func() EndpointStatus {
		t.Helper()
		eps := l.Budget().Snapshot().Endpoints
		if len(eps) != 1 {
			t.Fatalf("%d endpoints", len(eps))
		}
		return eps[0]
	}
	a := l.Connected("app", "", day0)
	if e := endpoint(); !e.LastWake.Equal(day0) || e.LastWakeBy != "" || !e.AwakeNow {
		t.Errorf("after connect: %+v", e)
	}
	clk.Set(day0.Add(10 * time.Millisecond))
	a.Query("web", clk.Now())
	a.Ready(clk.Now(), false, false)
	if e := endpoint(); !e.LastWake.Equal(day0) || e.LastWakeBy != "web" {
		t.Errorf("the connection's first client: %+v", e)
	}
	// A query within suspend_after wakes nothing; one after a longer gap does.
	clk.Set(day0.Add(50 * time.Second))
	a.Query("poller", clk.Now())
	a.Ready(clk.Now(), false, false)
	if e := endpoint(); e.LastWakeBy != "web" {
		t.Errorf("a query while awake took the wake: %+v", e)
	}
	at := day0.Add(5 * time.Minute)
	clk.Set(at)
	if endpoint().AwakeNow {
		t.Error("awake 4 minutes after the last query, with suspend_after = 1m")
	}
	a.Query("poller", at)
	a.Ready(at, false, false)
	if e := endpoint(); !e.LastWake.Equal(at) || e.LastWakeBy != "poller" {
		t.Errorf("after a gap: %+v", e)
	}
	// A connection no client uses is booked to NoApplication.
	at = day0.Add(10 * time.Minute)
	clk.Set(at)
	l.Connected("app", "", at)
	clk.Set(at.Add(2 * connGrace))
	if e := endpoint(); !e.LastWake.Equal(at) || e.LastWakeBy != NoApplication {
		t.Errorf("unused connection: %+v", e)
	}
}
