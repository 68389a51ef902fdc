package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
)

// Issue 24, findings 6 and 8: what the text hides.

// TestCacheRuleTablesResolved: a rule caching a view names its base table
// as an operator would write it (schema-qualified, in capitals); a write to
// that table makes the view's entries miss.
func TestCacheRuleTablesResolved(t *testing.T) {
	freshBranding(t)
	superExec(t, `CREATE OR REPLACE VIEW cache_branding_view AS SELECT tenant_id, color FROM cache_branding;
		GRANT ALL ON cache_branding_view TO tester`)
	t.Cleanup(func() { superExec(t, "DROP VIEW cache_branding_view") }) // freshBranding drops its table
	const q = "SELECT tenant_id, color FROM cache_branding_view WHERE tenant_id = 1"
	ctx := context.Background()
	for _, name := range []string{"Public.Cache_Branding", `public."cache_branding"`, "CACHE_BRANDING"} {
		t.Run(name, func(t *testing.T) {
			rule := config.CacheRule{Name: "view", Query: q, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20, Tables: []string{name}}
			g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{rule})
			direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
			conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
			for i, color := range []string{"#v1", "#v2"} {
				if got, want := rowsOf(t, conn, q), rowsOf(t, direct, q); got != want {
					t.Fatalf("read %d: pgguard %q, direct %q", i, got, want)
				}
				if _, err := conn.Exec(ctx, "UPDATE cache_branding SET color = $1 WHERE tenant_id = 1", color); err != nil {
					t.Fatal(err)
				}
				if got, want := rowsOf(t, conn, q), rowsOf(t, direct, q); got != want {
					t.Fatalf("after writing %s to the view's table: pgguard %q, direct %q", color, got, want)
				}
			}
		})
	}
}

// TestCacheRefusesCatalogsAndTimes: a rule on a catalog, whose rows change
// with no write pgguard sees (DDL on a direct connection here), and one
// whose text holds a time relative to now, are not cached: each answer is
// a direct connection's.
func TestCacheRefusesCatalogsAndTimes(t *testing.T) {
	freshBranding(t)
	superExec(t, "DROP TABLE IF EXISTS cache_new_table")
	const catalog = "SELECT relname FROM pg_class WHERE relname = 'cache_new_table'"
	const times = "SELECT tenant_id FROM cache_branding WHERE tenant_id = 1 AND 'tomorrow 10:00'::timestamp > '2000-01-01'"
	rules := []config.CacheRule{
		{Name: "catalog", Query: catalog, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20},
		{Name: "times", Query: times, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20},
	}
	g, _ := cacheGuard(t, "transaction", "", rules)
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if got, want := rowsOf(t, conn, catalog), rowsOf(t, direct, catalog); got != want {
		t.Fatalf("pgguard %q, direct %q", got, want)
	}
	superExec(t, "CREATE TABLE cache_new_table (a int)")
	if got, want := rowsOf(t, conn, catalog), rowsOf(t, direct, catalog); got != want {
		t.Fatalf("after CREATE TABLE elsewhere: pgguard %q, direct %q", got, want)
	}
	before := scans(t)
	for range 2 {
		rowsOf(t, conn, times)
	}
	if n := scans(t) - before; n != 2 {
		t.Errorf("a query with 'tomorrow 10:00' ran %d times for 2 reads, want 2 (not cached)", n)
	}
}
