// Package bench measures pgguard against a direct connection and PgBouncer on
// the same machine in the same run, with pgbench. It is not part of the unit
// tests: run it with `make bench` (PGGUARD_BENCH=1). Results are ratios;
// absolute numbers on a shared 2-core machine mean little.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/internal/localpg"
)

func skipUnlessBench(t *testing.T) {
	if os.Getenv("PGGUARD_BENCH") == "" {
		t.Skip("set PGGUARD_BENCH=1 (make bench) to run the pgbench comparison")
	}
	if err := localpg.Available(); err != nil {
		t.Skip(err)
	}
}

// env is the shared setup: a PostgreSQL cluster initialised for pgbench,
// PgBouncer and pgguard in front of it, both in transaction mode with 10
// server connections.
type env struct {
	pg      *localpg.Cluster
	bouncer *localpg.PgBouncer
	guard   *guardProc
}

func setup(t *testing.T) *env {
	pg, err := localpg.Start(localpg.Options{User: "bench", Password: "bench", Database: "bench", MaxConnections: 200})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	pgbench(t, "-i", "-q", "-s", "10", pg.URL("bench"))
	bouncer, err := localpg.StartPgBouncer(localpg.PgBouncerOptions{Cluster: pg, Database: "bench", PoolMode: "transaction", PoolSize: 10, MaxClientConn: 20000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bouncer.Stop() })
	g := startGuardProc(t, pg, guardOpts{})
	return &env{pg: pg, bouncer: bouncer, guard: g}
}

// guardProc is pgguard running as its own process, built from this tree.
type guardProc struct {
	cmd  *exec.Cmd
	addr string
}

// pid is the process to measure.
func (g *guardProc) pid() int { return g.cmd.Process.Pid }

func (g *guardProc) url(db string) string {
	return fmt.Sprintf("postgres://bench:bench@%s/%s?sslmode=disable", g.addr, db)
}

// guardOpts vary the pgguard under test.
type guardOpts struct {
	readOnly     bool
	queryLogPath string // "" is off
	extra        string // more TOML, appended ([[cache]] rules, say)
	bin          string // a pgguard binary to run instead of this tree's
}

