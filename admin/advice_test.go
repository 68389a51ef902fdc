package admin_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/internal/guardtest"
)

// TestAdvice: traffic through pgguard shows in SHOW ADVICE and GET /advice:
// a read run on every page load is a cache candidate with its rule, a
// worker's per-row loop an N+1 loop with its parent query; the two agree.
func TestAdvice(t *testing.T) {
	e := start(t, testConfig())
	setup := e.connect(t, appUser, appPass, "app", "setup")
	mustExec(t, setup, "CREATE TABLE IF NOT EXISTS adv_branding (tenant_id int PRIMARY KEY, color text)")
	mustExec(t, setup, "INSERT INTO adv_branding SELECT g, 'blue' FROM generate_series(1, 4) g ON CONFLICT DO NOTHING")
	web := e.connect(t, appUser, appPass, "app", "web")
	for i := range 24 {
		mustExec(t, web, fmt.Sprintf("SELECT color FROM adv_branding WHERE tenant_id = %d", i%4+1))
		time.Sleep(110 * time.Millisecond) // page loads, apart: no burst
	}
	worker := e.connect(t, appUser, appPass, "app", "worker")
	mustExec(t, worker, "SELECT tenant_id FROM adv_branding ORDER BY tenant_id")
	for id := 1; id <= 4; id++ {
		mustExec(t, worker, fmt.Sprintf("SELECT count(*) FROM pg_class WHERE relpages > %d", id))
		mustExec(t, worker, fmt.Sprintf("SELECT count(*) FROM pg_class WHERE relpages > %d", id+10))
	}
	guardtest.WaitFor(t, "the records in the advisor", func() bool { n, _ := e.adv.Len(); return n >= 35 })

	con := e.console(t)
	r := mustExec(t, con, "SHOW ADVICE")
	kinds := strings.Join(r.col(t, "kind"), ",")
	if !strings.HasPrefix(kinds, "window,cache,n+1") || !strings.HasSuffix(kinds, "forecast") {
		t.Fatalf("SHOW ADVICE kinds %s:\n%v", kinds, r.rows)
	}
	cache := r.row(t, "kind", "cache")
	if !strings.Contains(cache["subject"], "SELECT color FROM adv_branding WHERE tenant_id = $1") ||
		!strings.Contains(cache["change"], "[[cache]]\nname = \"adv_branding\"\nquery = \"SELECT color FROM adv_branding WHERE tenant_id = $1\"\n") {
		t.Errorf("SHOW ADVICE cache row: %v", cache)
	}
	loop := r.row(t, "kind", "n+1")
	if !strings.Contains(loop["subject"], "worker: SELECT count(*) FROM pg_class WHERE relpages > $1") ||
		!strings.Contains(loop["evidence"], "1 loops of 8.0 queries") || !strings.Contains(loop["evidence"], "parent SELECT tenant_id FROM adv_branding ORDER BY tenant_id (4.0 rows)") {
		t.Errorf("SHOW ADVICE n+1 row: %v", loop)
	}

	code, body := e.get(t, "/advice")
	var a advisor.Advice
	if code != http.StatusOK || json.Unmarshal([]byte(body), &a) != nil {
		t.Fatalf("GET /advice: %d %.300s", code, body)
	}
	if len(a.CacheCandidates) != 1 || a.CacheCandidates[0].Calls != 24 || a.CacheCandidates[0].Keys != 4 || a.CacheCandidates[0].TOML != cache["change"] {
		t.Errorf("GET /advice cache candidates: %+v", a.CacheCandidates)
	}
	if len(a.Loops) != 1 || a.Loops[0].Application != "worker" || a.Loops[0].Parent == nil || a.Loops[0].MaxCount != 8 {
		t.Errorf("GET /advice loops: %+v", a.Loops)
	}
}
