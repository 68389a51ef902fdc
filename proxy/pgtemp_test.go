package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pgTempObjects are objects created in pg_temp by name, each followed by
// what a later statement of the same session does with it.
var pgTempObjects = []struct{ create, use string }{
	{"CREATE TYPE pg_temp.drv_mood AS ENUM ('ok', 'sad')", "SELECT 'sad'::pg_temp.drv_mood::text"},
	{"CREATE TYPE pg_temp.drv_pair AS (a int, b int)", "SELECT (ROW(1, 2)::pg_temp.drv_pair).b::text"},
	{"CREATE DOMAIN pg_temp.drv_pos AS int CHECK (VALUE > 0)", "SELECT 7::pg_temp.drv_pos::text"},
	{"CREATE FUNCTION pg_temp.drv_twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2'", "SELECT pg_temp.drv_twice(21)::text"},
	{"CREATE SEQUENCE pg_temp.drv_seq", "SELECT nextval('pg_temp.drv_seq')::text"},
	{"CREATE TABLE pg_temp.drv_tab (m int)", "INSERT INTO pg_temp.drv_tab VALUES (4) RETURNING m::text"},
	{"CREATE VIEW pg_temp.drv_view AS SELECT 'v'::text AS v", "SELECT v FROM pg_temp.drv_view"},
}

// pgTempVisible says which of pgTempObjects a session sees, as a string
// of t and f.
const pgTempVisible = `SELECT concat_ws(',',
 to_regtype('pg_temp.drv_mood') IS NOT NULL, to_regtype('pg_temp.drv_pair') IS NOT NULL,
 to_regtype('pg_temp.drv_pos') IS NOT NULL, to_regprocedure('pg_temp.drv_twice(int)') IS NOT NULL,
 to_regclass('pg_temp.drv_seq') IS NOT NULL, to_regclass('pg_temp.drv_tab') IS NOT NULL,
 to_regclass('pg_temp.drv_view') IS NOT NULL)`

// pgTempTranscript runs the same sequence on two sessions a and b: a
// creates each object in pg_temp by name and uses it, while b, inside a
// transaction (holding a server, in transaction mode), looks for it.
func pgTempTranscript(t *testing.T, a, b *pgx.Conn) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	seen := func(who string, c *pgx.Conn) {
		var s string
		if err := c.QueryRow(ctx, pgTempVisible).Scan(&s); err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		out = append(out, who+" sees "+s)
	}
	for _, o := range pgTempObjects {
		if _, err := a.Exec(ctx, o.create); err != nil {
			t.Fatalf("%s: %v", o.create, err)
		}
		tx, err := b.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen("other", b)
		var got string
		if err := a.QueryRow(ctx, o.use).Scan(&got); err != nil {
			out = append(out, fmt.Sprintf("%s: %s", o.use, pgCode(err)))
		} else {
			out = append(out, o.use+" = "+got)
		}
		seen("creator", a)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		seen("other", b)
	}
	return out
}

// TestPgTempObjectsPin: objects created in pg_temp by name (a type, a
// domain, a function, a sequence, a table, a view) live in the server's
// session, like CREATE TEMP's: in transaction mode their creator keeps its
// server, and another client never sees them, as with direct connections.
func TestPgTempObjectsPin(t *testing.T) {
	ctx := context.Background()
	direct := pgTempTranscript(t,
		connect(t, pg.URL("app"), pgx.QueryExecModeCacheStatement),
		connect(t, pg.URL("app"), pgx.QueryExecModeCacheStatement))

	g := startGuard(t, testConfig("transaction")) // two servers: one for each
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			before := testutil.ToFloat64(g.metrics.ClientsPinned.WithLabelValues("temporary object"))
			a := connect(t, g.url("app"), mode)
			b := connect(t, g.url("app"), mode)
			got := pgTempTranscript(t, a, b)
			if strings.Join(got, "\n") != strings.Join(direct, "\n") {
				t.Fatalf("through pgguard:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(direct, "\n"))
			}
			if n := testutil.ToFloat64(g.metrics.ClientsPinned.WithLabelValues("temporary object")) - before; n != 1 {
				t.Fatalf("pinned for a temporary object %v times, want 1 (the first CREATE TYPE pg_temp...)", n)
			}
			a.Close(ctx)
			b.Close(ctx)
		})
	}
}
