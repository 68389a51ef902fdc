package drivers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
)

// The result cache with real drivers. PostgreSQL counts what it executes:
// the table has no index, so each execution of the cached query is one
// sequential scan in pg_stat_user_tables.

const cacheDrvQuery = "SELECT * FROM cache_drv WHERE id = $1"

// freshCacheTable fills cache_drv with types whose text and binary forms
// drivers decode differently: numeric, timestamptz, json, arrays, bytea, NULL.
func freshCacheTable(t testing.TB) {
	t.Helper()
	freshTable(t, "cache_drv", "id int, name text, price numeric(10,2), at timestamptz, doc jsonb, tags text[], blob bytea, nothing text")
	setup(t, `INSERT INTO cache_drv VALUES
		(1, 'acme ✓', 12.50, '2026-12-01 10:00:00+00', '{"color": "#fff", "n": [1, 2]}', '{a,"b c"}', '\x00ff10', NULL),
		(2, 'globex''s', -3.00, '1999-12-31 23:59:59.123456+00', '[]', '{}', '', 'x')`)
}

// cacheDrvScans returns how often cache_drv was read, with every other
// client backend ended so that its statistics land.
func cacheDrvScans(t testing.TB) int64 {
	t.Helper()
	n, err := pg.SeqScans(context.Background(), "cache_drv")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCacheDrivers runs the cached query 1,000 times per id with psql,
// psycopg2, psycopg 3, asyncpg and node-postgres, directly and through
// pgguard with a [[cache]] rule for it: every driver decodes the same
// values from hits as from the server, and PostgreSQL executes the query
// once per id; asyncpg also executes its first query on each connection,
// which it sends in one write with the Parse that prepares it (pgguard
// answers from the cache only what it can answer without a server).
func TestCacheDrivers(t *testing.T) {
	freshCacheTable(t)
	const n = 1000
	node, nodeErr := exec.LookPath("node")
	if nodeErr == nil {
		_, nodeErr = os.Stat("node/node_modules/pg/package.json")
	}
	psql, psqlErr := exec.LookPath("psql")
	script := filepath.Join(t.TempDir(), "queries.sql")
	if err := os.WriteFile(script, []byte(strings.Repeat("SELECT * FROM cache_drv WHERE id = 1;\nSELECT * FROM cache_drv WHERE id = 2;\n", n)), 0o644); err != nil {
		t.Fatal(err)
	}
	type driver struct {
		name      string
		max       int64 // executions through the cache, of 4n queries
		available error
		run       func(t *testing.T, url string) string
	}
	py := func(module string) func(t *testing.T, url string) string {
		return func(t *testing.T, url string) string {
			out, err := runTool(t, 120*time.Second, "py", debianPython, "cache_clients.py", module, url, fmt.Sprint(n))
			if err != nil {
				t.Fatalf("%s: %v\n%s", module, err, out)
			}
			return out
		}
	}
	pyAvailable := func(module string) error {
		_, err := exec.Command(debianPython, "-c", "import "+module).CombinedOutput()
		return err
	}
	drivers := []driver{
		{"psql", 2, psqlErr, func(t *testing.T, url string) string {
			out, err := runTool(t, 120*time.Second, ".", psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", script, url)
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, out)
			}
			return uniqueLines(out)
		}},
		{"psycopg2", 2, pyAvailable("psycopg2"), py("psycopg2")},
		{"psycopg", 2, pyAvailable("psycopg"), py("psycopg")},
		{"asyncpg", 4, pyAvailable("asyncpg"), py("asyncpg")},
		{"node-postgres", 2, nodeErr, func(t *testing.T, url string) string {
			out, err := runTool(t, 120*time.Second, "node", node, "cache.js", url, fmt.Sprint(n))
			if err != nil {
				t.Fatalf("node: %v\n%s", err, out)
			}
			return out
		}},
	}
	guardtest.EachNet(t, func(t *testing.T, nw guardtest.Net) {
		cfg := txConfig()
		cfg.Cache = []config.CacheRule{{Name: "drv", Query: cacheDrvQuery, TTL: config.D(time.Hour), MaxEntryBytes: 1 << 20}}
		g := startGuardOver(t, nw, cfg)
		for _, d := range drivers {
			t.Run(d.name, func(t *testing.T) {
				requireTool(t, d.name, d.available)
				before := cacheDrvScans(t)
				want := d.run(t, pg.URL("app"))
				mid := cacheDrvScans(t)
				got := d.run(t, g.url())
				executed := cacheDrvScans(t) - mid
				if mid-before < 2*n {
					t.Fatalf("direct: %d executions for %d queries: the count does not work", mid-before, 4*n)
				}
				if strings.Contains(got, "CHANGED") || strings.Contains(want, "CHANGED") || got != want {
					t.Errorf("answers through the cache differ from a direct connection's\nthrough pgguard:\n%s\ndirect:\n%s", got, want)
				}
				if !strings.Contains(want, "acme") || !strings.Contains(want, "globex") {
					t.Errorf("answers lack the rows: %s", want)
				}
				if executed > d.max {
					t.Errorf("%d executions through pgguard for %d queries (want at most %d)", executed, 4*n, d.max)
				}
				t.Logf("%s: %d queries, %d executions direct, %d through the cache", d.name, 4*n, mid-before, executed)
			})
		}
		setup(t, "TRUNCATE cache_drv") // the next network's drivers start with empty entries...
		freshCacheTable(t)             // ... through a write pgguard did not see: the ttl bounds those
		g.Cache.Reset(context.Background())
	})
}

// uniqueLines keeps the first of repeated lines, in order.
func uniqueLines(s string) string {
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
