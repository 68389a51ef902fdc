package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// Failover tests run pgguard in front of two clusters of their own (the
// package's pg is shared with other tests and must not be stopped), with the
// same role as pg, so testConfig's users work.

// startCluster starts a throwaway cluster for one test.
func startCluster(t *testing.T, settings map[string]string) *localpg.Cluster {
	t.Helper()
	c, err := localpg.Start(localpg.Options{User: "tester", Password: "tester-pw", Database: "app", Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// failoverConfig serves database "app" from primary with fallback, with
// intervals short enough for tests.
func failoverConfig(mode, primary, fallback string) *config.Config {
	cfg := testConfig(mode)
	cfg.Databases = map[string]*config.Database{"app": {Primary: primary, Fallback: fallback}}
	cfg.Pool.Size = 4
	cfg.Pool.ConnectTimeout = config.D(2 * time.Second)
	cfg.Failover = config.Failover{
		FailureThreshold: 3,
		ProbeInterval:    config.D(100 * time.Millisecond),
		ProbeMaxInterval: config.D(400 * time.Millisecond),
		FailbackAfter:    config.D(500 * time.Millisecond),
		FallbackReadOnly: true,
	}
	return cfg
}

// deadURL is an upstream nothing listens on.
const deadURL = "postgres://tester:tester-pw@127.0.0.1:1/app?sslmode=disable"

// portOf asks the server behind conn which port it listens on: that tells
// which upstream answered.
func portOf(ctx context.Context, conn *pgx.Conn) (int, error) {
	var port int
	err := conn.QueryRow(ctx, "SELECT current_setting('port')::int").Scan(&port)
	return port, err
}

// queryResult is one client query of the load.
type queryResult struct {
	start, end time.Time
	port       int
	err        error
}

// load runs workers that each query through pgguard in a loop, reconnecting
// when pgguard closes their session, until stop is closed.
type load struct {
	mu      sync.Mutex
	results []queryResult
	wg      sync.WaitGroup
	stop    chan struct{}
}

func startLoad(url string, workers int) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go l.worker(url)
	}
	return l
}

func (l *load) worker(url string) {
	defer l.wg.Done()
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		panic(err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		r := queryResult{start: time.Now()}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if conn == nil {
			conn, r.err = pgx.ConnectConfig(ctx, cc)
		}
		if r.err == nil {
			r.port, r.err = portOf(ctx, conn)
		}
		cancel()
		r.end = time.Now()
		if r.err != nil && conn != nil && conn.IsClosed() {
			conn = nil
		}
		l.mu.Lock()
		l.results = append(l.results, r)
		l.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

// snapshot returns the results so far.
func (l *load) snapshot() []queryResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]queryResult(nil), l.results...)
}

func (l *load) finish() []queryResult {
	close(l.stop)
	l.wg.Wait()
	return l.snapshot()
}

