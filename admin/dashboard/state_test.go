package dashboard_test

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/querylog"
)

// getJSON fetches path and decodes it into v; it returns the response.
func (e *env) getJSON(t testing.TB, path string, v any) *http.Response {
	t.Helper()
	resp, err := http.Get(e.http.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
	return resp
}

func (e *env) state(t testing.TB) dashboard.State {
	t.Helper()
	var st dashboard.State
	e.getJSON(t, "/dashboard/state", &st)
	return st
}

func shapeOf(st dashboard.State, text string) *dashboard.Shape {
	for i, s := range st.Queries.Shapes {
		if strings.Contains(s.Query, text) {
			return &st.Queries.Shapes[i]
		}
	}
	return nil
}

func sum(xs []int64) (n int64) {
	for _, x := range xs {
		n += x
	}
	return n
}

func TestStateShowsWhatPgguardKnows(t *testing.T) {
	cfg := testConfig()
	cfg.Pool.LeakWarnAfter = config.D(100 * time.Millisecond)
	e := start(t, cfg)
	worker := e.connect(t, "worker")
	mustExec(t, worker, "CREATE TABLE IF NOT EXISTS dash_t (id int)")
	for i := range 10 {
		mustExec(t, worker, fmt.Sprintf("SELECT * FROM dash_t WHERE id = %d", i))
	}
	mustExec(t, worker, "SELECT pg_sleep(0.03)") // above querylog.slow = 20ms

	// Contention: five sessions want the three servers (pool.size 2 +
	// max_overflow 1), so some wait.
	var wg sync.WaitGroup
	for range 5 {
		c := e.connect(t, "web")
		wg.Go(func() { mustExec(t, c, "SELECT pg_sleep(0.05)") })
	}
	wg.Wait()
	leaky := e.connect(t, "leaky-script")
	mustExec(t, leaky, "BEGIN")
	mustExec(t, leaky, "SELECT 1") // now idle in a transaction, holding a server

	var st dashboard.State
	guardtest.WaitFor(t, "the state to show the shapes, the wait and the leak", func() bool {
		st = e.state(t)
		return shapeOf(st, "FROM dash_t") != nil && shapeOf(st, "pg_sleep") != nil && len(st.Leaks) == 1 && len(st.Pools) == 1 && st.Pools[0].WaitsLastMinute > 0
	})
	pool := st.Pools[0]
	if pool.Database != "app" || pool.Cap != 3 || pool.Upstream != "primary" || pool.ClientsIdle+pool.ClientsActive != 7 {
		t.Errorf("pool: %+v", pool)
	}
	if pool.WaitP95MS <= 0 || pool.WaitP95MS > 1000 {
		t.Errorf("pool wait p95 %.3f ms over %d waits: want a wait of up to ~100 ms", pool.WaitP95MS, pool.WaitsLastMinute)
	}
	sh := shapeOf(st, "FROM dash_t")
	if sh.Query != "SELECT * FROM dash_t WHERE id = $1" || sh.Calls != 10 || sh.Slow || sh.P50MS <= 0 || sh.P99MS < sh.P95MS {
		t.Errorf("dash_t shape: %+v", sh)
	}
	if slow := shapeOf(st, "pg_sleep"); slow == nil || slow.Query != "SELECT pg_sleep($1)" || !slow.Slow || st.Queries.SlowMS != 20 {
		t.Errorf("pg_sleep not marked slow (querylog.slow = 20ms): %+v", slow)
	}
	if l := st.Leaks[0]; l.Application != "leaky-script" || l.Server == 0 || !strings.HasPrefix(l.Addr, "127.0.0.1:") || st.LeakWarnAfterSeconds != 0.1 {
		t.Errorf("leak: %+v", l)
	}
	if b := st.Budget; b == nil || b.Month != time.Now().UTC().Format("2006-01") || b.AwakeSeconds <= 0 || b.MonthlyCUHours != 100 {
		t.Errorf("budget: %+v", b)
	}
	a := st.Applications
	if a == nil || a.QueriesPerHourWarn != 1000 || len(a.Rules) != 1 || a.Rules[0].Name != "workers" || a.Rules[0].Admitted == 0 || a.SuspendAfterSeconds != 300 {
		t.Fatalf("applications: %+v", a)
	}
	var apps []string
	for _, x := range a.Apps {
		apps = append(apps, x.Application)
	}
	if !strings.Contains(strings.Join(apps, ","), "worker") || len(a.Pollers) == 0 {
		t.Errorf("applications %v, pollers %+v", apps, a.Pollers)
	}
	if c := st.Cache; c == nil || c.Redis != "off" || len(c.Rules) != 1 || c.Rules[0].Name != "items" {
		t.Errorf("cache: %+v", c)
	}
	if st.Redis != "off" || len(st.Switches) != 3 || st.Switches[0] != (dashboard.SwitchState{Name: "read_only", Env: "READ_ONLY_MODE", Help: st.Switches[0].Help, On: false, Settable: true}) ||
		st.Switches[1] != (dashboard.SwitchState{Name: "disable_workers", Env: "DISABLE_WORKERS", Help: st.Switches[1].Help, On: false, Settable: true}) ||
		st.Switches[2].Name != "suspend_redis" || st.Switches[2].Settable {
		t.Errorf("switches %+v redis %q", st.Switches, st.Redis)
	}

	// Counts rise, and the shape's trend follows every call once the
	// sampler follows it.
	guardtest.WaitFor(t, "the sampler to follow the shape", func() bool { return len(e.state(t).Queries.Shapes[0].Trend) > 0 })
	before := shapeOf(e.state(t), "FROM dash_t")
	for i := range 15 {
		mustExec(t, worker, fmt.Sprintf("SELECT * FROM dash_t WHERE id = %d", i))
	}
	guardtest.WaitFor(t, "15 more calls in the count and the trend", func() bool {
		after := shapeOf(e.state(t), "FROM dash_t")
		return after.Calls == before.Calls+15 && sum(after.Trend) == sum(before.Trend)+15
	})
	if after := e.state(t); after.Pools[0].Queries < pool.Queries+15 {
		t.Errorf("pool queries %d, want at least %d", after.Pools[0].Queries, pool.Queries+15)
	}
}

func TestHistory(t *testing.T) {
	e := start(t, testConfig())
	conn := e.connect(t, "web")
	var h dashboard.History
	guardtest.WaitFor(t, "a point with queries", func() bool {
		mustExec(t, conn, "SELECT 1")
		e.getJSON(t, "/dashboard/history", &h)
		for _, p := range h.Points {
			if p.QPS > 0 && p.P95MS > 0 && p.ClientsIdle+p.ClientsActive == 1 {
				return true
			}
		}
		return false
	})
	if h.IntervalSeconds != 0.2 || h.WindowSeconds != 60 {
		t.Errorf("interval %g window %g", h.IntervalSeconds, h.WindowSeconds)
	}
	for i := 1; i < len(h.Points); i++ {
		if h.Points[i].Time <= h.Points[i-1].Time {
			t.Fatalf("points out of order: %+v", h.Points)
		}
	}
	last := h.Points[len(h.Points)-1].Time
	var later dashboard.History
	guardtest.WaitFor(t, "a newer point", func() bool {
		e.getJSON(t, fmt.Sprintf("/dashboard/history?since=%d", last), &later)
		return len(later.Points) > 0
	})
	for _, p := range later.Points {
		if p.Time <= last {
			t.Errorf("since=%d returned a point at %d", last, p.Time)
		}
	}
	var st dashboard.State
	resp := e.getJSON(t, fmt.Sprintf("/dashboard/state?since=%d", last), &st)
	if !strings.HasPrefix(resp.Header.Get("Server-Timing"), "build;dur=") {
		t.Errorf("Server-Timing %q", resp.Header.Get("Server-Timing"))
	}
	for _, p := range st.History.Points {
		if p.Time <= last {
			t.Errorf("state since=%d has a point at %d", last, p.Time)
		}
	}
	resp, err := http.Get(e.http.URL + "/dashboard/history?since=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("since=x: %d, want 400", resp.StatusCode)
	}
}

func TestAssets(t *testing.T) {
	e := start(t, testConfig())
	for _, c := range []struct{ path, typ, has string }{
		{"/", "text/html", `src="/dashboard/assets/app.js"`},
		{"/dashboard/assets/app.js", "text/javascript", "/dashboard/state"},
		{"/dashboard/assets/app.css", "text/css", "--blue"},
	} {
		req, _ := http.NewRequest(http.MethodGet, e.http.URL+c.path, nil)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(resp.Body)
		if err != nil || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("%s: not gzipped: %v", c.path, err)
		}
		body, _ := io.ReadAll(zr)
		resp.Body.Close()
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), c.typ) || !strings.Contains(string(body), c.has) {
			t.Errorf("%s: %s %.100s", c.path, resp.Header.Get("Content-Type"), body)
		}
		etag := resp.Header.Get("ETag")
		req.Header.Set("If-None-Match", etag)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Errorf("%s with its ETag %s: %d, want 304", c.path, etag, resp.StatusCode)
		}
	}
	resp, err := http.Get(e.http.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("page CSP %q", csp)
	}
	resp, err = http.Get(e.http.URL + "/dashboard/assets/nope.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown asset: %d", resp.StatusCode)
	}
}

// BenchmarkState measures the server's time per page update: building and
// encoding /dashboard/state (gzipped, as browsers ask) with 1,000 query
// shapes kept and 50 client sessions.
func BenchmarkState(b *testing.B) {
	e := start(b, testConfig())
	for i := range 50 {
		e.connect(b, fmt.Sprintf("app-%d", i%10))
	}
	for i := range 1000 {
		e.ql.Log(querylog.Record{Time: time.Now(), Database: "app", User: appUser, Application: "bench", Upstream: "primary",
			Query: fmt.Sprintf("SELECT c%d FROM t WHERE id = 1", i), Duration: time.Millisecond, Rows: 1, Tag: "SELECT 1"})
	}
	guardtest.WaitFor(b, "1000 shapes", func() bool { return e.ql.Stats().Len() == 1000 })
	h := e.http.Config.Handler
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, "/dashboard/state?since=9999999999999", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code, w.Body.String())
		}
		b.SetBytes(int64(w.Body.Len()))
	}
}
