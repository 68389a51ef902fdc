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
	}{{"no query_timeout", 0}, {"query_timeout", 1500 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) { frozenPrimary(t, tc.queryTimeout) })
	}
}

func frozenPrimary(t *testing.T, queryTimeout time.Duration) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	ctx := context.Background()
	cfg := failoverConfig("transaction", primary.URL("app"), fallback.URL("app"))
	cfg.Pool.Size = 10
	cfg.Pool.ConnectTimeout = config.D(time.Second)
	cfg.Pool.ServerCheckAfter = config.D(time.Second)
	cfg.Pool.CancelTimeout = config.D(time.Second)
	cfg.Pool.QueryTimeout = config.D(queryTimeout)
	if queryTimeout > 0 {
		cfg.Pool.ServerCheckAfter = config.D(0) // the cancel alone must bound the wait
	}
	cfg.Failover.FailbackAfter = config.D(time.Hour) // the thawed primary is not the subject
	g := startGuard(t, cfg)
	const bound = 8 * time.Second // 1 s + 1 s + ticks, with room for a loaded machine

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
	run("syncing", syncing, "SELECT 1")

	for range 7 {
		r := <-results
		var pe *pgconn.PgError
		switch {
		case r.err == nil:
			t.Errorf("%s: succeeded on a frozen primary?", r.who)
		case !errors.As(r.err, &pe):
			t.Errorf("%s: no error from pgguard within %s: %v", r.who, r.took.Round(time.Millisecond), r.err)
		case r.took > bound:
			t.Errorf("%s: answered after %s, want within %s: %v", r.who, r.took.Round(time.Millisecond), bound, r.err)
		case !strings.Contains(pe.Message, "pool.server_check_after") && !strings.Contains(pe.Message, "pool.cancel_timeout"):
			t.Errorf("%s: the error does not name the setting: %v", r.who, r.err)
		default:
			t.Logf("%s: answered after %s: %v", r.who, r.took.Round(time.Millisecond), r.err)
		}
		if pe != nil && strings.Contains(pe.Message, "rolled back") {
			t.Errorf("%s: told its work rolled back, which nobody knows: %v", r.who, r.err)
		}
	}
	t.Logf("all answered %s after the freeze", time.Since(frozen).Round(time.Millisecond))

	// New sessions are served by the fallback.
	nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(nctx, g.url("app"))
	if err != nil {
		t.Fatalf("a new client after the freeze: %v", err)
	}
	defer conn.Close(ctx)
	if port, err := portOf(nctx, conn); err != nil || port != fallback.Port() {
		t.Errorf("a new client after the freeze: port %d, %v; want the fallback's %d", port, err, fallback.Port())
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
