package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// The seeds' workload in scaled time (one simulated minute is one second):
// page loads that read the tenant's branding, and some of them the three
// endpoints the post-mortem names; branding and settings updates; the
// availability worker polling every "minute" with a per-tenant N+1 loop
// (a read and an update per tenant); slow reports. Day: all of it; night:
// the worker alone.
const (
	replayTenants  = 20
	replayWebConns = 8
	replayLoads    = 100.0 // page loads per second (100 a minute, scaled)
)

var (
	sqlBranding  = "SELECT * FROM tenant_branding WHERE tenant_id = $1"
	sqlSubdomain = "SELECT id, name FROM tenants WHERE subdomain = $1"
	sqlCritical  = "SELECT app_id, name FROM critical_apps WHERE tenant_id = $1 ORDER BY name"
	sqlSettings  = "SELECT key, value FROM tenant_settings WHERE tenant_id = $1"
	sqlTenants   = "SELECT id FROM tenants WHERE active ORDER BY id"
	sqlStatus    = "SELECT status, checked_at FROM service_status WHERE tenant_id = $1"
	sqlChecked   = "UPDATE service_status SET checked_at = now() WHERE tenant_id = $1"
	sqlReport    = "SELECT count(DISTINCT md5(g::text)) FROM generate_series(1, $1::int) g"
)

// replayStep is one request of a connection's schedule.
type replayStep struct {
	at  time.Duration
	run func(ctx context.Context, c *pgx.Conn) error
}

// replayPlan is every connection's schedule, by application_name; the same
// seed gives the same plan.
func replayPlan(day, night, workerEvery time.Duration, reportN int) map[string][][]replayStep {
	rng := rand.New(rand.NewPCG(31, 9))
	plan := map[string][][]replayStep{}
	q := func(sql string, args ...any) func(ctx context.Context, c *pgx.Conn) error {
		return func(ctx context.Context, c *pgx.Conn) error {
			rows, err := c.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		}
	}
	for range replayWebConns {
		var steps []replayStep
		for at := time.Duration(0); ; {
			at += time.Duration(rng.ExpFloat64() * float64(time.Second) * replayWebConns / replayLoads)
			if at >= day {
				break
			}
			tenant := 1 + rng.IntN(replayTenants)
			sub, crit, set := rng.IntN(2) == 0, rng.IntN(10) < 3, rng.IntN(10) < 3
			steps = append(steps, replayStep{at, func(ctx context.Context, c *pgx.Conn) error {
				err := q(sqlBranding, tenant)(ctx, c)
				if sub {
					err = errors.Join(err, q(sqlSubdomain, fmt.Sprintf("t%d", tenant))(ctx, c))
				}
				if crit {
					err = errors.Join(err, q(sqlCritical, tenant)(ctx, c))
				}
				if set {
					err = errors.Join(err, q(sqlSettings, tenant)(ctx, c))
				}
				return err
			}})
		}
		plan["web"] = append(plan["web"], steps)
	}
	var admin []replayStep
	for at := time.Second; at < day; at += 2 * time.Second {
		tenant := 1 + rng.IntN(replayTenants)
		admin = append(admin, replayStep{at, q("UPDATE tenant_branding SET primary_color = $1 WHERE tenant_id = $2", fmt.Sprintf("#%06x", rng.IntN(1<<24)), tenant)})
	}
	for at := 1500 * time.Millisecond; at < day; at += 3 * time.Second {
		admin = append(admin, replayStep{at, q("UPDATE tenant_settings SET value = $1 WHERE tenant_id = $2 AND key = 'tz'", "UTC", 1+rng.IntN(replayTenants))})
	}
	plan["web-admin"] = [][]replayStep{admin}
	var worker []replayStep
	for at := 200 * time.Millisecond; at < day+night; at += workerEvery {
		worker = append(worker, replayStep{at, func(ctx context.Context, c *pgx.Conn) error {
			// A worker that keeps its schedule whatever is refused: the
			// tenants it knows, one check each.
			err := q(sqlTenants)(ctx, c)
			for id := 1; id <= replayTenants; id++ {
				err = errors.Join(err, q(sqlStatus, id)(ctx, c), q(sqlChecked, id)(ctx, c))
			}
			return err
		}})
	}
	plan["availability-worker"] = [][]replayStep{worker}
	var reports []replayStep
	for at := 700 * time.Millisecond; at < day; at += 3 * time.Second {
		reports = append(reports, replayStep{at, q(sqlReport, reportN)})
	}
	plan["reporting"] = [][]replayStep{reports}
	return plan
}

