package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
)

// Issue 24, finding 7: in session mode a statement name means what the
// server holds under it, whatever pgguard saw go by: a Bind of it runs
// what a direct connection runs.
func TestSessionStatementNames(t *testing.T) {
	freshBranding(t)
	const sel = "SELECT tenant_id, color FROM cache_branding WHERE tenant_id = 8"
	const upd = "UPDATE cache_branding SET color = '#upd' WHERE tenant_id = 8 RETURNING tenant_id, color"
	rule := config.CacheRule{Name: "sel", Query: sel, TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20}
	g, _ := cacheGuard(t, "session", "", []config.CacheRule{rule})
	ctx := context.Background()
	open := func(url string) *pgconn.PgConn {
		pc, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close(ctx) })
		return pc
	}
	// A step runs on a session and says what it answered.
	type step func(pc *pgconn.PgConn) string
	prepareAs := func(name, sql string) step {
		return func(pc *pgconn.PgConn) string {
			if _, err := pc.Prepare(ctx, name, sql, nil); err != nil {
				var pe *pgconn.PgError
				if errors.As(err, &pe) {
					return "error " + pe.Code
				}
				return "error " + err.Error()
			}
			return "prepared"
		}
	}
	exec := func(sql string) step {
		return func(pc *pgconn.PgConn) string {
			_, err := pc.Exec(ctx, sql).ReadAll()
			if err != nil {
				return "error"
			}
			return "ok"
		}
	}
	prepare := func(sql string) step { return prepareAs("s", sql) }
	bindName := func(name string) step {
		return func(pc *pgconn.PgConn) string {
			res := pc.ExecPrepared(ctx, name, nil, nil, nil).Read()
			if res.Err != nil {
				return "error " + res.Err.Error()
			}
			out := res.CommandTag.String()
			for _, row := range res.Rows {
				for _, v := range row {
					out += "|" + string(v)
				}
			}
			return out
		}
	}
	bind := bindName("s")
	reset := exec("UPDATE cache_branding SET color = '#008' WHERE tenant_id = 8")
	for _, c := range []struct {
		name  string
		steps []step
	}{
		// The second Parse of "s" fails on the server; a later Bind of "s"
		// runs the UPDATE, and a SELECT of the same text reads the table.
		{"Parse the server refused", []step{prepareAs("other", sel), bindName("other"), prepare(upd), bind,
			prepare(sel), bind, bind, prepareAs("third", sel), bindName("third"), reset}},
		{"DEALLOCATE then Parse", []step{prepare(sel), bind, bind, exec("DEALLOCATE s"), prepare(upd), bind, bind, reset}},
	} {
		name, steps := c.name, c.steps
		t.Run(name, func(t *testing.T) {
			// One pass each, compared step by step.
			via, direct := open(g.url("app")), open(pg.URL("app"))
			for i, s := range steps {
				got := s(via)
				want := s(direct)
				if got != want {
					t.Fatalf("step %d: pgguard answered %q, a direct connection %q", i, got, want)
				}
			}
		})
	}
}
