package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/proxy"
)

// Issue 24, finding 2, where the text hides the tenant: a PL/pgSQL
// function, a procedure or a DO block calls set_config(..., false), or
// set_config takes computed arguments. In transaction mode with a pool of
// one server, clients A and B take turns on it: B never sees A's tenant,
// and A keeps its own on every transaction (pgguard learns it from the
// server after the unit instead of pinning A, which would leave B
// waiting), with and without a cached query, as on direct connections.
func TestTenantLearned(t *testing.T) {
	freshTenants(t)
	superExec(t, `CREATE OR REPLACE FUNCTION learn_set_tenant(t text) RETURNS text LANGUAGE plpgsql AS
			$$BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END$$;
		CREATE OR REPLACE PROCEDURE learn_tenant_proc(t text) LANGUAGE plpgsql AS
			$$BEGIN PERFORM set_config('app.tenant', t, false); END$$`)
	ctx := context.Background()
	ways := map[string]func(t testing.TB, conn *pgx.Conn, tenant string){
		"function": func(t testing.TB, conn *pgx.Conn, tenant string) {
			rowsOf(t, conn, "SELECT learn_set_tenant($1)", tenant)
		},
		"function, simple protocol": func(t testing.TB, conn *pgx.Conn, tenant string) {
			rowsOf(t, conn, fmt.Sprintf("SELECT public.learn_set_tenant('%s')", tenant), pgx.QueryExecModeSimpleProtocol)
		},
		"CALL": func(t testing.TB, conn *pgx.Conn, tenant string) {
			if _, err := conn.Exec(ctx, fmt.Sprintf("CALL learn_tenant_proc('%s')", tenant)); err != nil {
				t.Fatal(err)
			}
		},
	}
	for how, set := range setTenant {
		ways[how] = set
	}
	// Each step: who acts, and the tenant it sets ("" reads).
	steps := []struct{ who, set string }{{"A", "a"}, {"A", ""}, {"B", ""}, {"A", ""}, {"B", "b"}, {"B", ""}, {"A", ""}, {"C", ""}, {"A", ""}}
	replay := func(t *testing.T, open func() *pgx.Conn, set func(testing.TB, *pgx.Conn, string)) []string {
		conns := map[string]*pgx.Conn{}
		var out []string
		for _, s := range steps {
			conn := conns[s.who]
			if conn == nil {
				conn = open()
				conns[s.who] = conn
			}
			if s.set != "" {
				set(t, conn, s.set)
				continue
			}
			out = append(out, s.who+": "+rowsOf(t, conn, tenantQuery))
		}
		for _, conn := range conns {
			conn.Close(ctx)
		}
		return out
	}
	rule := config.CacheRule{Name: "tenants", Query: tenantQuery, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20}
	for how, set := range ways {
		want := replay(t, func() *pgx.Conn { return connect(t, pg.URL("app"), pgx.QueryExecModeExec) }, set)
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/cache=%v", how, cached), func(t *testing.T) {
				cfg := testConfig("transaction")
				cfg.Pool.Size, cfg.Pool.MaxOverflow = 1, 0
				cfg.Pool.WaitTimeout = config.D(3 * time.Second) // a pinned A would leave B waiting
				if cached {
					cfg.Cache = []config.CacheRule{rule}
				}
				rc, err := cache.New(cfg, guardtest.Logger())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { rc.Close() })
				g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Cache = rc })
				got := replay(t, func() *pgx.Conn { return connect(t, g.url("app"), pgx.QueryExecModeExec) }, set)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("read %d: %q through pgguard, %q directly (all: %q)", i, got[i], want[i], got)
					}
				}
			})
		}
	}
}
