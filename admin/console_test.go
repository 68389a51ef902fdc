package admin_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/limiter"

	"github.com/pgguard/pgguard/internal/guardtest"
)

func TestConsoleShowViews(t *testing.T) {
	e := start(t, testConfig())
	app := e.connect(t, appUser, appPass, "app", "web-1")
	mustExec(t, app, "SELECT 1")
	con := e.console(t)

	pools := mustExec(t, con, "SHOW POOLS")
	for _, c := range []string{"database", "pool_mode", "cl_active", "cl_waiting", "sv_active", "sv_idle", "pool_size"} {
		pools.col(t, c)
	}
	if p := pools.row(t, "database", "app"); p["pool_mode"] != "transaction" || p["pool_size"] != "2" || p["upstream"] != "primary" {
		t.Errorf("SHOW POOLS: %v", p)
	}
	if pools.tag != "SHOW 1" {
		t.Errorf("SHOW POOLS tag %q, want SHOW 1", pools.tag)
	}

	clients := mustExec(t, con, "show clients;") // case and a trailing semicolon
	if c := clients.row(t, "application_name", "web-1"); c["user"] != appUser || c["database"] != "app" || c["id"] == "" {
		t.Errorf("SHOW CLIENTS: %v", c)
	}

	servers := mustExec(t, con, "SHOW SERVERS")
	if s := servers.row(t, "database", "app"); s["backend_pid"] == "0" || s["state"] == "" {
		t.Errorf("SHOW SERVERS: %v", s)
	}

	stats := mustExec(t, con, "SHOW STATS")
	if n, _ := strconv.Atoi(stats.row(t, "database", "app")["total_query_count"]); n < 1 {
		t.Errorf("SHOW STATS total_query_count = %d, want >= 1", n)
	}

	cfg := strings.Join(mustExec(t, con, "SHOW CONFIG").col(t, "line"), "\n")
	if !strings.Contains(cfg, `pool_size = 0`) && !strings.Contains(cfg, "[pool]") {
		t.Errorf("SHOW CONFIG does not look like the config:\n%s", cfg)
	}
	if strings.Contains(cfg, appPass) || strings.Contains(cfg, adminPass) || strings.Contains(cfg, pg.Password()) || !strings.Contains(cfg, "****") {
		t.Errorf("SHOW CONFIG does not mask passwords:\n%s", cfg)
	}

	fo := mustExec(t, con, "SHOW FAILOVER")
	if f := fo.row(t, "database", "app"); f["upstream"] != "primary" || f["serving"] != "true" || f["switches"] != "0" || f["fallback_writes"] != "" {
		t.Errorf("SHOW FAILOVER: %v", f)
	}
}

