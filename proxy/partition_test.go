package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// A partitioned upstream, for real: the test runs itself again inside a
// network namespace A it creates, where it starts PostgreSQL and pgguard as
// usual. The upstream "far" is reached over a veth pair into a second
// namespace B, through a relay listening there and forwarding to the
// PostgreSQL in A. Taking B's end of the pair down drops every packet
// between pgguard and "far" without closing anything, as a cloud network
// partition does. Both namespaces, and their private addresses, exist only
// for the test; nothing is routed anywhere else.

const netnsChildEnv = "PGGUARD_TEST_NETNS" // in the child: namespace B's name

// TestPartitionedUpstream: a query running on a server whose upstream
// stops answering at the TCP level gets 08006 within about
// pool.server_tcp_user_timeout, the death counts toward failover (with
// failure_threshold 1 the database moves to its fallback and serves again),
// and pgguard serves other clients meanwhile.
func TestPartitionedUpstream(t *testing.T) {
	nsB := os.Getenv(netnsChildEnv)
	if nsB == "" {
		runInNetns(t, "TestPartitionedUpstream")
		return
	}
	ctx := context.Background()

	relay := startRelay(t, nsB, "10.213.0.2:5432", pg.Addr())
	cfg := testConfig("transaction")
	cfg.Databases["far"] = &config.Database{
		Primary:  fmt.Sprintf("postgres://tester:tester-pw@%s/app?sslmode=disable", relay),
		Fallback: pg.URL("app"),
	}
	cfg.Pool.ConnectTimeout = config.D(2 * time.Second)
	cfg.Pool.ServerTCPKeepaliveIdle = config.D(time.Second)
	cfg.Pool.ServerTCPKeepaliveInterval = config.D(time.Second)
	cfg.Pool.ServerTCPUserTimeout = config.D(3 * time.Second)
	cfg.Failover.FailureThreshold = 1
	cfg.Failover.ProbeInterval = config.D(time.Minute) // stay on the fallback
	cfg.Failover.ProbeMaxInterval = config.D(time.Minute)
	g := startGuard(t, cfg)

	far := connect(t, g.url("far"), pgx.QueryExecModeExec)
	var pid int
	if err := far.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := far.Exec(ctx, "SELECT pg_sleep(120) /* partitioned */"); errc <- err }()
	waitUntil(t, "the query to run", func() bool {
		n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* partitioned */' AND state = 'active'")
		return err == nil && n == 1
	})
	t.Cleanup(func() { pg.Exec(ctx, "SELECT pg_terminate_backend($1)", pid) })

	ip(t, "-n", nsB, "link", "set", "vb", "down")
	start := time.Now()

	other := connect(t, g.url("app"), pgx.QueryExecModeExec)
	served := 0
	var err error
wait:
	for {
		select {
		case err = <-errc:
			break wait
		case <-time.After(100 * time.Millisecond):
			var n int
			if qerr := other.QueryRow(ctx, "SELECT 1").Scan(&n); qerr != nil {
				t.Fatalf("another client during the partition: %v", qerr)
			}
			served++
		}
		if time.Since(start) > 60*time.Second {
			t.Fatal("the query on the partitioned upstream got no answer in 60s (server_tcp_user_timeout is 3s)")
		}
	}
	took := time.Since(start)
	if pgCode(err) != "08007" { // it was running: whether it committed is unknown
		t.Fatalf("query on the partitioned upstream: %v, want 08007", err)
	}
	t.Logf("partition noticed after %s (server_tcp_user_timeout 3s): %q; %d queries of another client served meanwhile",
		took.Round(100*time.Millisecond), pgMessage(err), served)
	if took > 30*time.Second {
		t.Errorf("partition noticed after %s; want about server_tcp_user_timeout (3s)", took)
	}

	if got := testutil.ToFloat64(g.metrics.Switches.WithLabelValues("far")); got != 1 {
		t.Fatalf("upstream switches of \"far\" = %v, want 1: the death did not count toward failover", got)
	}
	again := connect(t, g.url("far"), pgx.QueryExecModeExec)
	var n int
	if err := again.QueryRow(ctx, "SELECT 42").Scan(&n); err != nil || n != 42 {
		t.Fatalf("\"far\" after failing over: %d %v", n, err)
	}
}

// runInNetns runs test in a child process inside a fresh network namespace
// A, with a veth pair to a second namespace B whose name the child gets.
// Without ip netns (not root, no iproute2) the test is skipped, except in CI.
func runInNetns(t *testing.T, test string) {
	if err := netnsAvailable(); err != nil {
		localpg.Require(t, err)
	}
	a, b := fmt.Sprintf("pgg%d-a", os.Getpid()), fmt.Sprintf("pgg%d-b", os.Getpid())
	ip(t, "netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	ip(t, "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	ip(t, "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
	ip(t, "-n", a, "addr", "add", "10.213.0.1/30", "dev", "va")
	ip(t, "-n", b, "addr", "add", "10.213.0.2/30", "dev", "vb")
	for _, ns := range []string{a, b} {
		ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	ip(t, "-n", a, "link", "set", "va", "up")
	ip(t, "-n", b, "link", "set", "vb", "up")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", a, os.Args[0], "-test.run", "^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+b)
	out, err := cmd.CombinedOutput()
	t.Logf("in network namespace %s:\n%s", a, out)
	if err != nil {
		t.Fatalf("%s in a network namespace: %v", test, err)
	}
	if !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("%s did not pass in the network namespace", test)
	}
}

// netnsAvailable says why network namespaces cannot be made here, or nil.
func netnsAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip (iproute2): %w", err)
	}
	probe := fmt.Sprintf("pgg%d-probe", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "del", probe).Run()
	return nil
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// startRelay listens on addr inside network namespace ns and forwards each
// connection to target (dialed from this process's namespace). It returns
// the address it listens on.
func startRelay(t *testing.T, ns, addr, target string) string {
	t.Helper()
	ln, err := listenInNetns(ns, addr)
	if err != nil {
		t.Fatalf("listen in namespace %s: %v", ns, err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return ln.Addr().String()
}

// listenInNetns creates a TCP listener inside network namespace ns: a
// socket belongs to the namespace of the thread that creates it, so a
// locked thread enters ns, listens and comes back. A thread that cannot
// come back is not unlocked, so it ends with its goroutine.
func listenInNetns(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer home.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}
