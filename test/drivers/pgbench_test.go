package drivers

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// pgbenchBin finds pgbench next to the PostgreSQL server binaries, else on $PATH.
func pgbenchBin() (string, error) {
	if dir := localpg.BinDir(); dir != "" {
		p := filepath.Join(dir, "pgbench")
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("pgbench")
}

// pgbenchResult is what a pgbench run reported.
type pgbenchResult struct {
	processed int64
	failed    int64
	tps       float64
}

var (
	processedRe = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRe    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	tpsRe       = regexp.MustCompile(`tps = ([0-9.]+)`)
)

// parsePgbench reads pgbench's summary; ok is false when a line is missing.
func parsePgbench(out string) (r pgbenchResult, ok bool) {
	p, f, s := processedRe.FindStringSubmatch(out), failedRe.FindStringSubmatch(out), tpsRe.FindStringSubmatch(out)
	if p == nil || f == nil || s == nil {
		return r, false
	}
	r.processed, _ = strconv.ParseInt(p[1], 10, 64)
	r.failed, _ = strconv.ParseInt(f[1], 10, 64)
	r.tps, _ = strconv.ParseFloat(s[1], 64)
	return r, true
}

// TestPgbench runs pgbench through transaction pooling with 2 server
// connections in every protocol mode, select-only with 20 clients and TPC-B,
// and requires each run to complete with 0 failed transactions. It logs the
// throughput of -S -M prepared against -S -M simple.
func TestPgbench(t *testing.T) {
	bin, err := pgbenchBin()
	requireTool(t, "pgbench", err)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) { pgbenchOver(t, bin, n) })
}

// pgbenchOver is TestPgbench over network n.
func pgbenchOver(t *testing.T, bin string, n guardtest.Net) {
	g := startGuardOver(t, n, txConfig())

	// pgbench -i itself goes through pgguard: DDL, COPY FROM STDIN, VACUUM.
	if out, err := runTool(t, 60*time.Second, "", bin, "-i", "-q", "-s", "1", g.url()); err != nil {
		t.Fatalf("pgbench -i through pgguard: %v\n%s", err, out)
	}
	if n := queryInt(t, "SELECT count(*) FROM pgbench_accounts"); n != 100000 {
		t.Fatalf("pgbench -i loaded %d accounts, want 100000", n)
	}

	run := func(t *testing.T, args ...string) pgbenchResult {
		t.Helper()
		args = append([]string{"-n"}, append(args, g.url())...)
		out, err := runTool(t, 60*time.Second, "", bin, args...)
		r, ok := parsePgbench(out)
		switch {
		case err != nil:
			t.Fatalf("pgbench %s: %v\n%s", strings.Join(args[:len(args)-1], " "), err, out)
		case !ok:
			t.Fatalf("pgbench %s: no summary in its output\n%s", strings.Join(args[:len(args)-1], " "), out)
		case r.failed != 0 || r.processed == 0:
			t.Fatalf("pgbench %s: %d processed, %d failed; want some and 0\n%s", strings.Join(args[:len(args)-1], " "), r.processed, r.failed, out)
		}
		return r
	}

	tps := map[string]float64{}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run("select-only/"+mode, func(t *testing.T) {
			r := run(t, "-S", "-M", mode, "-c", "20", "-j", "2", "-T", "3")
			tps[mode] = r.tps
			t.Logf("-S -M %s, 20 clients: %d transactions, %.0f tps", mode, r.processed, r.tps)
		})
	}
	if tps["simple"] > 0 && tps["prepared"] > 0 {
		t.Logf("throughput through pgguard (2 servers, 20 clients, -S): -M prepared %.0f tps, -M simple %.0f tps (%.2fx), -M extended %.0f tps",
			tps["prepared"], tps["simple"], tps["prepared"]/tps["simple"], tps["extended"])
	}

	balance := func() int64 {
		return queryInt(t, "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) - (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run("tpcb/"+mode, func(t *testing.T) {
			// pgbench -M prepared prepares each statement with a synchronous
			// PQprepare the first time a client runs it, which stops every
			// other client of the same pgbench thread. When those clients
			// hold all the pooled servers mid-transaction (TPC-B is a
			// multi-statement transaction), the prepare can never get one:
			// pgbench deadlocks itself, behind any transaction pooler
			// (-c 20 -j 2 here hangs). With one client per thread no
			// blocked thread holds a server, so 8 clients on 2 servers work.
			args := []string{"-M", mode, "-c", "20", "-j", "2", "-T", "2"}
			if mode == "prepared" {
				args = []string{"-M", mode, "-c", "8", "-j", "8", "-T", "2"}
			}
			r := run(t, args...)
			t.Logf("TPC-B -M %s, %s clients: %d transactions, %.0f tps", mode, args[3], r.processed, r.tps)
		})
	}
	// Every committed TPC-B transaction updated an account and logged the
	// same delta in history; accounts started at 0.
	if b := balance(); b != 0 {
		t.Errorf("accounts and history disagree by %d after TPC-B", b)
	}
}