func TestConsoleShowQueries(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	for range 4 {
		e.logQuery("SELECT name\n  FROM users WHERE id = 42", 2*time.Millisecond)
	}
	e.logQuery("SELECT pg_sleep(0.05)", 50*time.Millisecond)
	guardtest.WaitFor(t, "two shapes", func() bool { return e.ql.Stats().Len() == 2 })

	q := mustExec(t, con, "SHOW QUERIES")
	want := []string{"fingerprint", "query", "calls", "errors", "rows", "total_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
	if !slices.Equal(q.cols, want) {
		t.Fatalf("SHOW QUERIES columns %v, want %v", q.cols, want)
	}
	if len(q.rows) != 2 || !strings.Contains(q.rows[0][1], "pg_sleep") {
		t.Errorf("SHOW QUERIES (by total time): %v", q.rows)
	}
	r := q.row(t, "query", "SELECT name FROM users WHERE id = $1") // one line, literal normalized
	if r["calls"] != "4" || r["errors"] != "0" || r["rows"] != "4" || len(r["fingerprint"]) != 16 {
		t.Errorf("SHOW QUERIES row: %v", r)
	}
	if p95, _ := strconv.ParseFloat(r["p95_ms"], 64); p95 < 1.9 || p95 > 2.1 {
		t.Errorf("p95_ms = %s, want 2 within 1%%", r["p95_ms"])
	}

	if q := mustExec(t, con, "SHOW QUERIES calls"); !strings.Contains(q.rows[0][1], "users") {
		t.Errorf("SHOW QUERIES calls: %v", q.rows)
	}
	if _, err := exec(t, con, "SHOW QUERIES sideways"); sqlState(err) != "42601" || !strings.Contains(err.Error(), "total, calls, p95, mean") {
		t.Errorf("SHOW QUERIES sideways: %v", err)
	}
}

func TestConsoleLimiterViews(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	s := e.lim.Match(limiter.Client{Database: "app", User: appUser, Application: "worker"})
	for range 3 {
		s.Observe()
	}
	// A transaction held open for 90 s that committed 30 s ago, as the
	// proxy reports it.
	t0 := time.Now().Add(-2 * time.Minute)
	act := e.lim.Connected("app", "worker", t0)
	act.Query("worker", t0)
	act.Ready(t0, false, true)
	act.Query("worker", t0.Add(90*time.Second))
	act.Ready(t0.Add(90*time.Second), false, false)

	limits := mustExec(t, con, "SHOW LIMITS")
	if r := limits.row(t, "name", "workers"); r["kind"] != "rule" || !strings.Contains(r["detail"], "queries_per_minute=600") || !strings.Contains(r["detail"], "connections=0/1") {
		t.Errorf("SHOW LIMITS rule: %v", r)
	}
	if r := limits.row(t, "name", "redis"); r["detail"] != "off" {
		t.Errorf("SHOW LIMITS redis: %v", r)
	}

	apps := mustExec(t, con, "SHOW APPLICATIONS")
	if r := apps.row(t, "application_name", "worker"); r["queries_last_hour"] != "3" || r["queries_per_hour_warn"] != "1000" || r["above_warn"] != "no" {
		t.Errorf("SHOW APPLICATIONS: %v", r)
	}

	budget := mustExec(t, con, "SHOW BUDGET")
	if !slices.Equal(budget.cols, []string{"key", "value"}) {
		t.Fatalf("SHOW BUDGET columns %v", budget.cols)
	}
	for k, want := range map[string]string{"month": time.Now().UTC().Format("2006-01"), "on_exhausted": "alert", "suspend_after": "5m0s", "monthly_cu_hours": "100", "exhausted": "no"} {
		if got := budget.row(t, "key", k)["value"]; got != want {
			t.Errorf("SHOW BUDGET %s = %q, want %q", k, got, want)
		}
	}

	if v := budget.row(t, "key", "poller worker")["value"]; !strings.Contains(v, "by transactions 1m30s, queries 30s") {
		t.Errorf("SHOW BUDGET poller worker = %q", v)
	}
	// The endpoint row: awake (30 s since the commit, suspend_after 5m),
	// woken by worker's connection.
	var ep []string
	for _, r := range budget.rows {
		if strings.HasPrefix(r[0], "endpoint ") {
			ep = r
		}
	}
	if ep == nil || !strings.Contains(ep[1], "awake now") || !strings.Contains(ep[1], "last woken "+t0.UTC().Format(time.RFC3339)+" by worker") {
		t.Errorf("SHOW BUDGET endpoint row %q", ep)
	}

	pollers := mustExec(t, con, "SHOW POLLERS")
	if !slices.Equal(pollers.cols, []string{"application_name", "endpoint", "queries", "median_gap", "max_gap", "awake", "awake_pct", "keeps_awake", "window",
		"transactions", "connections", "awake_queries", "awake_transactions", "awake_connections", "kept_awake_by"}) {
		t.Errorf("SHOW POLLERS columns %v", pollers.cols)
	}
	if r := pollers.row(t, "application_name", "worker"); r["queries"] != "2" || r["transactions"] != "1" || r["connections"] != "1" ||
		r["awake_transactions"] != "1m30s" || r["awake"] != "2m0s" || r["kept_awake_by"] != "transactions" {
		t.Errorf("SHOW POLLERS worker: %v", r)
	}
}

func TestConsoleCommands(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)

	// SET read_only
	if r := mustExec(t, con, "SET read_only = on"); r.tag != "SET" || !e.ReadOnly() {
		t.Fatalf("SET read_only = on: tag %q, ReadOnly() = %t", r.tag, e.ReadOnly())
	}
	mustExec(t, con, "set READ_ONLY to 'off'")
	if e.ReadOnly() {
		t.Fatal("SET read_only TO 'off' left read-only on")
	}
	if _, err := exec(t, con, "SET read_only = perhaps"); sqlState(err) != "42601" {
		t.Errorf("SET read_only = perhaps: %v", err)
	}
	if _, err := exec(t, con, "SET statement_timeout = 0"); sqlState(err) != "42601" {
		t.Errorf("SET statement_timeout: %v", err)
	}

	// RELOAD, and a failing one.
	if r := mustExec(t, con, "RELOAD"); r.tag != "RELOAD" || e.reloads.Load() != 1 {
		t.Errorf("RELOAD: tag %q, %d reloads", r.tag, e.reloads.Load())
	}
	bad := errors.New("pgguard.toml:3: pool.size: is a string; want an integer")
	e.reloadErr.Store(&bad)
	if _, err := exec(t, con, "RELOAD"); sqlState(err) != "42601" || !strings.Contains(err.Error(), "pool.size") || !strings.Contains(err.Error(), "running config is kept") {
		t.Errorf("failing RELOAD: %v", err)
	}

	// Unknown commands and views.
	if _, err := exec(t, con, "DROP TABLE users"); sqlState(err) != "42601" || !strings.Contains(err.Error(), `unknown command "drop"`) {
		t.Errorf("unknown command: %v", err)
	}
	if _, err := exec(t, con, "SHOW everything"); sqlState(err) != "42601" || !strings.Contains(err.Error(), "queries") {
		t.Errorf("unknown view: %v", err)
	}
	// The session survives errors.
	mustExec(t, con, "SHOW POOLS")
}

