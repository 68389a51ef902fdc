package analyze

import (
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

func TestCacheable(t *testing.T) {
	for sql, reads := range map[string][]string{
		"SELECT * FROM tenant_branding WHERE tenant_id = $1":                                       {"tenant_branding"},
		"SELECT * FROM tenant_branding WHERE tenant_id = 42":                                       {"tenant_branding"},
		"SELECT b.* FROM public.branding b JOIN tenants t ON t.id = b.tenant_id WHERE t.slug = $1": {"branding", "tenants"},
		"WITH x AS (SELECT * FROM a) SELECT * FROM x, (SELECT 1 FROM b) s":                         {"a", "b", "x"},
		"SELECT * FROM a WHERE id IN (SELECT a_id FROM c) UNION SELECT * FROM d":                   {"a", "c", "d"},
		"SELECT current_user, current_database(), to_char(ts, 'YYYY'), lower($1) FROM t":           {"t"},
		"SELECT * FROM t TABLESAMPLE bernoulli(1) REPEATABLE (3)":                                  {"t"},
		"SELECT age(a, b), count(*), string_agg(x, ',') FROM t GROUP BY 1":                         {"t"},
		"SELECT pg_catalog.lower(name) FROM \"Mixed Case\"":                                        {"Mixed Case"},
		"VALUES (1), (2)": nil,
		"TABLE t":         {"t"},
	} {
		info := Analyze(sql)
		if info.Refusal != "" || info.Check(nil) != "" {
			t.Errorf("%s: refused: %s", sql, info.Check(nil))
			continue
		}
		if !slices.Equal(info.Reads, reads) {
			t.Errorf("%s: reads %q, want %q", sql, info.Reads, reads)
		}
		fp, _ := pg_query.FingerprintToUInt64(sql)
		if info.Fingerprint != fp || fp == 0 {
			t.Errorf("%s: fingerprint %x, want %x", sql, info.Fingerprint, fp)
		}
		if !info.Writes.Empty() {
			t.Errorf("%s: writes %+v", sql, info.Writes)
		}
	}
}

func TestRefused(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT now()": "now(): its result depends on the time",
		"SELECT * FROM t WHERE d > 'tomorrow 10:00'":            "'tomorrow 10:00', which PostgreSQL reads as a time relative to now",
		"SELECT * FROM t WHERE d < 'today 23:59:59'::timestamp": "'today 23:59:59'",
		"SELECT * FROM pg_stat_activity":                        "pg_stat_activity, a system catalog or statistics view",
		"SELECT * FROM pg_catalog.pg_class":                     "pg_class, a system catalog",
		"SELECT * FROM information_schema.tables":               "tables, a system catalog",
		"SELECT pg_catalog.now()":                               "now()",
		"SELECT CURRENT_TIMESTAMP":                              "CURRENT_TIMESTAMP",
		"SELECT * FROM t WHERE d > current_date":                "CURRENT_DATE",
		"SELECT localtimestamp(2)":                              "LOCALTIMESTAMP",
		"SELECT * FROM t ORDER BY random()":                     "random(), a volatile function",
		"SELECT nextval('s')":                                   "nextval()",
		"SELECT pg_sleep(1)":                                    "pg_sleep()",
		"SELECT clock_timestamp()":                              "clock_timestamp()",
		"SELECT gen_random_uuid()":                              "gen_random_uuid()",
		"SELECT set_config('a', 'b', false)":                    "set_config()",
		"SELECT age(ts) FROM t":                                 "age(): its result depends on the time",
		"SELECT pg_backend_pid()":                               "pg_backend_pid()",
		"SELECT current_setting('application_name')":            "current_setting()",
		"SELECT pg_stat_get_numscans(1)":                        "pg_stat_get_numscans()",
		"SELECT table_to_xml('t', true, false, '')":             "reads a table named by its argument",
		"SELECT * FROM t FOR UPDATE":                            "locking clause",
		"SELECT * FROM t FOR KEY SHARE":                         "locking clause",
		"SELECT * FROM (SELECT * FROM t FOR SHARE) s":           "locking clause",
		"SELECT 1 INTO x":                                       "SELECT INTO",
		"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d": "data-modifying WITH",
		"UPDATE t SET a = 1":                                    "is an UPDATE, not a SELECT",
		"EXPLAIN SELECT 1":                                      "is an EXPLAIN, not a SELECT",
		"SELECT 1; SELECT 2":                                    "several statements",
		"":                                                      "is empty",
		"  ;  ":                                                 "is empty",
		"SELEC 1":                                               "cannot be parsed",
		"SELECT 1\x00; DROP TABLE t":                            "cannot be parsed",
		"SELECT * FROM t TABLESAMPLE system(1)":                 "TABLESAMPLE without REPEATABLE",
		"SELECT * FROM t WHERE ts > 'now'":                      "the literal 'now'",
		"SELECT * FROM t WHERE d = 'Tomorrow '::date":           "the literal 'Tomorrow '",
		"SELECT * FROM t WHERE d = (SELECT max(x) FROM u WHERE random() < 1)": "random()",
	} {
		info := Analyze(sql)
		if !strings.Contains(info.Refusal, want) {
			t.Errorf("%q: refusal %q, want it to contain %q", sql, info.Refusal, want)
		}
		// A refused SELECT keeps its shape (a rule can say why it is not
		// cached); anything else has none.
		isSelect := (strings.HasPrefix(sql, "SELECT") || strings.HasPrefix(sql, "WITH")) && !strings.Contains(sql, ";") && !strings.Contains(sql, "\x00") && !strings.HasPrefix(sql, "SELEC ")
		if (info.Fingerprint != 0) != isSelect {
			t.Errorf("%q: fingerprint %x", sql, info.Fingerprint)
		}
	}
}

