package proxy_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// freeze stops every process of cluster c (the postmaster and all its
// children) with SIGSTOP, as a frozen VM would: the kernel still accepts
// and acknowledges, nothing answers. The test's cleanup resumes them, first.
func freeze(t *testing.T, c *localpg.Cluster) {
	t.Helper()
	pids := append([]int{c.Pid()}, childrenOf(c.Pid())...)
	t.Cleanup(func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP %d: %v", pid, err)
		}
	}
	t.Logf("froze %d processes of the cluster on port %d", len(pids), c.Port())
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// TestFrozenPrimary (finding 4 of issue 25): every process of the primary's
// cluster is stopped. Clients mid-query, clients handed idle pooled servers
// after the freeze, and a client whose server needs a parameter sync all
// get an error within pool.server_check_after + pool.connect_timeout (plus
// the janitor's tick), naming the setting, instead of hanging until it
// thaws; with query_timeout set (and server_check_after off), the cancel
// the frozen postmaster never answers is bounded by pool.cancel_timeout. New clients are served by the
// fallback. Each client gives up by itself after 20 s, so the test stops
// even where pgguard would hang.
func TestFrozenPrimary(t *testing.T) {
	for _, tc := range []struct {
		name         string
		queryTimeout time.Duration
		checkAfter   time.Duration
	}{
		{"server_check_after", 0, time.Second},
		{"query_timeout", 1500 * time.Millisecond, 0},
		{"switch away", 0, 0}, // only the check of the primary a switch makes answers them
	} {
		t.Run(tc.name, func(t *testing.T) { frozenPrimary(t, tc.queryTimeout, tc.checkAfter) })
	}
}

func frozenPrimary(t *testing.T, queryTimeout, checkAfter time.Duration) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	ctx := context.Background()
	cfg := failoverConfig("transaction", primary.URL("app"), fallback.URL("app"))
	cfg.Pool.Size = 10
	cfg.Pool.ConnectTimeout = config.D(time.Second)
	cfg.Pool.ServerCheckAfter = config.D(checkAfter)
	cfg.Pool.CancelTimeout = config.D(time.Second)
	cfg.Pool.QueryTimeout = config.D(queryTimeout)
	switchAway := queryTimeout == 0 && checkAfter == 0
	cfg.Failover.FailbackAfter = config.D(time.Hour) // the thawed primary is not the subject
	g := startGuard(t, cfg)
	bound := 8 * time.Second // 1 s + 1 s + ticks, with room for a loaded machine
	withSync := checkAfter > 0
	if switchAway {
		bound = 12 * time.Second // three dials of 1 s, the switch, a check of 1 s
	}

	open := func(params map[string]string) *pgx.Conn {
		cc, err := pgx.ParseConfig(g.url("app"))
		if err != nil {
			t.Fatal(err)
		}
		cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		for k, v := range params {
			cc.RuntimeParams[k] = v
		}
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	// Warm the pool: seven server connections, idle afterwards.
	var warm []*pgx.Conn
	for range 7 {
		warm = append(warm, open(nil))
	}
	var wg sync.WaitGroup
	for _, c := range warm {
		wg.Go(func() {
			if _, err := c.Exec(ctx, "BEGIN; SELECT pg_sleep(0.3); COMMIT"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	syncing := open(map[string]string{"options": "-c search_path=frozen_test,public"})
	idle := []*pgx.Conn{open(nil), open(nil), open(nil)}

	type outcome struct {
		who  string
		took time.Duration
		err  error
	}
	results := make(chan outcome, 10)
	run := func(who string, conn *pgx.Conn, sql string) {
		go func() {
			qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := conn.Exec(qctx, sql)
			results <- outcome{who, time.Since(start), err}
		}()
	}
	// Three clients mid-query when the cluster freezes.
	for i := range 3 {
		run("mid-query "+strconv.Itoa(i), warm[i], "SELECT pg_sleep(60)")
	}
	time.Sleep(300 * time.Millisecond)
	freeze(t, primary)
	frozen := time.Now()
	// Three handed idle pooled servers after the freeze, one needing a sync.
	for i, c := range idle {
		run("idle-pooled "+strconv.Itoa(i), c, "SELECT 1")
	}
	if switchAway {
		// New clients' dials time out (connect_timeout 1 s, three times; the
		// first may take the last idle server): pgguard switches to the
		// fallback and checks the primary.
		for range 2 {
			go func() {
				nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				if conn, err := pgx.Connect(nctx, g.url("app")); err == nil {
					conn.Exec(nctx, "SELECT 1")
					conn.Close(ctx)
				}
			}()
		}
	}
	if withSync { // else pgguard's check of its own sync would answer every client, not the cancel or the switch under test
		run("syncing", syncing, "SELECT 1")
	}

	n := 6
	if withSync {
		n = 7
	}
	for range n {
		r := <-results
		var pe *pgconn.PgError
		switch {
		case r.err == nil && switchAway && strings.HasPrefix(r.who, "idle-pooled") && r.took <= bound:
			// Its query reached pgguard after the switch (a loaded machine
			// runs the goroutine late) and the fallback answered it.
			t.Logf("%s: answered by the fallback after %s", r.who, r.took.Round(time.Millisecond))
		case r.err == nil:
			t.Errorf("%s: succeeded on a frozen primary?", r.who)
		case !errors.As(r.err, &pe):
			t.Errorf("%s: no error from pgguard within %s: %v", r.who, r.took.Round(time.Millisecond), r.err)
		case r.took > bound:
			t.Errorf("%s: answered after %s, want within %s: %v", r.who, r.took.Round(time.Millisecond), bound, r.err)
		case !strings.Contains(pe.Message, "pool.connect_timeout") && !strings.Contains(pe.Message, "pool.cancel_timeout"),
			switchAway && !strings.Contains(pe.Message, "switched"),
			queryTimeout > 0 && !strings.Contains(pe.Message, "pool.cancel_timeout"):
			t.Errorf("%s: the error does not name the setting: %v", r.who, r.err)
		default:
			t.Logf("%s: answered after %s: %v", r.who, r.took.Round(time.Millisecond), r.err)
		}
		if pe != nil && strings.Contains(pe.Message, "rolled back") {
			t.Errorf("%s: told its work rolled back, which nobody knows: %v", r.who, r.err)
		}
	}
	t.Logf("all answered %s after the freeze", time.Since(frozen).Round(time.Millisecond))

	// New sessions are served by the fallback (the first may still be handed
	// the last idle frozen server, and be answered with an error in time).
	deadline := time.Now().Add(30 * time.Second)
	for {
		nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		port, err := func() (int, error) {
			conn, err := pgx.Connect(nctx, g.url("app"))
			if err != nil {
				return 0, err
			}
			defer conn.Close(ctx)
			return portOf(nctx, conn)
		}()
		cancel()
		if err == nil && port == fallback.Port() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new client served by the fallback after the freeze: port %d, %v", port, err)
		}
		t.Logf("a new client after the freeze: port %d, %v", port, err)
	}
	if queryTimeout > 0 {
		if n := testutil.ToFloat64(g.metrics.Cancelled.WithLabelValues("query_timeout")); n < 3 {
			t.Errorf("pgguard_queries_cancelled_total{reason=query_timeout} = %v, want >= 3", n)
		}
	}
	if n := testutil.ToFloat64(g.metrics.ClientsReaped.WithLabelValues("query_timeout")); n != 0 {
		t.Errorf("pgguard_clients_closed_total{reason=query_timeout} = %v: no client is closed for query_timeout", n)
	}
}
