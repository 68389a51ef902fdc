package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
)

// Issue 24, findings 2 and 3: one session's state (a tenant set with
// set_config, a temporary table) never shapes another's answers, with or
// without the result cache.

const tenantQuery = "SELECT tenant, secret FROM cache_tenants ORDER BY secret"

// freshTenants (re)creates a table whose row-level security policy shows
// each session the rows of the tenant in its app.tenant setting.
func freshTenants(t testing.TB) {
	t.Helper()
	superExec(t, `DROP TABLE IF EXISTS cache_tenants;
		CREATE TABLE cache_tenants (tenant text, secret text);
		INSERT INTO cache_tenants VALUES ('a', 'a-1'), ('a', 'a-2'), ('b', 'b-1');
		ALTER TABLE cache_tenants ENABLE ROW LEVEL SECURITY;
		CREATE POLICY by_tenant ON cache_tenants USING (tenant = current_setting('app.tenant', true));
		GRANT ALL ON cache_tenants TO tester`)
}

// rowsOf runs sql and returns its rows as text.
func rowsOf(t testing.TB, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return strings.Join(out, "|")
}

// setTenant is each way an application sets its tenant.
var setTenant = map[string]func(t testing.TB, conn *pgx.Conn, tenant string){
	"set_config($1)": func(t testing.TB, conn *pgx.Conn, tenant string) {
		rowsOf(t, conn, "SELECT set_config('app.tenant', $1, false)", tenant)
	},
	"FROM set_config": func(t testing.TB, conn *pgx.Conn, tenant string) {
		rowsOf(t, conn, fmt.Sprintf("SELECT * FROM set_config('app.tenant', '%s', false)", tenant))
	},
	"DO": func(t testing.TB, conn *pgx.Conn, tenant string) {
		rowsOf(t, conn, fmt.Sprintf("DO $$BEGIN PERFORM set_config('app.tenant', '%s', false); END$$", tenant))
	},
}

// TestCacheTenantsApart: tenants a and b read a cached query under
// row-level security, each set the way applications do; each gets what a
// direct connection with its tenant gets, in both pool modes.
func TestCacheTenantsApart(t *testing.T) {
	freshTenants(t)
	ctx := context.Background()
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	want := map[string]string{}
	for _, tenant := range []string{"a", "b"} {
		setTenant["set_config($1)"](t, direct, tenant)
		want[tenant] = rowsOf(t, direct, tenantQuery)
	}
	if want["a"] == want["b"] {
		t.Fatalf("the policy shows both tenants %q", want["a"])
	}
	rule := config.CacheRule{Name: "tenants", Query: tenantQuery, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20}
	for _, mode := range []string{"transaction", "session"} {
		for how, set := range setTenant {
			t.Run(mode+"/"+how, func(t *testing.T) {
				g, _ := cacheGuard(t, mode, "", []config.CacheRule{rule})
				for _, tenant := range []string{"a", "b", "a"} {
					conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
					set(t, conn, tenant)
					for range 3 {
						if got := rowsOf(t, conn, tenantQuery); got != want[tenant] {
							t.Fatalf("tenant %s read %q through pgguard, %q directly", tenant, got, want[tenant])
						}
					}
					conn.Close(ctx)
				}
			})
		}
	}
}

// TestTenantNotHandedOn: in transaction mode without a cache, a client
// whose tenant was set in a way the text hides leaves its server; the next
// client on that server (a pool of one) sees no tenant, as on a direct
// connection.
func TestTenantNotHandedOn(t *testing.T) {
	ctx := context.Background()
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	want := rowsOf(t, direct, "SELECT coalesce(current_setting('app.tenant', true), '')")
	for how, set := range setTenant {
		t.Run(how, func(t *testing.T) {
			cfg := testConfig("transaction")
			cfg.Pool.Size = 1
			g := startGuard(t, cfg)
			a := connect(t, g.url("app"), pgx.QueryExecModeExec)
			set(t, a, "a")
			a.Close(ctx)
			b := connect(t, g.url("app"), pgx.QueryExecModeExec)
			if got := rowsOf(t, b, "SELECT coalesce(current_setting('app.tenant', true), '')"); got != want {
				t.Errorf("the next client on the server sees app.tenant %q; directly %q", got, want)
			}
		})
	}
}

// TestCacheTempTableShadows: a session's temporary table of a cached
// table's name shadows it for that session only: neither sees the other's
// rows, whoever reads first.
func TestCacheTempTableShadows(t *testing.T) {
	superExec(t, `DROP TABLE IF EXISTS cache_shadowed;
		CREATE TABLE cache_shadowed (v text);
		INSERT INTO cache_shadowed VALUES ('shared');
		GRANT ALL ON cache_shadowed TO tester`)
	const q = "SELECT v FROM cache_shadowed"
	const temp = "CREATE TEMP TABLE cache_shadowed (v text); INSERT INTO cache_shadowed VALUES ('temporary')"
	ctx := context.Background()
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeSimpleProtocol)
	wantShared := rowsOf(t, direct, q)
	if _, err := direct.Exec(ctx, temp); err != nil {
		t.Fatal(err)
	}
	wantTemp := rowsOf(t, direct, q)
	rule := config.CacheRule{Name: "shadowed", Query: q, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20}
	for _, mode := range []string{"transaction", "session"} {
		for _, tempFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/temp-first=%v", mode, tempFirst), func(t *testing.T) {
				g, _ := cacheGuard(t, mode, "", []config.CacheRule{rule})
				other := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
				owner := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
				if _, err := owner.Exec(ctx, temp); err != nil {
					t.Fatal(err)
				}
				for range 3 {
					for _, first := range []bool{tempFirst, !tempFirst} {
						conn, want := other, wantShared
						if first {
							conn, want = owner, wantTemp
						}
						if got := rowsOf(t, conn, q); got != want {
							t.Fatalf("read %q through pgguard, %q directly", got, want)
						}
					}
				}
			})
		}
	}
}
