package proxy_test

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
)

type roCase struct {
	write bool
	sql   string
}

// readOnlyCases loads the classifier's statement table, shared with readonly/.
func readOnlyCases(t *testing.T) []roCase {
	f, err := os.Open("../readonly/testdata/statements.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []roCase
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, sql, ok := strings.Cut(line, "\t")
		if !ok {
			t.Fatalf("bad line %q", line)
		}
		sql = strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\\`, `\`).Replace(sql)
		out = append(out, roCase{write: kind == "write", sql: sql})
	}
	return out
}

// TestReadOnlySwitch runs the whole statement table through both pool modes
// with the switch on: every write gets 25006, no read does, and the database
// is unchanged afterwards. Then the tricky cases: a write hidden in a
// function (refused by the server layer), a statement prepared before the
// switch, a pipeline, and the switch going off again without reconnecting.
func TestReadOnlySwitch(t *testing.T) {
	ctx := context.Background()
	setup := `DROP TABLE IF EXISTS t, pgbench_accounts, pgbench_history CASCADE; DROP SEQUENCE IF EXISTS s;
		CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'one');
		CREATE TABLE pgbench_accounts (aid int, bid int, abalance int, filler text); INSERT INTO pgbench_accounts VALUES (1, 1, 0, '');
		CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler text);
		CREATE SEQUENCE s;
		CREATE OR REPLACE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'INSERT INTO t VALUES (99, ''sneaky'') RETURNING id';
		GRANT ALL ON t, pgbench_accounts, pgbench_history, s TO tester; GRANT CREATE ON SCHEMA public TO tester`
	if err := pg.Exec(ctx, setup); err != nil {
		t.Fatal(err)
	}
	fingerprint := func() string {
		var rows, hist, seq, rels int64
		rows, _ = pg.QueryInt(ctx, "SELECT count(*) FROM t")
		hist, _ = pg.QueryInt(ctx, "SELECT count(*) FROM pgbench_history")
		seq, _ = pg.QueryInt(ctx, "SELECT last_value FROM s")
		rels, _ = pg.QueryInt(ctx, "SELECT count(*) FROM pg_class")
		return strings.Join([]string{itoa(rows), itoa(hist), itoa(seq), itoa(rels)}, "/")
	}
	before := fingerprint()
	cases := readOnlyCases(t)
	if len(cases) < 80 {
		t.Fatalf("only %d statements in the table", len(cases))
	}
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, mode := range []string{"transaction", "session"} {
			t.Run(mode, func(t *testing.T) {
				g := startGuardOver(t, n, testConfig(mode))
				prepared := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
				if _, err := prepared.Exec(ctx, "INSERT INTO t VALUES ($1, 'before')", 2); err != nil {
					t.Fatal(err)
				}
				pg.Exec(ctx, "DELETE FROM t WHERE v = 'before'")
				g.SetReadOnly(true, "test")

				for _, execMode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
					conn := connect(t, g.url("app"), execMode)
					for _, c := range cases {
						_, err := conn.Exec(ctx, c.sql)
						got := pgCode(err) == "25006"
						if got != c.write {
							t.Errorf("%v %q: err %v; want 25006=%v", execMode, c.sql, err, c.write)
						}
						conn.Exec(ctx, "ROLLBACK")
					}
					conn.Close(ctx) // LISTEN in the table pinned it to a server
				}
				conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
				if _, err := conn.Exec(ctx, "SELECT sneaky()"); pgCode(err) != "25006" {
					t.Errorf("write hidden in a function: %v, want 25006 from the server", err)
				}
				if _, err := prepared.Exec(ctx, "INSERT INTO t VALUES ($1, 'before')", 3); pgCode(err) != "25006" {
					t.Errorf("statement prepared before the switch: %v, want 25006", err)
				}
				// A pipeline: the read before the write is answered, the write refused.
				batch := &pgx.Batch{}
				batch.Queue("SELECT 41 + 1")
				batch.Queue("UPDATE t SET v = 'x'")
				batch.Queue("SELECT 1")
				br := conn.SendBatch(ctx, batch)
				var n int
				if err := br.QueryRow().Scan(&n); err != nil || n != 42 {
					t.Errorf("pipelined read: %d %v", n, err)
				}
				if _, err := br.Exec(); pgCode(err) != "25006" {
					t.Errorf("pipelined write: %v, want 25006", err)
				}
				br.Close()
				// Inside a transaction the refusal aborts it, as PostgreSQL would.
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "DELETE FROM t"); pgCode(err) != "25006" {
					t.Errorf("write in a transaction: %v", err)
				}
				if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
					t.Errorf("after a refused write the transaction should be aborted, got %v", err)
				}
				tx.Rollback(ctx)

				if got := fingerprint(); got != before {
					t.Errorf("database changed under read-only: %s -> %s", before, got)
				}
				// Off again: the same sessions write without reconnecting.
				g.SetReadOnly(false, "test")
				if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (7, 'after')"); err != nil {
					t.Errorf("write after the switch went off: %v", err)
				}
				if _, err := prepared.Exec(ctx, "INSERT INTO t VALUES ($1, 'before')", 4); err != nil {
					t.Errorf("prepared write after the switch went off: %v", err)
				}
				pg.Exec(ctx, "DELETE FROM t WHERE id IN (4, 7)")
			})
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
