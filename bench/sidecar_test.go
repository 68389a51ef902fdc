package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSidecarCost measures what a pooler beside an app takes from it, with
// pgguard's default config (query log to stderr, a pipe) and with the query
// log off, against PgBouncer (PGBOUNCER_BIN picks the binary; Debian's by
// default), interleaved in one run: CPU per transaction (the pooler's
// user+system time over the transactions pgbench completed), throughput at
// 50 clients on pools of 10 and as a share of the limit (direct, 10
// clients), single-client latency over direct, and resident memory fresh and
// after a 10-client load.
func TestSidecarCost(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t) // its pgguard has the query log off
	logged := startGuardProc(t, e.pg, guardOpts{queryLogPath: "stderr"})
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	type target struct {
		name, url string
		pid       int
	}
	targets := []target{
		{"pgbouncer", e.bouncer.URL("bench"), e.bouncer.Pid()},
		{"pgguard default", logged.url("bench"), logged.pid()},
		{"pgguard log off", e.guard.url("bench"), e.guard.pid()},
	}
	fresh := map[string]int64{}
	for _, tg := range targets {
		fresh[tg.name] = rss(t, tg.pid)
	}
	// After a 10-client load.
	for _, tg := range targets {
		run(t, tg.url, "-S", "-n", "-c", "10", "-j", "2", "-T", "3", "-M", "simple")
	}
	time.Sleep(2 * time.Second)
	loaded := map[string]int64{}
	for _, tg := range targets {
		loaded[tg.name] = rss(t, tg.pid)
	}

	many, limit, single, direct1 := map[string][]result{}, []result{}, map[string][]result{}, []result{}
	for r := 0; r < rounds; r++ {
		limit = append(limit, run(t, e.pg.URL("bench"), "-S", "-n", "-c", "10", "-j", "2", "-T", secs, "-M", "simple"))
		direct1 = append(direct1, run(t, e.pg.URL("bench"), "-S", "-n", "-c", "1", "-j", "1", "-T", secs, "-M", "simple"))
		for _, tg := range targets {
			before := cpuTime(t, tg.pid)
			res := run(t, tg.url, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", "simple")
			res.cpu = cpuTime(t, tg.pid) - before
			if res.failed != 0 {
				t.Errorf("%s: %d failed transactions", tg.name, res.failed)
			}
			many[tg.name] = append(many[tg.name], res)
			single[tg.name] = append(single[tg.name], run(t, tg.url, "-S", "-n", "-c", "1", "-j", "1", "-T", secs, "-M", "simple"))
		}
	}
	tps := func(r result) float64 { return r.tps }
	lat := func(r result) float64 { return r.latencyMS * 1000 }
	cpuPerTx := func(r result) float64 { return float64(r.cpu.Microseconds()) / float64(max(r.transactions, 1)) }
	limitTPS, direct1Lat := median(limit, tps), median(direct1, lat)
	t.Logf("pgbench -S -M simple, transaction pools of 10, %d rounds of %ss, medians (PGBOUNCER_BIN=%s):", rounds, secs, os.Getenv("PGBOUNCER_BIN"))
	t.Logf("  %-16s %12s %10s %10s %14s %12s %12s", "", "CPU/tx (µs)", "tps c=50", "of limit", "c=1 over direct", "RSS fresh", "RSS loaded")
	for _, tg := range targets {
		t.Logf("  %-16s %12.1f %10.0f %10.3f %12.0f µs %10.1f MB %10.1f MB", tg.name,
			median(many[tg.name], cpuPerTx), median(many[tg.name], tps), median(many[tg.name], tps)/limitTPS,
			median(single[tg.name], lat)-direct1Lat, float64(fresh[tg.name])/1e6, float64(loaded[tg.name])/1e6)
	}
	b := func(name string, f func(result) float64) float64 { return median(many[name], f) }
	t.Logf("  limit (direct, 10 clients): %.0f tps; direct single-client latency %.0f µs", limitTPS, direct1Lat)
	for _, g := range []string{"pgguard default", "pgguard log off"} {
		t.Logf("  %s / pgbouncer: CPU per transaction x%.2f, tps x%.3f", g, b(g, cpuPerTx)/b("pgbouncer", cpuPerTx), b(g, tps)/b("pgbouncer", tps))
	}
	t.Logf("  query log on / off: CPU per transaction x%.3f", b("pgguard default", cpuPerTx)/b("pgguard log off", cpuPerTx))
}

// cpuTime returns a process's user+system CPU time from /proc/PID/stat.
func cpuTime(t *testing.T, pid int) time.Duration {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (in parentheses, which may hold spaces).
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64) // field 14 of the whole line
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz
}