// replayRun is what one run through pgguard measured.
type replayRun struct {
	advice      advisor.Advice
	awake       float64 // the limiter's budget model, seconds
	pgQueries   int64   // table scans PostgreSQL counted (each of the workload's queries reads one table once)
	refused     int64   // 53400 answers
	queryLog    string
	queryLogRaw []byte
}

// TestAdviseReplay replays the seeds' workload through pgguard and checks
// that the advice names the branding query as the top cache candidate, the
// availability worker as the poller with a rule, its N+1 loop with the
// parent query, and the slow reports; that `pgguard advise` on the query
// log gives the same findings; and that with the suggested TOML applied, a
// second replay saves what the forecast predicted, within 10%: the queries
// reaching PostgreSQL and the modeled Active Time. PGGUARD_REPLAY=1 runs a
// longer replay (a simulated hour of day and half an hour of night).
func TestAdviseReplay(t *testing.T) {
	localpg.Require(t, localpg.Available())
	pg, err := localpg.Start(localpg.Options{User: "app", Password: "app-pw", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	clearEnv(t)
	day, night := 5*time.Second, 2*time.Second
	if os.Getenv("PGGUARD_REPLAY") != "" {
		day, night = 60*time.Second, 30*time.Second
	}
	ctx := context.Background()
	direct, err := pgx.Connect(ctx, pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	schema := `
CREATE TABLE tenants (id int PRIMARY KEY, name text, subdomain text UNIQUE, active bool);
CREATE TABLE tenant_branding (tenant_id int PRIMARY KEY, logo_url text, primary_color text, font text);
CREATE TABLE critical_apps (app_id int PRIMARY KEY, tenant_id int, name text);
CREATE INDEX ON critical_apps (tenant_id);
CREATE TABLE tenant_settings (tenant_id int, key text, value text, PRIMARY KEY (tenant_id, key));
CREATE TABLE service_status (tenant_id int PRIMARY KEY, status text, checked_at timestamptz);
INSERT INTO tenants SELECT g, 'Tenant ' || g, 't' || g, true FROM generate_series(1, 20) g;
INSERT INTO tenant_branding SELECT g, 'https://cdn.example/' || g || '.png', '#336699', 'Inter' FROM generate_series(1, 20) g;
INSERT INTO critical_apps SELECT g, 1 + g % 20, 'app ' || g FROM generate_series(1, 100) g;
INSERT INTO tenant_settings SELECT g, k, 'v' FROM generate_series(1, 20) g, unnest(ARRAY['tz', 'locale', 'plan']) k;
INSERT INTO service_status SELECT g, 'ok', now() FROM generate_series(1, 20) g;
ANALYZE;`
	if _, err := direct.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	// The report's size for about 1.2 s on this machine, now.
	reportN := 200_000
	start := time.Now()
	if _, err := direct.Exec(ctx, sqlReport, reportN); err != nil {
		t.Fatal(err)
	}
	reportN = int(math.Min(2e7, float64(reportN)*float64(1200*time.Millisecond)/float64(max(time.Since(start), time.Millisecond))))

	dir := t.TempDir()
	base := func(qlog string) string {
		return fmt.Sprintf(`listen = "127.0.0.1:0"
http_listen = %q
shutdown_timeout = "5s"

[databases.app]
primary = %q

[[users]]
name = "app"
password = "app-pw"

[admin]
users = ["app"]

[pool]
size = 8
max_overflow = 4

[querylog]
path = %q

[budget]
suspend_after = "5s"
compute_units = 0.25
`, freeOr("127.0.0.1:0"), pg.URL("app"), qlog)
	}
	scans := func() int64 {
		t.Helper()
		// The servers' backends report their counts when pgguard closes
		// them; wait for the figure to settle.
		var last int64 = -1
		for range 50 {
			var n int64
			direct.Exec(ctx, "SELECT pg_stat_clear_snapshot()")
			if err := direct.QueryRow(ctx, `SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables
				WHERE relname IN ('tenants', 'tenant_branding', 'critical_apps', 'tenant_settings', 'service_status')`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == last {
				return n
			}
			last = n
			time.Sleep(300 * time.Millisecond)
		}
		return last
	}

	run := func(name, extraTOML string, workerEvery time.Duration) replayRun {
		t.Helper()
		qlog := filepath.Join(dir, name+".jsonl")
		cfgText := base(qlog) + "\n" + extraTOML
		path := filepath.Join(dir, name+".toml")
		os.WriteFile(path, []byte(cfgText), 0o600)
		cfg, err := config.Load(path, os.Getenv)
		if err != nil {
			t.Fatalf("%s config: %v\n%s", name, err, cfgText)
		}
		before := scans()
		sigs := make(chan os.Signal, 1)
		ready := make(chan net.Addr, 1)
		done := make(chan error, 1)
		logs := &lockedBuffer{}
		go func() {
			done <- serveWith(cfg, newLogger(logs, "info"), serveOptions{path: path, sigs: sigs, ready: func(a net.Addr) { ready <- a }})
		}()
		var addr net.Addr
		select {
		case addr = <-ready:
		case err := <-done:
			t.Fatalf("serve: %v\n%s", err, logs)
		}
		stopped := false
		defer func() {
			if !stopped {
				sigs <- syscall.SIGTERM
				<-done
			}
		}()
		var res replayRun
		var mu sync.Mutex
		var wg sync.WaitGroup
		type client struct {
			app   string
			c     *pgx.Conn
			steps []replayStep
		}
		var clients []client
		for app, conns := range replayPlan(day, night, workerEvery, reportN) {
			for _, steps := range conns {
				c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:app-pw@%s/app?sslmode=disable&application_name=%s", addr, app))
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, client{app, c, steps})
			}
		}
		t0 := time.Now().Add(10 * time.Millisecond)
		for _, cl := range clients {
			app, c, steps := cl.app, cl.c, cl.steps
			{
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close(ctx)
					for _, s := range steps {
						time.Sleep(time.Until(t0.Add(s.at)))
						if err := s.run(ctx, c); err != nil {
							// Refusals are expected (the rule); any other error is not.
							if n := strings.Count(err.Error(), "(SQLSTATE 53400)"); n > 0 && n == strings.Count(err.Error(), "SQLSTATE") {
								mu.Lock()
								res.refused += int64(n)
								mu.Unlock()
								continue
							}
							t.Errorf("%s: %v", app, err)
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		// Let the last activity's suspend_after pass: the budget model's
		// tail is then whole, as the advisor's is.
		time.Sleep(cfg.Budget.SuspendAfter.Duration + time.Second)
		httpAddr := cfg.HTTPListen
		get := func(p string, v any) {
			resp, err := http.Get("http://" + httpAddr + p)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("GET %s: %v: %.300s", p, err, b)
			}
		}
		get("/advice", &res.advice)
		var st struct {
			Extra struct {
				Limiter struct {
					Budget struct {
						Awake float64 `json:"awake_seconds"`
					} `json:"budget"`
				} `json:"limiter"`
			} `json:"extra"`
		}
		get("/status", &st)
		res.awake = st.Extra.Limiter.Budget.Awake
		sigs <- syscall.SIGTERM
		stopped = true
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
		res.pgQueries = scans() - before
		res.queryLog = qlog
		res.queryLogRaw, _ = os.ReadFile(qlog)
		return res
	}

	r1 := run("before", "", time.Second)
	a := &r1.advice
	// The findings.
	if len(a.CacheCandidates) == 0 || a.CacheCandidates[0].Query != sqlBranding || !strings.Contains(a.CacheCandidates[0].TOML, `query = "`+sqlBranding+`"`) {
		t.Errorf("the top cache candidate is not the branding query with its TOML: %+v", a.CacheCandidates)
	}
	var poller *advisor.Poller
	for i := range a.Pollers {
		if a.Pollers[i].Application == "availability-worker" {
			poller = &a.Pollers[i]
		}
	}
	if poller == nil || !strings.Contains(poller.TOML, `application_name = "availability-worker"`) || !strings.Contains(poller.TOML, "worker = true") {
		t.Errorf("the availability worker is not a poller with a [[limits]] rule: %+v", a.Pollers)
	}
	var loop *advisor.Loop
	for i := range a.Loops { // the most often seen: a machine busy now and then splits a few loops
		if l := &a.Loops[i]; l.Application == "availability-worker" && l.Query == sqlStatus && (loop == nil || l.Loops > loop.Loops) {
			loop = l
		}
	}
	if loop == nil || loop.Parent == nil || loop.Parent.Query != sqlTenants || loop.MaxCount != replayTenants {
		t.Errorf("the worker's N+1 loop with its parent query is not found: %+v", a.Loops)
	}
	if len(a.Slow) == 0 || !strings.Contains(a.Slow[0].Query, "md5(g::text)") || a.Slow[0].Applications[0] != "reporting" {
		for _, l := range strings.Split(string(r1.queryLogRaw), "\n") {
			if strings.Contains(l, "md5") {
				t.Log(l)
			}
		}
		t.Errorf("the slow reports are not found: %+v", a.Slow)
	}

	// Offline: the same findings from the query log.
	code, out, errOut := pgguard("advise", "-json", "-config", filepath.Join(dir, "before.toml"), r1.queryLog)
	if code != 0 {
		t.Fatalf("pgguard advise: %d %s", code, errOut)
	}
	var off advisor.Advice
	if err := json.Unmarshal([]byte(out), &off); err != nil {
		t.Fatal(err)
	}
	if off.TOML != a.TOML || len(off.Loops) != len(a.Loops) || len(off.Slow) != len(a.Slow) || off.Forecast != a.Forecast {
		t.Errorf("pgguard advise differs from GET /advice:\noffline TOML:\n%s\nlive TOML:\n%s\noffline forecast %+v\nlive forecast %+v", off.TOML, a.TOML, off.Forecast, a.Forecast)
	}

	// Apply the suggested rules and replay again.
	r2 := run("after", a.TOML, time.Second)
	f := a.Forecast
	predSaved := f.PrimaryQueries - f.PredictedPrimaryQueries
	measSaved := r1.pgQueries - r2.pgQueries
	t.Logf("suggested TOML:\n%s", a.TOML)
	t.Logf("queries reaching PostgreSQL: before %d, after %d: saved %d; predicted saved %d (advisor's primary queries %d -> %d); refused by the rule: %d",
		r1.pgQueries, r2.pgQueries, measSaved, predSaved, f.PrimaryQueries, f.PredictedPrimaryQueries, r2.refused)
	t.Logf("modeled Active Time (limiter): before %.1f s, after %.1f s; advisor: before %.1f s, predicted after %.1f s",
		r1.awake, r2.awake, f.AwakeSeconds, f.PredictedAwakeSeconds)
	for _, c := range a.CacheCandidates {
		t.Logf("cache candidate %q: %d calls, hit ratio %.3f at %s, saves %d queries", c.Query, c.Calls, c.HitRatio, c.TTL, c.Hits)
	}
	if poller != nil {
		t.Logf("poller: %s", poller.Note)
	}
	for _, sl := range a.Slow {
		t.Logf("slow: %q from %v: %d calls, p95 %.0f ms, %.0f%% of the primary's query time", sl.Query, sl.Applications, sl.Calls, sl.P95MS, 100*sl.Share)
	}
	if loop != nil && loop.Parent != nil {
		t.Logf("loop: %d loops of %.1f, parent %q (%.1f rows), %.2f ms extra per loop", loop.Loops, loop.MeanCount, loop.Parent.Query, loop.Parent.MeanRows, loop.ExtraMSPerLoop)
	}
	if measSaved <= 0 || math.Abs(float64(predSaved-measSaved)) > 0.1*float64(measSaved) {
		t.Errorf("queries saved: predicted %d, measured %d: more than 10%% apart", predSaved, measSaved)
	}
	if math.Abs(f.PredictedAwakeSeconds-r2.awake) > 0.1*r2.awake {
		t.Errorf("Active Time after the rules: predicted %.1f s, measured %.1f s: more than 10%% apart", f.PredictedAwakeSeconds, r2.awake)
	}
	if math.Abs(f.AwakeSeconds-r1.awake) > 0.1*r1.awake {
		t.Errorf("Active Time before: advisor %.1f s, budget model %.1f s: more than 10%% apart", f.AwakeSeconds, r1.awake)
	}
	if os.Getenv("PGGUARD_REPLAY") == "" || poller == nil {
		return
	}
	// The app's own fix: the worker polling at the rule's pace. The night
	// is long enough for the compute to sleep between its polls.
	every := time.Duration(poller.SuggestedIntervalSeconds * float64(time.Second))
	r3 := run("slower", "", every)
	measured := r1.awake - r3.awake
	t.Logf("worker polling every %s instead of 1s: Active Time %.1f s -> %.1f s, saved %.1f s; predicted saved %.1f s", every, r1.awake, r3.awake, measured, poller.IntervalSavedSeconds)
	if math.Abs(measured-poller.IntervalSavedSeconds) > 0.1*measured {
		t.Errorf("Active Time saved by polling every %s: predicted %.1f s, measured %.1f s: more than 10%% apart", every, poller.IntervalSavedSeconds, measured)
	}
}