// firstServedBy returns the end of the first query that started after from
// and was answered on port, waiting up to 15 s for one.
func (l *load) firstServedBy(t *testing.T, port int, from time.Time) time.Time {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range l.snapshot() {
			if r.err == nil && r.port == port && r.start.After(from) {
				return r.end
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no query served on port %d within 15 s", port)
	return time.Time{}
}

// TestFailoverUnderLoad: under continuous client load, the primary dies
// (pg_ctl stop -m immediate); queries move to the fallback, only those in
// flight fail; the primary comes back and so does the traffic. Over each
// network of guardtest.Nets.
func TestFailoverUnderLoad(t *testing.T) { guardtest.EachNet(t, failoverUnderLoad) }

func failoverUnderLoad(t *testing.T, n guardtest.Net) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	guardtest.CheckGoroutines(t)
	ctx := context.Background()
	for _, c := range []*localpg.Cluster{primary, fallback} {
		if err := c.Exec(ctx, "CREATE TABLE fo (x int); GRANT ALL ON fo TO tester"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := failoverConfig("transaction", primary.URL("app"), fallback.URL("app"))
	g := startGuardOver(t, n, cfg)
	active := func(u string) float64 {
		return testutil.ToFloat64(g.metrics.UpstreamActive.WithLabelValues("app", u))
	}
	switches := func() float64 { return testutil.ToFloat64(g.metrics.Switches.WithLabelValues("app")) }

	const workers = 6
	l := startLoad(g.url("app"), workers)
	defer func() {
		select {
		case <-l.stop:
		default:
			l.finish()
		}
	}()
	l.firstServedBy(t, primary.Port(), time.Now())
	time.Sleep(300 * time.Millisecond)
	if up := g.Pools()[0].Upstream; up != "primary" || active("primary") != 1 || active("fallback") != 0 {
		t.Fatalf("before the outage: upstream %s, gauges %v/%v", up, active("primary"), active("fallback"))
	}

	// The primary dies.
	killed := time.Now()
	if err := primary.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	dead := time.Now()
	firstOnFallback := l.firstServedBy(t, fallback.Port(), killed)
	guardtest.WaitFor(t, "the switch to the fallback", func() bool { return g.Pools()[0].Upstream == "fallback" })
	st := g.Pools()[0].Failover
	if st.LastSwitch == nil {
		t.Fatal("no switch recorded in the status")
	}
	switchedAt := st.LastSwitch.At
	t.Logf("primary killed; StopImmediate took %s; switch %s after the kill (reason: %s)",
		dead.Sub(killed).Round(time.Millisecond), switchedAt.Sub(killed).Round(time.Millisecond), st.LastSwitch.Reason)
	t.Logf("time from primary death to the first query served by the fallback: %s",
		firstOnFallback.Sub(killed).Round(time.Millisecond))
	if !g.Ready() {
		t.Error("not ready while the fallback serves")
	}
	if active("primary") != 0 || active("fallback") != 1 || switches() != 1 {
		t.Errorf("on the fallback: gauges %v/%v, switches %v", active("primary"), active("fallback"), switches())
	}
	if ps := g.Servers(); len(ps) > 0 {
		for _, s := range ps {
			if want := hostOf(t, cfg.Databases["app"].Fallback); s.Upstream == "fallback" && s.Host != want {
				t.Errorf("SHOW SERVERS host of a fallback connection = %s, want %s", s.Host, want)
			}
		}
	}

	// Writes on the fallback fail at the server with 25006 (fallback_read_only).
	w := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := w.Exec(ctx, "INSERT INTO fo VALUES (1)"); pgCode(err) != "25006" {
		t.Errorf("INSERT on the fallback: %v, want SQLSTATE 25006", err)
	} else {
		t.Logf("a write on the fallback: %v", err)
	}
	time.Sleep(time.Second) // steady load on the fallback

	// The primary comes back.
	if err := primary.Restart(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	firstBack := l.firstServedBy(t, primary.Port(), up)
	guardtest.WaitFor(t, "the switch back", func() bool { return g.Pools()[0].Upstream == "primary" })
	backAt := g.Pools()[0].Failover.LastSwitch.At
	t.Logf("primary restarted; switch back %s later, first query on the primary %s later",
		backAt.Sub(up).Round(time.Millisecond), firstBack.Sub(up).Round(time.Millisecond))
	// failback_after + one probe interval (at most probe_max_interval), plus
	// slack for a loaded machine.
	if limit := cfg.Failover.FailbackAfter.Duration + cfg.Failover.ProbeMaxInterval.Duration + time.Second; firstBack.Sub(up) > limit {
		t.Errorf("traffic returned %s after the primary came back, want within %s", firstBack.Sub(up), limit)
	}
	if _, err := w.Exec(ctx, "INSERT INTO fo VALUES (2)"); err != nil {
		t.Errorf("INSERT after failback: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	results := l.finish()

	if active("primary") != 1 || active("fallback") != 0 || switches() != 2 {
		t.Errorf("after failback: gauges %v/%v, switches %v", active("primary"), active("fallback"), switches())
	}
	// Fallback connections drained: none left idle or in use.
	guardtest.WaitFor(t, "fallback connections to drain", func() bool {
		for _, s := range g.Servers() {
			if s.Upstream == "fallback" {
				return false
			}
		}
		return true
	})

	var inFlight, duringSwitch, afterSwitch, wrongUpstream int
	for _, r := range results {
		switch {
		case r.err != nil && r.start.Before(dead):
			inFlight++
			t.Logf("in flight when the primary died: %v", r.err)
		case r.err != nil && r.start.Before(switchedAt):
			duringSwitch++
			t.Errorf("a query started after the primary died (%s) but before the switch failed: %v", r.start.Sub(dead), r.err)
		case r.err != nil:
			afterSwitch++
			t.Errorf("a query started %s after the switch failed: %v", r.start.Sub(switchedAt), r.err)
		case r.start.After(switchedAt) && r.end.Before(up) && r.port != fallback.Port():
			wrongUpstream++
		case r.start.After(backAt) && r.port != primary.Port():
			wrongUpstream++
		}
	}
	t.Logf("%d client queries by %d workers; failed: %d in flight when the primary died, %d after it died but before the switch, %d after the switch",
		len(results), workers, inFlight, duringSwitch, afterSwitch)
	if inFlight > workers {
		t.Errorf("%d in-flight failures with only %d workers", inFlight, workers)
	}
	if wrongUpstream > 0 {
		t.Errorf("%d queries after a switch were served by the upstream not in use", wrongUpstream)
	}
}

// TestPrimaryDiesUnderSessions: sessions on a dying primary get an error
// promptly, never a hang: a session-mode client inside a transaction, an idle
// session-mode client holding its server, and a transaction-mode client with
// a query running. New sessions then go to the fallback. Over each network
// of guardtest.Nets.
func TestPrimaryDiesUnderSessions(t *testing.T) { guardtest.EachNet(t, primaryDiesUnderSessions) }

func primaryDiesUnderSessions(t *testing.T, n guardtest.Net) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	ctx := context.Background()
	gs := startGuardOver(t, n, failoverConfig("session", primary.URL("app"), fallback.URL("app")))
	gt := startGuardOver(t, n, failoverConfig("transaction", primary.URL("app"), fallback.URL("app")))

	inTx := connect(t, gs.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := inTx.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	idle := connect(t, gs.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := portOf(ctx, idle); err != nil {
		t.Fatal(err)
	}
	running := connect(t, gt.url("app"), pgx.QueryExecModeSimpleProtocol)
	sleepErr := make(chan error, 1)
	go func() {
		_, err := running.Exec(ctx, "SELECT pg_sleep(60)")
		sleepErr <- err
	}()
	guardtest.WaitFor(t, "pg_sleep to run", func() bool {
		n, err := primary.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'")
		return err == nil && n == 1
	})

	killed := time.Now()
	if err := primary.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	const prompt = 2 * time.Second
	// A query running when its server dies has an unknown outcome (08007);
	// a session with nothing running was in a transaction or not (08006).
	check := func(what string, err error, want ...string) {
		t.Helper()
		took := time.Since(killed)
		code := pgCode(err)
		t.Logf("%s: error after %s: SQLSTATE %q: %v", what, took.Round(time.Millisecond), code, err)
		// pgguard sends its FATAL and closes the socket at once; a client
		// whose next write meets the closed socket's reset loses the
		// unread FATAL in its kernel, as it would from a dying server.
		closed := code == "" && strings.Contains(err.Error(), "conn closed") && slices.Contains(want, "closed")
		if err == nil {
			t.Errorf("%s: no error from a dead primary", what)
		} else if !slices.Contains(want, code) && !closed {
			t.Errorf("%s: SQLSTATE %q, want one of %v", what, code, want)
		}
		if took > prompt {
			t.Errorf("%s: error after %s, want within %s", what, took, prompt)
		}
	}
	select {
	case err := <-sleepErr:
		check("transaction mode, query running", err, "08007", "57P01")
	case <-time.After(prompt):
		t.Fatalf("a query running on the dead primary still hangs after %s", prompt)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := inTx.Exec(qctx, "SELECT 1")
	check("session mode, inside a transaction", err, "08006", "57P01", "closed")
	_, err = idle.Exec(qctx, "SELECT 1")
	check("session mode, idle session", err, "08006", "57P01", "closed")

	// A new session lands on the fallback.
	c := connect(t, gs.url("app"), pgx.QueryExecModeSimpleProtocol)
	if port, err := portOf(ctx, c); err != nil || port != fallback.Port() {
		t.Errorf("new session after the primary died: port %d, %v; want the fallback's %d", port, err, fallback.Port())
	}
}

// TestFallbackReadOnlyOff: with fallback_read_only = false the fallback takes
// writes. The primary here never answers, so pgguard starts on it and
// switches at once.
func TestFallbackReadOnlyOff(t *testing.T) {
	fallback := startCluster(t, nil)
	ctx := context.Background()
	if err := fallback.Exec(ctx, "CREATE TABLE fo (x int); GRANT ALL ON fo TO tester"); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{true, false} {
		t.Run(fmt.Sprintf("fallback_read_only=%v", ro), func(t *testing.T) {
			cfg := failoverConfig("transaction", deadURL, fallback.URL("app"))
			cfg.Failover.FallbackReadOnly = ro
			g := startGuard(t, cfg)
			c := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
			if g.Pools()[0].Upstream != "fallback" {
				t.Fatalf("upstream %s with a dead primary", g.Pools()[0].Upstream)
			}
			_, err := c.Exec(ctx, "INSERT INTO fo VALUES (1)")
			switch {
			case ro && pgCode(err) != "25006":
				t.Errorf("write with fallback_read_only on: %v, want 25006", err)
			case !ro && err != nil:
				t.Errorf("write with fallback_read_only off: %v", err)
			}
			if port, err := portOf(ctx, c); err != nil || port != fallback.Port() {
				t.Errorf("read: port %d, %v", port, err)
			}
		})
	}
}

// TestNoUpstreamNotReady: /readyz is 503 only when neither upstream can
// serve, judged from real traffic: the fallback failing too, or the primary
// failing with no fallback.
func TestNoUpstreamNotReady(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ name, fallback string }{{"no fallback", ""}, {"fallback down too", deadURL}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := failoverConfig("transaction", deadURL, tc.fallback)
			cfg.Pool.WaitTimeout = config.D(time.Second)
			g := startGuard(t, cfg)
			if !g.Ready() {
				t.Fatal("not ready before any traffic: an upstream is assumed able to serve until traffic says otherwise")
			}
			cc, _ := pgx.ParseConfig(g.url("app"))
			for i := 0; i < 6 && g.Ready(); i++ {
				_, err := pgx.ConnectConfig(ctx, cc)
				if code := pgCode(err); code != "08006" {
					t.Fatalf("login with no upstream: %v, want 08006", err)
				}
			}
			if g.Ready() {
				t.Fatalf("ready with no upstream able to serve: %+v", g.Pools()[0].Failover)
			}
			st := g.Pools()[0].Failover
			t.Logf("state: active %s, serving %v, primary %+v", st.Active, st.Serving, st.Primary)
		})
	}
}

// idleWindow is how long TestIdlePrimaryUntouched watches: 10 s, or the
// issue's full minute with PGGUARD_LONG=1.
func idleWindow() time.Duration {
	if os.Getenv("PGGUARD_LONG") == "1" {
		return time.Minute
	}
	return 10 * time.Second
}

// TestIdlePrimaryUntouched: an idle pgguard on a healthy primary, with a
// fallback configured and short probe intervals, sends it nothing: no
// transaction or session in pg_stat_database, no connection or statement in
// its log. The log is the stricter witness: PostgreSQL 15 leaves a backend's
// transaction count unflushed while nothing else (a relation touched) is
// pending, so a bare "SELECT 1" may never reach xact_commit; every statement
// and every connection reaches the log.
func TestIdlePrimaryUntouched(t *testing.T) {
	primary := startCluster(t, map[string]string{
		"autovacuum":      "off", // its workers' transactions would count too
		"log_connections": "on",
		"log_statement":   "all",
	})
	ctx := context.Background()
	g := startGuard(t, failoverConfig("transaction", primary.URL("app"), deadURL))

	// Traffic first, so pgguard holds an idle server connection and an idle
	// client. PostgreSQL flushes a backend's statistics at most once a second
	// (else 10 s later), so the query comes more than a second after the
	// connection's first flush, and is counted at once.
	c := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	time.Sleep(1100 * time.Millisecond)
	if port, err := portOf(ctx, c); err != nil || port != primary.Port() {
		t.Fatalf("warm-up: port %d, %v", port, err)
	}

	// Watch from another database, so the watching is not counted.
	mon, err := pgx.Connect(ctx, primary.SuperURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close(ctx)
	if _, err := mon.Exec(ctx, "SET stats_fetch_consistency = none"); err != nil {
		t.Fatal(err)
	}
	// Transactions, plus sessions ended (a probe is a session).
	xacts := func() int64 {
		var n int64
		if err := mon.QueryRow(ctx, "SELECT xact_commit + xact_rollback + sessions FROM pg_stat_database WHERE datname = 'app'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	logSize := func() int64 {
		fi, err := os.Stat(primary.LogFile())
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before, logFrom := xacts(), logSize()
	window := idleWindow()
	time.Sleep(window)
	after := xacts()

	logText, err := os.ReadFile(primary.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(logText[logFrom:]), "\n") {
		if strings.Contains(line, "tester") {
			lines = append(lines, line)
		}
	}
	t.Logf("idle for %s (PGGUARD_LONG=1 for a minute): %d transactions and sessions in pg_stat_database, %d log lines from pgguard's role",
		window, after-before, len(lines))
	if after != before || len(lines) > 0 {
		t.Errorf("an idle pgguard touched its healthy primary: %d transactions; log:\n%s", after-before, strings.Join(lines, "\n"))
	}
	if st := g.Pools()[0].Failover; !st.NextProbe.IsZero() || st.Active.String() != "primary" {
		t.Errorf("state of an idle healthy primary: %+v", st)
	}
	// The client and its server still work, and both witnesses see a query
	// (one that reads a relation, so its transaction is flushed at once).
	if _, err := c.Exec(ctx, "SELECT count(*) FROM pg_class"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for xacts() == after && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := xacts(); n == after {
		t.Errorf("pg_stat_database did not count a query through pgguard (%d before and after): the check proves nothing", n)
	}
	if logSize() == int64(len(logText)) {
		t.Error("the server log did not record a query through pgguard: the check proves nothing")
	}
}

// TestBudgetExhaustedFallback: with budget.on_exhausted = "fallback", new
// transactions go to the fallback once the month's compute budget is used up.
func TestBudgetExhaustedFallback(t *testing.T) {
	primary, fallback := startCluster(t, nil), startCluster(t, nil)
	cfg := failoverConfig("transaction", primary.URL("app"), fallback.URL("app"))
	cfg.Budget.MonthlyCUHours = 0.01 // 2.4 minutes awake at 0.25 CU
	cfg.Budget.OnExhausted = "fallback"
	lim, err := limiter.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	ctx := context.Background()
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if port, err := portOf(ctx, conn); err != nil || port != primary.Port() {
		t.Fatalf("before: port %d %v, want the primary %d", port, err, primary.Port())
	}
	// A poller every minute for the last 4 minutes kept a 0.25 CU compute
	// awake: 0.017 CU-hours so far, over the budget of 0.01. (In the past:
	// the model counts awake time up to now, and re-evaluates whenever a
	// server connection's activity reaches it.)
	for i := 4; i >= 0; i-- {
		lim.ObserveUpstreamQuery("app", "poller", time.Now().Add(-time.Duration(i)*time.Minute))
	}
	if a := lim.Budget().Action(); a != "fallback" {
		t.Fatalf("budget action %q, want fallback", a)
	}
	if port, err := portOf(ctx, conn); err != nil || port != fallback.Port() {
		t.Fatalf("after: port %d %v, want the fallback %d", port, err, fallback.Port())
	}
}
