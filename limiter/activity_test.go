package limiter

import (
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

// spanLimiter is a limiter with a fake clock at day0 and suspend_after S.
func spanLimiter(t *testing.T, S time.Duration) (*Limiter, *fakeClock) {
	t.Helper()
	clk := newFakeClock(day0)
	cfg := config.Default()
	cfg.Budget.SuspendAfter = config.D(S)
	l, _, _ := testLimiter(t, cfg, clk)
	return l, clk
}

// at is day0 plus a clock reading "hh:mm:ss".
func at(t *testing.T, hms string) time.Time {
	t.Helper()
	c, err := time.Parse("15:04:05", hms)
	if err != nil {
		t.Fatal(err)
	}
	return day0.Add(time.Duration(c.Hour())*time.Hour + time.Duration(c.Minute())*time.Minute + time.Duration(c.Second())*time.Second)
}

// The replays, each against the suspend rule worked by hand
// (suspend_after = 5 min): the compute is awake over the union of the spans
// of activity, each extended by 5 minutes.
func TestActiveTimeSpans(t *testing.T) {
	const S = 5 * time.Minute

	t.Run("one 20-minute query", func(t *testing.T) {
		// Connection at 10:00 (an instant), query 10:00 to 10:20: awake
		// 10:00 to 10:25 = 25 min. The point model counted 10:20 to 10:25.
		l, clk := spanLimiter(t, S)
		c := l.Connected("app", "etl", at(t, "10:00:00"))
		c.Query("etl", at(t, "10:00:00"))
		clk.Set(at(t, "10:10:00")) // while it runs it counts, up to now
		st := l.Budget().Snapshot()
		if got := awakeOf(st); got != 10*time.Minute || !st.Endpoints[0].AwakeNow {
			t.Fatalf("10 minutes into the query: awake %v (awake now %v), want 10m0s", got, st.Endpoints[0].AwakeNow)
		}
		c.Ready(at(t, "10:20:00"), false, false)
		clk.Set(at(t, "12:00:00"))
		st, ps := l.Budget().Snapshot(), l.Budget().Pollers()
		logReplay(t, "one 20-minute query", st, ps)
		p := pollerOf(t, ps, "etl")
		if got := awakeOf(st); got != 25*time.Minute {
			t.Errorf("awake %v, want 25m0s", got)
		}
		if p.Queries != 1 || p.Connections != 1 || p.AwakeQueries != 25*time.Minute || p.KeptAwakeBy != "queries" {
			t.Errorf("etl report %+v", p)
		}
	})

	t.Run("a transaction open one hour with one query", func(t *testing.T) {
		// BEGIN 10:00, SELECT 10:30, COMMIT 11:00, each answered at once:
		// active 10:00 to 11:00, awake to 11:05 = 65 min. Of it 60 min are
		// the open transaction, 5 min the tail after COMMIT (a query).
		l, clk := spanLimiter(t, S)
		c := l.Connected("app", "", at(t, "10:00:00"))
		for _, q := range []struct {
			at   string
			inTx bool
		}{{"10:00:00", true}, {"10:30:00", true}, {"11:00:00", false}} {
			c.Query("worker", at(t, q.at))
			c.Ready(at(t, q.at), false, q.inTx)
		}
		clk.Set(at(t, "13:00:00"))
		st, ps := l.Budget().Snapshot(), l.Budget().Pollers()
		logReplay(t, "a transaction open one hour", st, ps)
		if got := awakeOf(st); got != 65*time.Minute {
			t.Errorf("awake %v, want 1h5m0s", got)
		}
		p := pollerOf(t, ps, "worker")
		if p.Queries != 3 || p.Transactions != 1 || p.Connections != 1 || p.AwakeTransactions != time.Hour ||
			p.AwakeQueries != 5*time.Minute || p.AwakeTime != 65*time.Minute || p.KeptAwakeBy != "transactions" {
			t.Errorf("worker report %+v", p)
		}
	})

	t.Run("a client that only connects every 4 minutes", func(t *testing.T) {
		// A wake event every 4 min: each gap is under 5 min, so the compute
		// never suspends: awake the whole day (00:00 to 24:00).
		l, clk := spanLimiter(t, S)
		for m := 0; m < 24*60; m += 4 {
			t0 := day0.Add(time.Duration(m) * time.Minute)
			clk.Set(t0)
			l.Connected("app", "pinger", t0).Close(t0.Add(30 * time.Millisecond))
		}
		clk.Set(day0.Add(24 * time.Hour))
		st, ps := l.Budget().Snapshot(), l.Budget().Pollers()
		logReplay(t, "connects every 4 minutes, no query", st, ps)
		if got := awakeOf(st); got != 24*time.Hour {
			t.Errorf("awake %v, want 24h0m0s", got)
		}
		p := pollerOf(t, ps, "pinger")
		if p.Connections != 360 || p.Queries != 0 || !p.KeepsAwake || p.AwakeConnections != 24*time.Hour || p.MedianGap != 4*time.Minute {
			t.Errorf("pinger report %+v", p)
		}
	})

	t.Run("a long query in a pipeline", func(t *testing.T) {
		// Two queries sent at 10:00; the first answered at once, the second
		// at 10:20: active 10:00 to 10:20, awake 25 min.
		l, clk := spanLimiter(t, S)
		c := l.Connected("app", "etl", at(t, "10:00:00"))
		c.Query("etl", at(t, "10:00:00"))
		c.Ready(at(t, "10:00:00"), true, false)
		c.Ready(at(t, "10:20:00"), false, false)
		clk.Set(at(t, "11:00:00"))
		if got := awakeOf(l.Budget().Snapshot()); got != 25*time.Minute {
			t.Errorf("awake %v, want 25m0s", got)
		}
	})

	t.Run("a long query cut by sweeps is one span", func(t *testing.T) {
		// The janitor's sweep every second counts the running query up to
		// now; the figures at the end are the same as without sweeps, and
		// the query is one query with no gap inside it.
		l, clk := spanLimiter(t, S)
		c := l.Connected("app", "etl", at(t, "10:00:00"))
		c.Query("etl", at(t, "10:00:00"))
		for s := 1; s < 20*60; s++ {
			clk.Set(at(t, "10:00:00").Add(time.Duration(s) * time.Second))
			l.tick()
		}
		c.Ready(at(t, "10:20:00"), false, false)
		c.Close(at(t, "10:21:00"))
		clk.Set(at(t, "11:00:00"))
		st, ps := l.Budget().Snapshot(), l.Budget().Pollers()
		p := pollerOf(t, ps, "etl")
		if got := awakeOf(st); got != 25*time.Minute || p.Queries != 1 || p.MaxGap != 0 || p.AwakeQueries != 25*time.Minute {
			t.Errorf("awake %v; etl report %+v", got, p)
		}
	})

	t.Run("an idle session keeps nothing awake", func(t *testing.T) {
		// One query at 10:00 on a connection then held open and idle for
		// two hours: awake 10:00 to 10:05 only.
		l, clk := spanLimiter(t, S)
		c := l.Connected("app", "web", at(t, "10:00:00"))
		c.Query("web", at(t, "10:00:00"))
		c.Ready(at(t, "10:00:00"), false, false)
		for m := 1; m <= 120; m++ {
			clk.Set(at(t, "10:00:00").Add(time.Duration(m) * time.Minute))
			l.tick()
		}
		if got := awakeOf(l.Budget().Snapshot()); got != 5*time.Minute {
			t.Errorf("awake %v, want 5m0s", got)
		}
	})
}

// Short transactions back to back on one connection are coalesced into few
// segments; the awake time still splits exactly by kind. Each 100 ms: BEGIN
// answered in 1 ms, idle in transaction to 20 ms, SELECT to 25 ms, idle to
// 50 ms, COMMIT to 51 ms, then idle (the COMMIT's tail) to 100 ms.
func TestBusyConnectionSplitsByKind(t *testing.T) {
	const S = 5 * time.Minute
	l, clk := spanLimiter(t, S)
	t0 := at(t, "10:00:00")
	c := l.Connected("app", "web", t0)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for i := range 100 {
		b := t0.Add(ms(100 * i))
		c.Query("web", b)
		c.Ready(b.Add(ms(1)), false, true)
		c.Query("web", b.Add(ms(20)))
		c.Ready(b.Add(ms(25)), false, true)
		if i%10 == 0 {
			clk.Set(b.Add(ms(30)))
			l.tick() // a sweep in the middle of a transaction
		}
		c.Query("web", b.Add(ms(50)))
		c.Ready(b.Add(ms(51)), false, false)
	}
	clk.Set(at(t, "11:00:00"))
	p := pollerOf(t, l.Budget().Pollers(), "web")
	// By hand: active 10:00:00 to 10:00:09.951, awake 5 min more. Open
	// transactions: 100 x (19 + 25) ms; queries: the rest.
	wantTx := 100 * ms(44)
	wantAll := ms(9951) + S
	near := func(got, want time.Duration) bool {
		return got >= want-time.Microsecond && got <= want+time.Microsecond
	}
	if got := awakeOf(l.Budget().Snapshot()); got != wantAll {
		t.Errorf("awake %v, want %v", got, wantAll)
	}
	if p.Queries != 300 || p.Transactions != 100 || !near(p.AwakeTime, wantAll) || !near(p.AwakeTransactions, wantTx) ||
		!near(p.AwakeQueries, wantAll-wantTx) || p.AwakeConnections != 0 || p.MaxGap != 0 {
		t.Errorf("web report %+v; want awake %v of which transactions %v", p, wantAll, wantTx)
	}
}

// A connection opened for no known application is booked to the first one
// that queries on it; one nobody uses goes to NoApplication after connGrace.
func TestConnectionAttribution(t *testing.T) {
	l, clk := spanLimiter(t, 5*time.Minute)
	used := l.Connected("app", "", at(t, "10:00:00"))
	used.Query("web", at(t, "10:00:00").Add(20*time.Millisecond))
	used.Ready(at(t, "10:00:00").Add(25*time.Millisecond), false, false)
	l.Connected("app", "", at(t, "10:00:00"))
	clk.Set(at(t, "10:00:02"))
	ps := l.Budget().Pollers()
	if p := pollerOf(t, ps, "web"); p.Connections != 1 || p.Queries != 1 {
		t.Errorf("web: %+v", p)
	}
	if p := pollerOf(t, ps, NoApplication); p.Connections != 1 || p.Queries != 0 {
		t.Errorf("%s: %+v", NoApplication, p)
	}
	if got := awakeOf(l.Budget().Snapshot()); got != 2*time.Second {
		t.Errorf("awake %v, want 2s (10:00:00 to now)", got)
	}
}

// The hot path: a query sent and answered on one connection, as the proxy
// reports it, against the point observation the proxy made before (the
// budget's lock each time).
func BenchmarkActivityQuery(b *testing.B) {
	clk := newFakeClock(day0)
	l, err := New(config.Default(), nil, WithClock(clk), withTick(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	t0 := time.Now() // with a monotonic reading, as the proxy's times have
	c := l.Connected("app", "web", t0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		t0 = t0.Add(100 * time.Microsecond)
		c.Query("web", t0)
		c.Ready(t0.Add(50*time.Microsecond), false, false)
		if i%10000 == 0 { // the janitor's sweep, about once a second at this rate
			l.budget.sweep(t0)
		}
	}
}

func BenchmarkObservePoint(b *testing.B) {
	clk := newFakeClock(day0)
	l, err := New(config.Default(), nil, WithClock(clk), withTick(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	t0 := day0
	b.ReportAllocs()
	for b.Loop() {
		t0 = t0.Add(100 * time.Microsecond)
		l.ObserveUpstreamQuery("app", "web", t0)
	}
}
