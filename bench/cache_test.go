package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestCacheCost measures the result cache on pgbench's own query, in the
// same run: what a miss costs (pgbench -S over 1,000,000 accounts through a
// rule for its SELECT: almost every query misses and is stored), what rules
// cost queries they do not match, and how fast a hit is answered against
// the primary (one client, one account).
func TestCacheCost(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t)
	const pgbenchSelect = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	rule := func(query string) string {
		return "[[cache]]\nname = \"bench\"\nquery = " + strconv.Quote(query) + "\nttl = \"5m\"\n"
	}
	other := startGuardProc(t, e.pg, guardOpts{extra: rule("SELECT bbalance FROM pgbench_branches WHERE bid = $1")})
	cached := startGuardProc(t, e.pg, guardOpts{extra: rule(pgbenchSelect)})
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	targets := []struct{ name, url string }{
		{"no rules", e.guard.url("bench")},
		{"a rule for another query", other.url("bench")},
		{"a rule for this query (misses)", cached.url("bench")},
	}
	tps := func(r result) float64 { return r.tps }
	lat := func(r result) float64 { return r.latencyMS }
	for _, mode := range []string{"simple", "prepared"} {
		res := map[string][]result{}
		for range rounds {
			for _, tg := range targets {
				out := run(t, tg.url, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", mode)
				if out.failed != 0 {
					t.Errorf("%s: %d failed transactions", tg.name, out.failed)
				}
				res[tg.name] = append(res[tg.name], out)
			}
		}
		base := median(res["no rules"], tps)
		t.Logf("pgbench -S -c 50 -M %s (1,000,000 accounts), median of %d:", mode, rounds)
		for _, tg := range targets {
			m := median(res[tg.name], tps)
			t.Logf("  %-32s %8.1f tps  (x%.3f of no rules)", tg.name, m, m/base)
		}
	}

	// One client asking for one account: the primary (direct, and through
	// pgguard without a rule) against the cache's hits.
	script := filepath.Join(t.TempDir(), "one.sql")
	os.WriteFile(script, []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\n"), 0o644)
	one := []struct{ name, url string }{
		{"direct", e.pg.URL("bench")},
		{"pgguard, no rule", e.guard.url("bench")},
		{"pgguard, cache hits", cached.url("bench")},
	}
	for _, mode := range []string{"simple", "prepared"} {
		res := map[string][]result{}
		for range rounds {
			for _, tg := range one {
				res[tg.name] = append(res[tg.name], run(t, tg.url, "-n", "-c", "1", "-T", secs, "-M", mode, "-f", script))
			}
		}
		t.Logf("one client, one account, -M %s, median latency of %d:", mode, rounds)
		base := median(res["pgguard, no rule"], lat)
		for _, tg := range one {
			m := median(res[tg.name], lat)
			t.Logf("  %-22s %7.3f ms  (x%.2f of pgguard without a rule)", tg.name, m, m/base)
		}
	}
}
