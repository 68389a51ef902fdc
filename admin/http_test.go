package admin_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/querylog"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// contractMetrics are the metric names ../shared/CONTRACT.md fixes, plus the
// query log's and the limiter's that exist without traffic.
var contractMetrics = []string{
	"pgguard_query_duration_seconds",
	"pgguard_client_connections",
	"pgguard_server_connections",
	"pgguard_pool_wait_seconds",
	"pgguard_queries_total",
	"pgguard_upstream_active",
	"pgguard_read_only",
	"pgguard_querylog_dropped_total",
	"pgguard_querylog_shapes_evicted_total",
	"pgguard_budget_awake_seconds_total",
	"pgguard_budget_cu_hours",
	"pgguard_budget_used_ratio",
	"pgguard_budget_exhausted",
}

func TestMetricsHealthReady(t *testing.T) {
	e := start(t, testConfig())
	// Traffic first: labelled metrics appear once a query has run.
	conn := e.connect(t, appUser, appPass, "app", "web")
	mustExec(t, conn, "SELECT 1")

	code, body := e.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	for _, name := range contractMetrics {
		if !strings.Contains(body, "\n"+name) && !strings.HasPrefix(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, want := range []string{`pgguard_client_connections{state="active"}`, `pgguard_upstream_active{database="app",upstream="primary"} 1`, "pgguard_read_only 0", `pgguard_panics_total{side="client"} 0`, `pgguard_panics_total{side="server"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if code, body := e.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := e.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
}

func TestReadyzDraining(t *testing.T) {
	e := start(t, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while drained: %d, want 503", code)
	}
	if code, _ := e.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while drained: %d, want 200", code)
	}
}

func TestStatusJSON(t *testing.T) {
	e := start(t, testConfig())
	conn := e.connect(t, appUser, appPass, "app", "web")
	mustExec(t, conn, "SELECT 1")

	code, body := e.get(t, "/status")
	if code != http.StatusOK {
		t.Fatalf("/status: %d %s", code, body)
	}
	var st struct {
		ReadOnly bool `json:"read_only"`
		Clients  int  `json:"clients"`
		Pools    []struct {
			Database string `json:"database"`
			Upstream string `json:"upstream"`
		} `json:"pools"`
		Extra struct {
			Limiter struct {
				Redis string `json:"redis"`
				Rules []struct {
					Name string `json:"name"`
				} `json:"rules"`
				Budget struct {
					Month string `json:"month"`
				} `json:"budget"`
				Applications []struct {
					Application string `json:"application"`
				} `json:"applications"`
			} `json:"limiter"`
			QueryLog *struct {
				Dropped *uint64 `json:"dropped"`
				Shapes  *int    `json:"shapes"`
				Evicted *uint64 `json:"evicted"`
			} `json:"query_log"`
		} `json:"extra"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	if st.ReadOnly || st.Clients != 1 || len(st.Pools) != 1 || st.Pools[0].Database != "app" || st.Pools[0].Upstream != "primary" {
		t.Errorf("/status: %s", body)
	}
	lim := st.Extra.Limiter
	if lim.Redis != "off" || len(lim.Rules) != 1 || lim.Rules[0].Name != "workers" || lim.Budget.Month == "" {
		t.Errorf("/status limiter section: %s", body)
	}
	if ql := st.Extra.QueryLog; ql == nil || ql.Dropped == nil || ql.Shapes == nil || ql.Evicted == nil {
		t.Errorf("/status query_log section lacks dropped, shapes or evicted: %s", body)
	}
}

func TestReadOnlyEndpoint(t *testing.T) {
	e := start(t, testConfig())
	for _, c := range []struct{ user, pass, why string }{
		{"", "", "no credentials"},
		{adminUser, "wrong", "wrong password"},
		{appUser, appPass, "not in admin.users"},
		{"nobody", "x", "unknown user"},
	} {
		if code, body := e.do(t, http.MethodPost, "/read-only", "on", c.user, c.pass); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", c.why, code, body)
		}
		if e.ReadOnly() {
			t.Fatalf("%s flipped read-only", c.why)
		}
	}

	code, body := e.do(t, http.MethodPost, "/read-only", "on\n", adminUser, adminPass)
	if code != http.StatusOK || !strings.Contains(body, `"read_only":true`) || !e.ReadOnly() {
		t.Fatalf("POST on as admin: %d %s, ReadOnly() = %t", code, body, e.ReadOnly())
	}
	// A write through the proxy now gets 25006.
	conn := e.connect(t, appUser, appPass, "app", "web")
	if _, err := exec(t, conn, "CREATE TABLE ro_probe (id int)"); sqlState(err) != "25006" {
		t.Errorf("write while read-only: %v, want 25006", err)
	}
	if code, body := e.do(t, http.MethodPost, "/read-only", "maybe", adminUser, adminPass); code != http.StatusBadRequest {
		t.Errorf("body maybe: %d %s, want 400", code, body)
	}
	code, body = e.do(t, http.MethodPost, "/read-only", "off", adminUser, adminPass)
	if code != http.StatusOK || !strings.Contains(body, `"read_only":false`) || e.ReadOnly() {
		t.Fatalf("POST off as admin: %d %s, ReadOnly() = %t", code, body, e.ReadOnly())
	}
	if _, body := e.get(t, "/metrics"); !strings.Contains(body, "pgguard_read_only 0") {
		t.Error("pgguard_read_only is not 0 after off")
	}
	if code, _ := e.get(t, "/read-only"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /read-only: %d, want 405", code)
	}
}

// logQuery hands the query log a finished query, as the relay does.
func (e *env) logQuery(q string, d time.Duration) {
	e.ql.Log(querylog.Record{Time: time.Now(), Database: "app", User: appUser, Application: "web", Upstream: "primary",
		Query: q, Duration: d, Rows: 1, Tag: "SELECT 1"})
}

func TestQueriesEndpoint(t *testing.T) {
	e := start(t, testConfig())
	for i := range 3 {
		e.logQuery("SELECT * FROM t WHERE id = 1", time.Duration(i+1)*time.Millisecond)
	}
	e.logQuery("SELECT pg_sleep(0.05)", 50*time.Millisecond)
	guardtest.WaitFor(t, "two query shapes", func() bool { return e.ql.Stats().Len() == 2 })

	code, body := e.get(t, "/queries?sort=calls")
	if code != http.StatusOK {
		t.Fatalf("GET /queries: %d %s", code, body)
	}
	var shapes []querylog.ShapeStats
	if err := json.Unmarshal([]byte(body), &shapes); err != nil {
		t.Fatalf("GET /queries is not a JSON array: %v\n%s", err, body)
	}
	if len(shapes) != 2 || shapes[0].Calls != 3 || shapes[0].Query != "SELECT * FROM t WHERE id = $1" {
		t.Errorf("GET /queries?sort=calls: %s", body)
	}
	if _, body := e.get(t, "/queries?sort=total"); !strings.HasPrefix(body, `[{"fingerprint"`) || !strings.Contains(body[:100], "pg_sleep") {
		t.Errorf("GET /queries?sort=total does not start with the slow shape: %s", body)
	}
	if code, _ := e.get(t, "/queries?sort=bogus"); code != http.StatusBadRequest {
		t.Errorf("sort=bogus: %d, want 400", code)
	}

	// Reading is open; forgetting needs admin credentials.
	for _, m := range []struct{ method, path string }{{http.MethodPost, "/queries/reset"}, {http.MethodDelete, "/queries"}} {
		if code, _ := e.do(t, m.method, m.path, "", "", ""); code != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: %d, want 401", m.method, m.path, code)
		}
		if code, _ := e.do(t, m.method, m.path, "", appUser, appPass); code != http.StatusUnauthorized {
			t.Errorf("%s %s as a non-admin: %d, want 401", m.method, m.path, code)
		}
	}
	if e.ql.Stats().Len() != 2 {
		t.Fatal("an unauthorized reset forgot the shapes")
	}
	if code, body := e.do(t, http.MethodPost, "/queries/reset", "", adminUser, adminPass); code != http.StatusNoContent {
		t.Fatalf("POST /queries/reset as admin: %d %s", code, body)
	}
	if _, body := e.get(t, "/queries"); strings.TrimSpace(body) != "[]" {
		t.Errorf("after reset: %s", body)
	}
	e.logQuery("SELECT 2", time.Millisecond)
	guardtest.WaitFor(t, "one shape", func() bool { return e.ql.Stats().Len() == 1 })
	if code, body := e.do(t, http.MethodDelete, "/queries", "", adminUser, adminPass); code != http.StatusNoContent || e.ql.Stats().Len() != 0 {
		t.Errorf("DELETE /queries as admin: %d %s, %d shapes left", code, body, e.ql.Stats().Len())
	}
	if code, _ := e.do(t, http.MethodPut, "/queries", "", adminUser, adminPass); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT /queries: %d, want 405", code)
	}
}
