package readonly

import (
	"fmt"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func TestReasons(t *testing.T) {
	for sql, want := range map[string]string{
		"INSERT INTO t VALUES (1)":                              "INSERT",
		"WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x": "DELETE",
		"MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE": "MERGE",
		"CREATE TABLE x (id int)":                               "CREATE TABLE",
		"CREATE TEMP TABLE x (id int)":                          "CREATE TEMP TABLE",
		"CREATE TABLE x AS SELECT 1":                            "CREATE TABLE AS",
		"SELECT 1 INTO x":                                       "SELECT INTO",
		"CREATE MATERIALIZED VIEW m AS SELECT 1":                "CREATE MATERIALIZED VIEW",
		"CREATE ROLE r":                                         "CREATE ROLE",
		"CREATE INDEX ON t (id)":                                "CREATE INDEX",
		"CREATE DATABASE d":                                     "CREATE DATABASE",
		"ALTER TABLE t ADD COLUMN c int":                        "ALTER TABLE",
		"ALTER MATERIALIZED VIEW m RENAME TO n":                 "ALTER MATERIALIZED VIEW ... RENAME",
		"DROP VIEW v":                                           "DROP VIEW",
		"TRUNCATE t":                                            "TRUNCATE",
		"COMMENT ON TABLE t IS 'x'":                             "COMMENT",
		"GRANT SELECT ON t TO PUBLIC":                           "GRANT",
		"REVOKE SELECT ON t FROM PUBLIC":                        "REVOKE",
		"VACUUM t":                                              "VACUUM",
		"ANALYZE t":                                             "ANALYZE",
		"REINDEX TABLE t":                                       "REINDEX",
		"CLUSTER t":                                             "CLUSTER",
		"COPY t FROM STDIN":                                     "COPY ... FROM",
		"CALL p()":                                              "CALL",
		"DO $$BEGIN END$$":                                      "DO",
		"SELECT * FROM t FOR UPDATE":                            "SELECT ... FOR UPDATE",
		"SELECT * FROM t FOR NO KEY UPDATE":                     "SELECT ... FOR NO KEY UPDATE",
		"SELECT * FROM t FOR SHARE":                             "SELECT ... FOR SHARE",
		"SELECT * FROM t FOR KEY SHARE":                         "SELECT ... FOR KEY SHARE",
		"EXPLAIN ANALYZE DELETE FROM t":                         "EXPLAIN ANALYZE DELETE",
		"BEGIN READ WRITE":                                      "BEGIN READ WRITE",
		"START TRANSACTION READ WRITE":                          "START TRANSACTION READ WRITE",
		"SET TRANSACTION READ WRITE":                            "SET TRANSACTION READ WRITE",
		"SET default_transaction_read_only = off":               "SET default_transaction_read_only",
		"RESET transaction_read_only":                           "RESET transaction_read_only",
		"RESET ALL":                                             "RESET ALL",
		"DISCARD ALL":                                           "DISCARD ALL",
		"SELECT set_config('default_transaction_read_only', 'off', false)": "set_config('default_transaction_read_only', ...)",
		"SELECT nextval('s')":                   "nextval()",
		"SELECT setval('s', 1)":                 "setval()",
		"LOCK t":                                "LOCK",
		"NOTIFY c":                              "NOTIFY",
		"PREPARE p AS INSERT INTO t VALUES (1)": "PREPARE ... AS INSERT",
		"EXECUTE p":                             "EXECUTE",
		"REFRESH MATERIALIZED VIEW m":           "REFRESH MATERIALIZED VIEW",
		"IMPORT FOREIGN SCHEMA s FROM SERVER f INTO s": "IMPORT FOREIGN SCHEMA",
		"SECURITY LABEL ON TABLE t IS 'x'":             "SECURITY LABEL",
		"ALTER SYSTEM SET work_mem = '1MB'":            "ALTER SYSTEM",
		"CHECKPOINT":                                   "CHECKPOINT",
		"SELEC 1":                                      reasonUnparseable,
		"SELECT 1\x00; DELETE FROM t":                  reasonUnparseable,
	} {
		if got := classify(sql); !got.Write || got.Reason != want {
			t.Errorf("%q: got %+v, want write %q", sql, got, want)
		}
	}
}

func TestItoa(t *testing.T) {
	for _, i := range []int32{0, 1, -1, 42, -2147483648, 2147483647} {
		if got, want := itoa(i), fmt.Sprint(i); got != want {
			t.Errorf("itoa(%d) = %q", i, got)
		}
	}
}

func TestDeepNesting(t *testing.T) {
	// Far deeper than any real query: must fail closed or answer, not crash.
	for _, depth := range []int{100, 1000, 100000} {
		sql := "SELECT " + strings.Repeat("(", depth) + "1" + strings.Repeat(")", depth)
		_ = classify(sql)
		sql = strings.Repeat("SELECT * FROM (", depth) + "DELETE FROM t" + strings.Repeat(") x", depth)
		if v := classify(sql); !v.Write {
			t.Errorf("depth %d: nested DELETE passed", depth)
		}
	}
}

// BenchmarkWalk is the tree walk's share of a miss.
func BenchmarkWalk(b *testing.B) {
	tree, err := pg_query.Parse("SELECT a.aid, b.bid FROM pgbench_accounts a JOIN pgbench_branches b USING (bid) WHERE a.aid IN (SELECT aid FROM pgbench_history WHERE delta > $1) ORDER BY 1 LIMIT 10")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if v := stmtVerdict(tree.Stmts[0].Stmt); v.Write {
			b.Fatal(v)
		}
	}
}

// refWalk is a slow reference for walk built on protoreflect, which sees
// every populated field whatever the generated Go structs look like.
func refWalk(m protoreflect.Message) bool {
	switch x := m.Interface().(type) {
	case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
		return true
	case *pg_query.SelectStmt:
		if x.GetIntoClause() != nil || len(x.GetLockingClause()) > 0 {
			return true
		}
	case *pg_query.FuncCall:
		if funcReason(x) != "" {
			return true
		}
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind || fd.IsMap():
		case fd.IsList():
			for i := 0; i < val.List().Len() && !found; i++ {
				found = refWalk(val.List().Get(i).Message())
			}
		default:
			found = refWalk(val.Message())
		}
		return !found
	})
	return found
}

// checkWalk compares walk with refWalk on every statement of sql.
func checkWalk(t *testing.T, sql string) {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return
	}
	for _, raw := range tree.GetStmts() {
		if got, want := walk(raw.GetStmt()).Write, refWalk(raw.GetStmt().ProtoReflect()); got != want {
			t.Errorf("%q: walk says write=%v, reference %v", sql, got, want)
		}
	}
}

func TestWalkMatchesReference(t *testing.T) {
	for _, s := range loadStatements(t) {
		checkWalk(t, s.sql)
	}
}

func TestSelfCheck(t *testing.T) {
	if !selfCheck() {
		t.Fatal("self-check failed")
	}
}
