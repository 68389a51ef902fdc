package readonly

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
)

// statement is one row of testdata/statements.tsv.
type statement struct {
	line  int
	write bool
	sql   string
}

// loadStatements reads testdata/statements.tsv, the table shared with the
// proxy's integration test: "read" or "write", a tab, then the SQL with \n,
// \t and \\ escapes. Lines starting with # are comments.
func loadStatements(tb testing.TB) []statement {
	tb.Helper()
	f, err := os.Open("testdata/statements.tsv")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []statement
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		kind, esc, ok := strings.Cut(line, "\t")
		if !ok || (kind != "read" && kind != "write") {
			tb.Fatalf("statements.tsv:%d: want read|write, a tab, then SQL", n)
		}
		sql, err := unescape(esc)
		if err != nil {
			tb.Fatalf("statements.tsv:%d: %v", n, err)
		}
		out = append(out, statement{line: n, write: kind == "write", sql: sql})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// unescape undoes the \n, \t and \\ escapes of statements.tsv.
func unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i++; i == len(s) {
			return "", fmt.Errorf("trailing backslash")
		}
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		default:
			return "", fmt.Errorf("unknown escape \\%c", s[i])
		}
	}
	return b.String(), nil
}

func TestStatements(t *testing.T) {
	stmts := loadStatements(t)
	if len(stmts) < 100 {
		t.Fatalf("only %d statements", len(stmts))
	}
	c := New(1024)
	for _, s := range stmts {
		for pass := 0; pass < 2; pass++ { // second pass hits the cache
			v := c.Classify(s.sql)
			if v.Write != s.write {
				t.Errorf("statements.tsv:%d: %q: Write = %v (%q), want %v", s.line, s.sql, v.Write, v.Reason, s.write)
			}
			if v.Write && v.Reason == "" {
				t.Errorf("statements.tsv:%d: %q: write without a reason", s.line, s.sql)
			}
			if !v.Write && v.Reason != "" {
				t.Errorf("statements.tsv:%d: %q: read with reason %q", s.line, s.sql, v.Reason)
			}
			if vb := c.ClassifyBytes([]byte(s.sql)); vb != v {
				t.Errorf("statements.tsv:%d: ClassifyBytes = %+v, Classify = %+v", s.line, vb, v)
			}
		}
	}
}

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

func TestCheckSetting(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		write       bool
	}{
		{"default_transaction_read_only", "on", false},
		{"default_transaction_read_only", "TRUE", false},
		{"Transaction_Read_Only", "t", false},
		{"default_transaction_read_only", "1", false},
		{"default_transaction_read_only", "ye", false},
		{"default_transaction_read_only", "off", true},
		{"default_transaction_read_only", "", true},
		{"default_transaction_read_only", "o", true},
		{"default_transaction_read_only", " on", true},
		{"standard_conforming_strings", "on", false},
		{"standard_conforming_strings", "off", true},
		{"client_encoding", "UTF8", false},
		{"client_encoding", "Shift_JIS", true},
		{"client_encoding", "win-932", true},
		{"client_encoding", "GB18030", true},
		{"application_name", "anything", false},
	} {
		if got := CheckSetting(tc.name, tc.value); got.Write != tc.write || got.Write == (got.Reason == "") {
			t.Errorf("CheckSetting(%q, %q) = %+v, want write %v", tc.name, tc.value, got, tc.write)
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