func TestConsolePauseResume(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	app := e.connect(t, appUser, appPass, "app", "web")

	if r := mustExec(t, con, "PAUSE"); r.tag != "PAUSE" || !e.Status().Paused {
		t.Fatalf("PAUSE: tag %q, paused %t", r.tag, e.Status().Paused)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := app.Exec(ctx, "SELECT 1").ReadAll()
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a query ran while paused (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if r := mustExec(t, con, "RESUME"); r.tag != "RESUME" || e.Status().Paused {
		t.Fatalf("RESUME: tag %q, paused %t", r.tag, e.Status().Paused)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("query after RESUME: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("query still waiting 5 s after RESUME")
	}
}

func TestConsoleKill(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	victim := e.connect(t, appUser, appPass, "app", "victim")
	bystander := e.connect(t, appUser, appPass, "app", "bystander")
	mustExec(t, victim, "SELECT 1")

	id := mustExec(t, con, "SHOW CLIENTS").row(t, "application_name", "victim")["id"]
	if r := mustExec(t, con, "KILL "+id); r.tag != "KILL" {
		t.Fatalf("KILL %s: tag %q", id, r.tag)
	}
	// The victim learns why without sending anything.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := victim.WaitForNotification(ctx); sqlState(err) != "57P01" {
		t.Fatalf("killed client got %v, want 57P01", err)
	}
	mustExec(t, bystander, "SELECT 1")
	guardtest.WaitFor(t, "the victim to leave SHOW CLIENTS", func() bool {
		return !slices.Contains(mustExec(t, con, "SHOW CLIENTS").col(t, "application_name"), "victim")
	})

	if _, err := exec(t, con, "KILL "+id); sqlState(err) != "42601" || !strings.Contains(err.Error(), "no client with id") {
		t.Errorf("KILL of a gone client: %v", err)
	}
	if _, err := exec(t, con, "KILL"); sqlState(err) != "42601" || !strings.Contains(err.Error(), "usage") {
		t.Errorf("KILL without an id: %v", err)
	}
}

func TestConsoleAdminOnly(t *testing.T) {
	e := start(t, testConfig())
	_, err := e.dial(appUser, appPass, "pgguard", "")
	if sqlState(err) != "28000" || !strings.Contains(err.Error(), "admin.users") {
		t.Errorf("non-admin on database pgguard: %v, want 28000 naming admin.users", err)
	}
	_, err = e.dial(adminUser, "wrong", "pgguard", "")
	if sqlState(err) != "28P01" {
		t.Errorf("admin with a wrong password: %v, want 28P01", err)
	}
	// Admin users reach the console; the extended protocol is refused
	// politely and the session goes on.
	con := e.console(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := con.ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Close(); sqlState(err) != "0A000" {
		t.Errorf("extended protocol on the console: %v, want 0A000", err)
	}
	mustExec(t, con, "SHOW POOLS")
}
