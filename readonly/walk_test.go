package readonly

import (
	"fmt"
	"strings"
	"testing"
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