// A user function's volatility is in the catalog, which pgguard never
// queries: the rule must trust it by name.
func TestUserFunctions(t *testing.T) {
	info := Analyze("SELECT my_func(1), uuid_generate_v4(), s.f(x) FROM t")
	if info.Refusal != "" {
		t.Fatalf("refused outright: %s", info.Refusal)
	}
	if want := []string{"my_func", "s.f", "uuid_generate_v4"}; !slices.Equal(info.Functions, want) {
		t.Fatalf("functions %q, want %q", info.Functions, want)
	}
	if r := info.Check(nil); !strings.Contains(r, "my_func()") || !strings.Contains(r, "trusted_functions") {
		t.Errorf("Check(nil) = %q", r)
	}
	for _, trusted := range [][]string{
		{"MY_FUNC", "uuid_generate_v4", "f"},
		{"my_func", "uuid_generate_v4", "s.f"},
	} {
		if r := info.Check(trusted); r != "" {
			t.Errorf("Check(%q) = %q", trusted, r)
		}
	}
	if r := info.Check([]string{"my_func", "uuid_generate_v4", "other.f"}); !strings.Contains(r, "s.f()") {
		t.Errorf("other.f trusted s.f: %q", r)
	}
	// A built-in name in another schema is a user function.
	if info := Analyze("SELECT myschema.lower(x) FROM t"); !slices.Equal(info.Functions, []string{"myschema.lower"}) {
		t.Errorf("myschema.lower: functions %q", info.Functions)
	}
}

func TestWrites(t *testing.T) {
	all := []string{"*"}
	for sql, want := range map[string][]string{
		"INSERT INTO t VALUES (1)": {"t"},
		"INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = 1":       {"t"},
		"UPDATE public.t SET a = u.a FROM u WHERE u.id = t.id":                     {"t"},
		"DELETE FROM t USING u WHERE u.id = t.id":                                  {"t"},
		"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE":             {"t"},
		"WITH x AS (UPDATE a SET v = 1 RETURNING *) INSERT INTO b SELECT * FROM x": {"a", "b"},
		"WITH x AS (DELETE FROM a RETURNING *) SELECT * FROM x":                    {"a"},
		"TRUNCATE a, public.b":                                   {"a", "b"},
		"COPY t FROM STDIN":                                      {"t"},
		"COPY (UPDATE t SET a = 1 RETURNING *) TO STDOUT":        {"t"},
		"EXPLAIN ANALYZE UPDATE t SET a = 1":                     {"t"},
		"INSERT INTO a VALUES (1); UPDATE b SET x = 1; SELECT 1": {"a", "b"},
		"CREATE TABLE n (a int)":                                 {"n"},
		"CREATE TEMP TABLE n AS SELECT * FROM t":                 {"n"},
		"SELECT 1 INTO y":                                        {"y"},
		"CREATE VIEW v AS SELECT * FROM t":                       {"v"},
		"REFRESH MATERIALIZED VIEW mv":                           {"mv"},
		"SELECT * FROM t":                                        nil,
		"SELECT my_func()":                                       nil, // invisible: documented
		"COPY t TO STDOUT":                                       nil,
		"BEGIN; SET search_path = x; COMMIT":                     nil,
		"VACUUM ANALYZE t":                                       nil,
		"LOCK t; NOTIFY c":                                       nil,
		"PREPARE p AS SELECT 1":                                  nil,
		"ALTER TABLE t ADD COLUMN c int":                         all,
		"DROP TABLE t":                                           all,
		"CALL p()":                                               all,
		"DO $$BEGIN NULL; END$$":                                 all,
		"EXECUTE p":                                              all,
		"GRANT SELECT ON t TO r":                                 all,
		"INSERT INTO a VALUES (1); DROP TABLE b":                 all,
		"this is not SQL":                                        all,
	} {
		got := Analyze(sql).Writes
		if slices.Equal(want, all) {
			if !got.All || len(got.Tables) != 0 {
				t.Errorf("%s: writes %+v, want all", sql, got)
			}
			continue
		}
		if got.All || !slices.Equal(got.Tables, want) {
			t.Errorf("%s: writes %+v, want %q", sql, got, want)
		}
	}
}

func TestBuiltins(t *testing.T) {
	b := builtins()
	if len(b) < 2000 {
		t.Fatalf("only %d built-in names (generated from %s)", len(b), builtinsVersion)
	}
	for name, class := range map[string]byte{"lower": 'i', "now": 's', "random": 'v', "to_char": 's', "abs": 'i', "nextval": 'v'} {
		if b[name] != class {
			t.Errorf("%s: class %q, want %q", name, b[name], class)
		}
	}
}

func TestIsTimeLiteral(t *testing.T) {
	for s, want := range map[string]bool{"now": true, " NOW ": true, "today": true, "Yesterday": true, "tomorrow": true,
		"epoch": false, "nowhere": false, "": false, "2024-01-01": false,
		"tomorrow 10:00": true, "today 23:59:59": true, "2024-01-01 10:00": false, "Yesterday allballs": true} {
		if got := IsTimeLiteral([]byte(s)); got != want {
			t.Errorf("IsTimeLiteral(%q) = %v", s, got)
		}
	}
}

// BenchmarkAnalyze is the cost of a statement the verdict cache has not
// seen: once per distinct text (numbers zeroed).
func BenchmarkAnalyze(b *testing.B) {
	for _, q := range []string{
		"SELECT * FROM tenant_branding WHERE tenant_id = $1",
		"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
	} {
		b.Run(strings.Fields(q)[0], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Analyze(q)
			}
		})
	}
}
