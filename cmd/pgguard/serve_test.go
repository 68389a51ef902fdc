package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// lockedBuffer is an io.Writer safe for the logger's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestServe runs serve as main does, against a real PostgreSQL, and drives it
// with real signals: the query log, the limiter and the result cache are
// wired (metrics, /status, console), SIGHUP reopens the query log for
// logrotate, RELOAD applies a changed [[limits]] and [[cache]], SUSPEND_REDIS
// is honoured by the limiter and the cache, and SIGTERM drains.
func TestServe(t *testing.T) {
	localpg.Require(t, localpg.Available())
	pg, err := localpg.Start(localpg.Options{User: "tester", Password: "tester-pw", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	clearEnv(t)
	t.Setenv(envSuspendRedis, "yes")

	dir := t.TempDir()
	qlog := filepath.Join(dir, "query.log")
	httpAddr := freeOr("127.0.0.1:0")
	path := filepath.Join(dir, "pgguard.toml")
	base := fmt.Sprintf(`listen = "127.0.0.1:0"
http_listen = %q
shutdown_timeout = "5s"

[databases.app]
primary = %q

[[users]]
name = "app"
password = "app-pw"

[[users]]
name = "admin"
password = "admin-pw"

[admin]
users = ["admin"]

[querylog]
path = %q

[limiter]
redis_url = "redis://127.0.0.1:1/0"

[[limits]]
name = "workers"
application_name = "worker"
queries_per_minute = 600

[[cache]]
name = "branding"
query = "SELECT * FROM tenant_branding WHERE tenant_id = $1"
ttl = "5m"
`, httpAddr, pg.URL("app"), qlog)
	os.WriteFile(path, []byte(base), 0o600)
	cfg, err := config.Load(path, os.Getenv)
	if err != nil {
		t.Fatal(err)
	}

	logs := &lockedBuffer{}
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- serve(cfg, path, newLogger(logs, "debug"), func(a net.Addr) { ready <- a }) }()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("serve did not come up\n%s", logs)
	}
	stopped := false
	t.Cleanup(func() {
		if stopped {
			return
		}
		select {
		case <-done: // serve returned on its own: no handler for a signal now
		case <-time.After(100 * time.Millisecond):
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-done
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connect := func(user, pass, db string) *pgconn.PgConn {
		t.Helper()
		c, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&application_name=worker", user, pass, addr, db))
		if err != nil {
			t.Fatalf("connect %s: %v", db, err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	execOK := func(c *pgconn.PgConn, sql string) []*pgconn.Result {
		t.Helper()
		rs, err := c.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return rs
	}
	httpGet := func(p string) string {
		t.Helper()
		resp, err := http.Get("http://" + httpAddr + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, b)
		}
		return string(b)
	}

	app := connect("app", "app-pw", "app")
	execOK(app, "SELECT 1")

	// The query log's and the limiter's metrics are on pgguard's registry.
	metrics := httpGet("/metrics")
	for _, name := range []string{"pgguard_querylog_dropped_total", "pgguard_querylog_shapes_evicted_total", "pgguard_budget_cu_hours", "pgguard_application_queries_per_hour",
		`pgguard_cache_hits_total{rule="branding"}`, "pgguard_cache_local_bytes"} {
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	var st struct {
		Extra struct {
			Limiter struct {
				Redis string `json:"redis"`
			} `json:"limiter"`
			QueryLog map[string]any `json:"query_log"`
			Cache    struct {
				Redis string `json:"redis"`
			} `json:"cache"`
		} `json:"extra"`
	}
	if err := json.Unmarshal([]byte(httpGet("/status")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Extra.Limiter.Redis != "suspended" || st.Extra.QueryLog == nil {
		t.Errorf("/status: limiter.redis %q (want suspended: SUSPEND_REDIS=yes), query_log %v", st.Extra.Limiter.Redis, st.Extra.QueryLog)
	}
	if st.Extra.Cache.Redis != "suspended" {
		t.Errorf("/status: cache.redis %q (want suspended: SUSPEND_REDIS=yes; its Redis is limiter.redis_url)", st.Extra.Cache.Redis)
	}

	// The dashboard is wired: the page, and its state with the switches.
	if page := httpGet("/"); !strings.Contains(page, "/dashboard/assets/app.js") {
		t.Errorf("GET / is not the dashboard: %.200s", page)
	}
	var ds struct {
		Switches []struct {
			Name string `json:"name"`
			On   bool   `json:"on"`
		} `json:"switches"`
		Redis string `json:"redis"`
	}
	if err := json.Unmarshal([]byte(httpGet("/dashboard/state")), &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds.Switches) != 3 || ds.Switches[1].Name != "disable_workers" || ds.Switches[1].On ||
		ds.Switches[2].Name != "suspend_redis" || !ds.Switches[2].On || ds.Redis != "suspended" {
		t.Errorf("/dashboard/state switches %+v redis %q: want suspend_redis on (SUSPEND_REDIS=yes)", ds.Switches, ds.Redis)
	}

	// logrotate: move the file away, SIGHUP, and pgguard writes a new one.
	if err := os.Rename(qlog, qlog+".1"); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFile(t, qlog)
	guardtest.WaitFor(t, "config reloaded in the log", func() bool { return strings.Contains(logs.String(), "config reloaded") })
	execOK(app, "SELECT 2 AS after_rotate")

	// RELOAD from the console applies a new [[limits]] and [[cache]] rule.
	os.WriteFile(path, []byte(base+`
[[limits]]
name = "nightly"
application_name = "nightly-report"
max_connections = 1

[[cache]]
name = "plans"
fingerprint = "50fde20626009aba"
ttl = "1m"
`), 0o600)
	con := connect("admin", "admin-pw", "pgguard")
	execOK(con, "RELOAD")
	limits := execOK(con, "SHOW LIMITS")
	if !bytes.Contains(bytes.Join(flatten(limits), nil), []byte("nightly")) {
		t.Errorf("SHOW LIMITS after RELOAD lacks the new rule: %q", flatten(limits))
	}
	if rules := execOK(con, "SHOW CACHE"); !bytes.Contains(bytes.Join(flatten(rules), nil), []byte("plans")) {
		t.Errorf("SHOW CACHE after RELOAD lacks the new rule: %q", flatten(rules))
	}

	// SIGTERM drains, closes the query log and returns.
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("serve did not return after SIGTERM\n%s", logs)
	}
	// Every query is in one of the two files; those after the SIGHUP in the new one.
	rotated, _ := os.ReadFile(qlog + ".1")
	current, _ := os.ReadFile(qlog)
	if !bytes.Contains(append(rotated, current...), []byte(`"query":"SELECT $1"`)) {
		t.Errorf("the first query is in neither query log file:\n%s\n%s", rotated, current)
	}
	if !bytes.Contains(current, []byte(`"query":"SELECT $1 AS after_rotate"`)) {
		t.Errorf("the query after SIGHUP is not in the reopened file:\n%s", current)
	}
	if !strings.Contains(logs.String(), "pgguard stopped") {
		t.Errorf("no 'pgguard stopped' in the log:\n%s", logs)
	}
}

func TestServeRefusesBadSuspendRedis(t *testing.T) {
	clearEnv(t)
	t.Setenv(envSuspendRedis, "sometimes")
	cfg := config.Default()
	err := serve(cfg, "", newLogger(io.Discard, "info"), nil)
	if err == nil || !strings.Contains(err.Error(), "SUSPEND_REDIS") {
		t.Errorf("serve with SUSPEND_REDIS=sometimes: %v", err)
	}
}

func TestRedisLogger(t *testing.T) {
	var b bytes.Buffer
	redisLogger{newLogger(&b, "debug").With("component", "redis")}.Printf(context.Background(), "redis: dial %s: connection refused\n", "127.0.0.1:1")
	if got := b.String(); !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, `msg="redis: dial 127.0.0.1:1: connection refused"`) || !strings.Contains(got, "component=redis") {
		t.Errorf("redisLogger wrote %q", got)
	}
}

func flatten(rs []*pgconn.Result) [][]byte {
	var out [][]byte
	for _, r := range rs {
		for _, row := range r.Rows {
			out = append(out, row...)
		}
	}
	return out
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	guardtest.WaitFor(t, path+" to exist", func() bool { _, err := os.Stat(path); return err == nil })
}