func startGuardProc(t *testing.T, pg *localpg.Cluster, o guardOpts) *guardProc {
	dir := t.TempDir()
	bin := o.bin
	if bin == "" {
		bin = filepath.Join(dir, "pgguard")
		// Built as `make build` builds the binary users run (static), so that
		// its resident memory is what ships.
		build := exec.Command("make", "-C", "..", "build", "BIN="+bin)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build pgguard: %v\n%s", err, out)
		}
	}
	port := freePort(t)
	cfg := fmt.Sprintf(`listen = "127.0.0.1:%d"
http_listen = ""
read_only = %v
[databases.bench]
primary = %q
[[users]]
name = "bench"
password = "bench"
[pool]
mode = "transaction"
size = 10
max_overflow = 0
max_client_conn = 20000
[querylog]
path = %q
%s
`, port, o.readOnly, pg.URL("bench"), o.queryLogPath, o.extra)
	path := filepath.Join(dir, "pgguard.toml")
	os.WriteFile(path, []byte(cfg), 0o600)
	cmd := exec.Command(bin, "-config", path)
	cmd.Stderr = os.Stderr
	if o.queryLogPath == "stderr" {
		// As on a Fly machine: stderr is a pipe a log shipper drains.
		cmd.Stderr = nil
		r, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, r)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	g := &guardProc{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := pgconn.Connect(context.Background(), g.url("bench"))
		if err == nil {
			c.Close(context.Background())
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgguard did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := strings.Cut(ln.Addr().String(), ":")
	n, _ := strconv.Atoi(p)
	return n
}

var (
	tpsRe     = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	txRe      = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	latRe     = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	failedRe  = regexp.MustCompile(`number of failed transactions: (\d+)`)
	pgbenchMu sync.Mutex
)

type result struct {
	tps, latencyMS float64
	failed         int
	transactions   int
	cpu            time.Duration // the pooler's user+system time during the run
	switches       int64         // ... and its threads' context switches (ctxSwitches)
}

func pgbench(t *testing.T, args ...string) string {
	cmd := exec.Command(pgbenchBin(), args...)
	cmd.Env = append(os.Environ(), "PGPASSWORD=bench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func pgbenchBin() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	return filepath.Join(localpg.BinDir(), "pgbench")
}

func run(t *testing.T, url string, args ...string) result {
	pgbenchMu.Lock()
	defer pgbenchMu.Unlock()
	out := pgbench(t, append(args, url)...)
	var r result
	if m := tpsRe.FindStringSubmatch(out); m != nil {
		r.tps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := latRe.FindStringSubmatch(out); m != nil {
		r.latencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := failedRe.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.Atoi(m[1])
	}
	if m := txRe.FindStringSubmatch(out); m != nil {
		r.transactions, _ = strconv.Atoi(m[1])
	}
	if r.tps == 0 {
		t.Fatalf("no tps in pgbench output:\n%s", out)
	}
	return r
}

// TestPgbenchSideBySide runs pgbench -S against direct, PgBouncer and pgguard,
// interleaved over several rounds, and reports medians and ratios.
func TestPgbenchSideBySide(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t)
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	targets := []struct{ name, url string }{
		{"direct", e.pg.URL("bench")},
		{"pgbouncer", e.bouncer.URL("bench")},
		{"pgguard", e.guard.url("bench")},
	}
	type series map[string][]result
	runSeries := func(only []string, args ...string) series {
		s := series{}
		for r := 0; r < rounds; r++ {
			for _, tg := range targets {
				if only != nil && !slices.Contains(only, tg.name) {
					continue
				}
				var maxB atomic.Int64
				stop := sampleBackends(e.pg, &maxB)
				res := run(t, tg.url, args...)
				stop()
				if tg.name == "pgguard" && maxB.Load() > 10 {
					t.Errorf("pgguard held %d backends, pool cap is 10", maxB.Load())
				}
				if res.failed != 0 {
					t.Errorf("%s: %d failed transactions", tg.name, res.failed)
				}
				s[tg.name] = append(s[tg.name], res)
			}
		}
		return s
	}
	report := func(title string, s series, metric func(result) float64, unit string) {
		t.Logf("%s", title)
		direct := median(s["direct"], metric)
		for _, tg := range targets {
			if len(s[tg.name]) > 0 {
				m := median(s[tg.name], metric)
				t.Logf("  %-10s %10.1f %s  (x%.3f of direct)", tg.name, m, unit, m/direct)
			}
		}
		if len(s["pgbouncer"]) > 0 {
			t.Logf("  pgguard / pgbouncer = %.3f", median(s["pgguard"], metric)/median(s["pgbouncer"], metric))
		}
	}

	// PGGUARD_BENCH_SERIES picks some of: simple, extended, prepared, single.
	want := func(name string) bool {
		v := os.Getenv("PGGUARD_BENCH_SERIES")
		return v == "" || slices.Contains(strings.Split(v, ","), name)
	}
	var simple series
	if want("simple") || want("prepared") {
		simple = runSeries(nil, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", "simple")
		report("pgbench -S -c 50 -j 2 -M simple (transaction pool of 10):", simple, tps, "tps")
	}
	if want("extended") {
		s := runSeries(nil, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", "extended")
		report("pgbench -S -c 50 -j 2 -M extended:", s, tps, "tps")
	}
	if want("prepared") {
		// PgBouncer before 1.21 cannot run named statements in transaction mode.
		s := runSeries([]string{"direct", "pgguard"}, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", "prepared")
		report("pgbench -S -c 50 -j 2 -M prepared:", s, tps, "tps")
		t.Logf("  through pgguard, -M prepared / -M simple = %.3f (direct: %.3f)",
			median(s["pgguard"], tps)/median(simple["pgguard"], tps), median(s["direct"], tps)/median(simple["direct"], tps))
	}
	if want("single") {
		s := runSeries(nil, "-S", "-n", "-c", "1", "-j", "1", "-T", secs, "-M", "simple")
		report("pgbench -S -c 1 (single client latency):", s, lat, "µs avg latency")
	}
}

func sampleBackends(pg *localpg.Cluster, max *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
				n, err := pg.QueryInt(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bench' AND application_name <> 'pgbench'")
				if err == nil && n > max.Load() {
					max.Store(n)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	for i := range v {
		for j := i + 1; j < len(v); j++ {
			if v[j] < v[i] {
				v[i], v[j] = v[j], v[i]
			}
		}
	}
	return v[len(v)/2]
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestIdleClientMemory opens idle sessions to a pgguard process and to
// PgBouncer and reports the resident memory each adds (slope from 1,000 to
// 3,000 sessions).
func TestIdleClientMemory(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t)
	perGuard := idleSlope(t, e.guard.pid(), e.guard.url("bench"))
	perBouncer := idleSlope(t, e.bouncer.Pid(), e.bouncer.URL("bench"))
	t.Logf("idle client sessions, 1,000 -> 3,000:")
	t.Logf("  pgguard   %7.2f KiB RSS per idle session", perGuard/1024)
	t.Logf("  pgbouncer %7.2f KiB RSS per idle session", perBouncer/1024)
}

func rss(t *testing.T, pid int) int64 { return statusKB(t, pid, "VmRSS") * 1024 }

// statusKB reads a kB field of /proc/PID/status.
func statusKB(t *testing.T, pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), field+":") {
			kb, _ := strconv.ParseInt(strings.Fields(sc.Text())[1], 10, 64)
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestFeatureCost measures what the query log (to a file) and the read-only
// switch cost: pgbench -S through three pgguard processes (plain, query log
// on, read-only on), interleaved in the same run.
func TestFeatureCost(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t)
	logged := startGuardProc(t, e.pg, guardOpts{queryLogPath: filepath.Join(t.TempDir(), "queries.log")})
	readOnly := startGuardProc(t, e.pg, guardOpts{readOnly: true})
	rounds := envInt("PGGUARD_BENCH_ROUNDS", 3)
	secs := strconv.Itoa(envInt("PGGUARD_BENCH_SECONDS", 10))
	targets := []struct{ name, url string }{
		{"plain", e.guard.url("bench")},
		{"query log to a file", logged.url("bench")},
		{"read-only on", readOnly.url("bench")},
	}
	for _, mode := range []string{"simple", "prepared"} {
		res := map[string][]result{}
		for r := 0; r < rounds; r++ {
			for _, tg := range targets {
				out := run(t, tg.url, "-S", "-n", "-c", "50", "-j", "2", "-T", secs, "-M", mode)
				if out.failed != 0 {
					t.Errorf("%s: %d failed transactions", tg.name, out.failed)
				}
				res[tg.name] = append(res[tg.name], out)
			}
		}
		base := median(res["plain"], tps)
		t.Logf("pgbench -S -c 50 -M %s through pgguard:", mode)
		for _, tg := range targets {
			m := median(res[tg.name], tps)
			t.Logf("  %-22s %8.1f tps  (x%.3f of plain)", tg.name, m, m/base)
		}
	}
}
