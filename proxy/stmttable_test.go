package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

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

// Issue 24, finding 7, in every pool mode: the statement table follows
// what the server accepted. A Parse the server refuses (duplicate name,
// syntax error) changes nothing; SQL PREPARE and DEALLOCATE [ALL] are
// followed; a protocol Bind, Describe or Parse of a name prepared with SQL
// gets what a direct connection gets. The read-only guard, which judges a
// Bind by the statement's text, is the witness: each sequence turns
// read-only on (the direct connection sets default_transaction_read_only)
// and binds. Errors are compared by SQLSTATE (pgguard's 25006 text names
// its setting).
func TestStatementTableFollowsServer(t *testing.T) {
	freshBranding(t)
	const upd = "UPDATE cache_branding SET color = color WHERE tenant_id = 8 RETURNING tenant_id"
	ctx := context.Background()
	type step func(pc *pgconn.PgConn, g *guard) string
	code := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return "error " + pe.Code
		}
		return "error " + err.Error()
	}
	prepare := func(name, sql string) step {
		return func(pc *pgconn.PgConn, _ *guard) string {
			if _, err := pc.Prepare(ctx, name, sql, nil); err != nil {
				return code(err)
			}
			return "prepared"
		}
	}
	exec := func(sql string) step {
		return func(pc *pgconn.PgConn, _ *guard) string {
			res, err := pc.Exec(ctx, sql).ReadAll()
			if err != nil {
				return code(err)
			}
			return string(res[len(res)-1].CommandTag.String())
		}
	}
	bind := func(name string) step {
		return func(pc *pgconn.PgConn, _ *guard) string {
			res := pc.ExecPrepared(ctx, name, nil, nil, nil).Read()
			if res.Err != nil {
				return code(res.Err)
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
	// describe sends Describe of a statement and Sync, and lists the replies.
	describe := func(name string) step {
		return func(pc *pgconn.PgConn, _ *guard) string {
			fe := pc.Frontend()
			fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: name})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				return "error " + err.Error()
			}
			out := ""
			for {
				msg, err := fe.Receive()
				if err != nil {
					return out + " error " + err.Error()
				}
				switch m := msg.(type) {
				case *pgproto3.ParameterDescription:
					out += fmt.Sprintf("t%d ", len(m.ParameterOIDs))
				case *pgproto3.RowDescription:
					out += fmt.Sprintf("T%d ", len(m.Fields))
				case *pgproto3.NoData:
					out += "n "
				case *pgproto3.ErrorResponse:
					out += "E" + m.Code + " "
				case *pgproto3.ReadyForQuery:
					return out + "Z" + string(m.TxStatus)
				}
			}
		}
	}
	readOnly := func(pc *pgconn.PgConn, g *guard) string {
		if g != nil {
			g.SetReadOnly(true, "test")
			return "read-only"
		}
		exec("SET default_transaction_read_only = on")(pc, nil)
		return "read-only"
	}
	for _, mode := range []string{"session", "transaction"} {
		g := startGuard(t, testConfig(mode))
		for _, c := range []struct {
			name  string
			steps []step
		}{
			{"Parse refused as duplicate", []step{prepare("s", "SELECT 1"), prepare("s", upd), bind("s"), readOnly, bind("s"), describe("s")}},
			{"Parse refused as syntax error", []step{prepare("s", "UPDAT cache_branding SET x = 1"), bind("s"), readOnly, bind("s"), describe("s")}},
			{"PREPARE then protocol messages", []step{exec("PREPARE s AS SELECT 7"), prepare("s", "SELECT 8"), bind("s"), describe("s"),
				exec("PREPARE w AS " + upd), readOnly, bind("w"), bind("s")}},
			{"PREPARE refused then Parse", []step{exec("PREPARE s AS SELEC 7"), prepare("s", "SELECT 8"), bind("s"), exec("DEALLOCATE s"), bind("s")}},
			{"DEALLOCATE of a SQL PREPARE", []step{exec("PREPARE s AS " + upd), exec("DEALLOCATE s"), prepare("s", "SELECT 9"), readOnly, bind("s"), describe("s")}},
			{"DEALLOCATE refused", []step{prepare("s", "SELECT 3"), exec("BEGIN"), exec("SELECT 1/0"), exec("DEALLOCATE s"), exec("ROLLBACK"), readOnly, bind("s")}},
			{"DEALLOCATE ALL", []step{prepare("a", "SELECT 1"), exec("PREPARE b AS SELECT 2"), exec("DEALLOCATE ALL"), bind("a"), bind("b"),
				describe("b"), prepare("a", "SELECT 3"), exec("PREPARE b AS SELECT 4"), readOnly, bind("a"), bind("b")}},
		} {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				t.Cleanup(func() { g.SetReadOnly(false, "test") })
				via, direct := connectRaw(t, g.url("app")), connectRaw(t, pg.URL("app"))
				for i, s := range c.steps {
					got, want := s(via, g), s(direct, nil)
					if got != want {
						t.Fatalf("step %d: pgguard answered %q, a direct connection %q", i, got, want)
					}
				}
			})
		}
	}
}

func connectRaw(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	pc, err := pgconn.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}
