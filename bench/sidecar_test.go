package bench

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestSidecarCost measures what a pooler beside an app takes from it, with
// pgguard's default config (query log to stderr, a pipe) and with the query
// log off, against PgBouncer (PGBOUNCER_BIN picks the binary; Debian's by
// default), interleaved in one run: CPU per transaction (the pooler's
// user+system time over the transactions pgbench completed) and context
// switches per transaction (every thread's, voluntary and not), throughput at
// 50 clients on pools of 10 and as a share of the limit (direct, 10
// clients), single-client latency over direct, resident memory fresh and
// after a 10-client load (and how much of it is anonymous: the rest maps the
// binary's file, shared and reclaimable), and the resident memory each idle
// session adds (slope from 1,000 to 3,000 sessions). Beside them runs the
// floor relay (bench/floorrelay): the cheapest pooled relay, the cost no
// pooler goes under on this kernel.
func TestSidecarCost(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t) // its pgguard has the query log off
	logged := startGuardProc(t, e.pg, guardOpts{queryLogPath: "stderr"})
	floor := startFloorRelay(t, e.pg)
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	targets := []target{
		{"pgbouncer", e.bouncer.URL("bench"), e.bouncer.Pid()},
		{"pgguard default", logged.url("bench"), logged.pid()},
		{"pgguard log off", e.guard.url("bench"), e.guard.pid()},
		{"floor relay", floor.url("bench"), floor.pid()},
	}
	fresh := map[string]memUse{}
	for _, tg := range targets {
		fresh[tg.name] = memOf(t, tg.pid)
	}
	// After a 10-client load.
	for _, tg := range targets {
		run(t, tg.url, "-S", "-n", "-c", "10", "-j", "2", "-T", "3", "-M", "simple")
	}
	time.Sleep(2 * time.Second)
	loaded := map[string]memUse{}
	for _, tg := range targets {
		loaded[tg.name] = memOf(t, tg.pid)
	}

	rs := interleave(t, e.pg.URL("bench"), targets, rounds, secs, true)
	many, limit, single, direct1 := rs.many, rs.limit, rs.single, rs.direct1
	// Last: idle sessions leave memory behind.
	idle := map[string]float64{}
	for _, tg := range targets {
		idle[tg.name] = idleSlope(t, tg.pid, tg.url)
	}
	limitTPS, direct1Lat := median(limit, tps), median(direct1, lat)
	t.Logf("pgbench -S -M simple, transaction pools of 10, %d rounds of %ss, medians (%s):", rounds, secs, e.bouncer.Version())
	t.Logf("  %-16s %11s %11s %9s %8s %15s %18s %18s %10s", "", "CPU/tx (µs)", "switches/tx", "tps c=50", "of limit", "c=1 over direct", "RSS fresh (anon)", "RSS loaded (anon)", "idle KiB")
	for _, tg := range targets {
		f, l := fresh[tg.name], loaded[tg.name]
		t.Logf("  %-16s %11.1f %11.2f %9.0f %8.3f %12.0f µs %7.1f (%4.1f) MB %7.1f (%4.1f) MB %10.2f", tg.name,
			median(many[tg.name], cpuPerTx), median(many[tg.name], switchesPerTx), median(many[tg.name], tps), median(many[tg.name], tps)/limitTPS,
			median(single[tg.name], lat)-direct1Lat, mb(f.rss), mb(f.anon), mb(l.rss), mb(l.anon), idle[tg.name]/1024)
	}
	b := func(name string, f func(result) float64) float64 { return median(many[name], f) }
	t.Logf("  limit (direct, 10 clients): %.0f tps; direct single-client latency %.0f µs", limitTPS, direct1Lat)
	for _, g := range []string{"pgguard default", "pgguard log off"} {
		t.Logf("  %s / pgbouncer: CPU per transaction x%.2f, tps x%.3f", g, b(g, cpuPerTx)/b("pgbouncer", cpuPerTx), b(g, tps)/b("pgbouncer", tps))
	}
	for _, p := range []string{"pgbouncer", "pgguard default", "pgguard log off"} {
		t.Logf("  %s / floor relay: CPU per transaction x%.2f, single-client overhead %.0f µs against %.0f µs", p,
			b(p, cpuPerTx)/b("floor relay", cpuPerTx), median(single[p], lat)-direct1Lat, median(single["floor relay"], lat)-direct1Lat)
	}
	t.Logf("  query log on / off: CPU per transaction x%.3f", b("pgguard default", cpuPerTx)/b("pgguard log off", cpuPerTx))
}

// memUse is a process's resident memory, and the anonymous part of it.
// target is a pooler under measure: its URL and the process whose CPU
// time and context switches count.
type target struct {
	name, url string
	pid       int
}

// interleaved is what interleave measured, per target by name.
type interleaved struct {
	many, single   map[string][]result // -c 50 (with cpu and switches), -c 1
	limit, direct1 []result            // direct at 10 clients (when asked), at 1
}

// interleave runs rounds of pgbench -S -M simple for secs each: per round,
// direct (at 10 clients when limit, and at 1), then for each target 50
// clients, its CPU time and context switches measured, and 1 client.
func interleave(t *testing.T, direct string, targets []target, rounds int, secs string, limit bool) interleaved {
	rs := interleaved{many: map[string][]result{}, single: map[string][]result{}}
	for r := 0; r < rounds; r++ {
		if limit {
			rs.limit = append(rs.limit, run(t, direct, "-S", "-n", "-c", "10", "-j", "2", "-T", secs, "-M", "simple"))
		}
		rs.direct1 = append(rs.direct1, run(t, direct, "-S", "-n", "-c", "1", "-j", "1", "-T", secs, "-M", "simple"))
		for _, tg := range targets {
			before, switches := cpuTime(t, tg.pid), ctxSwitches(tg.pid)
			res := run(t, tg.url, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", "simple")
			res.cpu = cpuTime(t, tg.pid) - before
			res.switches = ctxSwitches(tg.pid) - switches
			if res.failed != 0 {
				t.Errorf("%s: %d failed transactions", tg.name, res.failed)
			}
			rs.many[tg.name] = append(rs.many[tg.name], res)
			rs.single[tg.name] = append(rs.single[tg.name], run(t, tg.url, "-S", "-n", "-c", "1", "-j", "1", "-T", secs, "-M", "simple"))
		}
	}
	return rs
}

// Per-result figures, for median.
func tps(r result) float64 { return r.tps }
func lat(r result) float64 { return r.latencyMS * 1000 }
func cpuPerTx(r result) float64 {
	return float64(r.cpu.Microseconds()) / float64(max(r.transactions, 1))
}
func switchesPerTx(r result) float64 { return float64(r.switches) / float64(max(r.transactions, 1)) }

type memUse struct{ rss, anon int64 }

func memOf(t *testing.T, pid int) memUse {
	return memUse{rss: statusKB(t, pid, "VmRSS") * 1024, anon: statusKB(t, pid, "RssAnon") * 1024}
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// idleSlope returns the resident memory each idle session adds to process
// pid, from 1,000 to 3,000 sessions opened to url.
func idleSlope(t *testing.T, pid int, url string) float64 {
	var conns []*pgconn.PgConn
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	open := func(n int) int64 {
		for len(conns) < n {
			c, err := pgconn.Connect(context.Background(), url)
			if err != nil {
				t.Fatalf("session %d: %v", len(conns), err)
			}
			conns = append(conns, c)
		}
		time.Sleep(5 * time.Second) // let the process settle, as an idle fleet would
		return rss(t, pid)
	}
	low := open(1000)
	high := open(3000)
	return float64(high-low) / 2000
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
