package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBaselineSideBySide measures a change to the relay against the binary
// before it: pgbench -S through PgBouncer, a baseline pgguard
// (PGGUARD_BENCH_BASE, the path of a binary built from an earlier commit)
// and the pgguard built from this tree, interleaved round by round, the
// query log off. It reports CPU per transaction, context switches per
// transaction and throughput at 50 clients on pools of 10, and
// single-client latency, with each figure's ratio to the baseline's.
func TestBaselineSideBySide(t *testing.T) {
	skipUnlessBench(t)
	base := os.Getenv("PGGUARD_BENCH_BASE")
	if base == "" {
		t.Skip("set PGGUARD_BENCH_BASE to a pgguard binary to compare this tree's with")
	}
	e := setup(t)
	old := startGuardProc(t, e.pg, guardOpts{bin: base})
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	targets := []target{
		{"pgbouncer", e.bouncer.URL("bench"), e.bouncer.Pid()},
		{"pgguard base", old.url("bench"), old.pid()},
		{"pgguard tree", e.guard.url("bench"), e.guard.pid()},
	}
	for _, tg := range targets { // warm up: every pool full
		run(t, tg.url, "-S", "-n", "-c", "10", "-j", "2", "-T", "2", "-M", "simple")
	}
	rs := interleave(t, e.pg.URL("bench"), targets, rounds, secs, false)
	many, single := rs.many, rs.single
	d1 := median(rs.direct1, lat)
	t.Logf("pgbench -S -M simple, transaction pools of 10, %d rounds of %ss, medians:", rounds, secs)
	t.Logf("  %-13s %11s %11s %9s %15s", "", "CPU/tx (µs)", "switches/tx", "tps c=50", "c=1 over direct")
	for _, tg := range targets {
		t.Logf("  %-13s %11.1f %11.2f %9.0f %12.0f µs", tg.name, median(many[tg.name], cpuPerTx), median(many[tg.name], switchesPerTx),
			median(many[tg.name], tps), median(single[tg.name], lat)-d1)
	}
	ratio := func(name string, m map[string][]result, f func(result) float64) float64 {
		return median(m[name], f) / median(m["pgguard base"], f)
	}
	for _, name := range []string{"pgguard tree", "pgbouncer"} {
		t.Logf("  %s / pgguard base: CPU per transaction x%.3f, switches x%.3f, tps x%.3f, c=1 latency x%.3f", name,
			ratio(name, many, cpuPerTx), ratio(name, many, switchesPerTx), ratio(name, many, tps), ratio(name, single, lat))
	}
	t.Logf("  direct single-client latency %.0f µs", d1)
}

// ctxSwitches is the context switches of every thread of process pid,
// voluntary and not (the process's own status counts its first thread only).
func ctxSwitches(pid int) int64 {
	paths, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "status"))
	var n int64
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 && strings.HasSuffix(f[0], "ctxt_switches:") {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				n += v
			}
		}
	}
	return n
}
