package proxy_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// TestIdleInTransactionReaped: a client idle inside a transaction is closed
// with 25P03 after idle_transaction_timeout, its transaction rolled back and
// its server returned to the pool.
func TestIdleInTransactionReaped(t *testing.T) {
	ctx := context.Background()
	pg.Exec(ctx, "DROP TABLE IF EXISTS itx; CREATE TABLE itx (v int); GRANT ALL ON itx TO tester")
	cfg := testConfig("transaction")
	cfg.Pool.Size = 1
	cfg.Pool.IdleTransactionTimeout = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	idle := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if _, err := idle.Exec(ctx, "BEGIN; INSERT INTO itx VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	guardtest.WaitFor(t, "server returned", func() bool { return g.Pools()[0].ServersIdle == 1 })
	t.Logf("idle-in-transaction client closed and its server returned %s after its last message (timeout 300ms)", time.Since(start).Round(time.Millisecond))
	_, err := idle.Exec(ctx, "COMMIT")
	var pe *pgconn.PgError
	if err == nil || errors.As(err, &pe) && pe.Code != "25P03" {
		t.Fatalf("after the timeout: %v, want the session closed with 25P03", err)
	}
	other := connect(t, g.url("app"), pgx.QueryExecModeExec)
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM itx").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows after rollback: %d %v", n, err)
	}
}

// TestQueryTimeout: a query running past query_timeout is cancelled and the
// client is told which setting did it; the session goes on.
func TestQueryTimeout(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.QueryTimeout = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	ctx := context.Background()
	start := time.Now()
	_, err := conn.Exec(ctx, "SELECT pg_sleep(10)")
	if pgCode(err) != "57014" || !strings.Contains(pgMessage(err), "pool.query_timeout") {
		t.Fatalf("got %v after %s, want 57014 naming pool.query_timeout", err, time.Since(start))
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after the cancel: %d %v", n, err)
	}
}

// TestIdleReapLatency measures how long after client_idle_timeout an idle
// session is actually closed (the janitor runs every 250 ms).
func TestIdleReapLatency(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.ClientIdleTimeout = config.D(time.Second)
	g := startGuard(t, cfg)
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	conn.Exec(context.Background(), "SELECT 1")
	last := time.Now()
	buf := make([]byte, 1024)
	raw := conn.PgConn().Conn()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := raw.Read(buf); err != nil {
			break
		}
	}
	late := time.Since(last) - time.Second
	if late < 0 || late > time.Second {
		t.Fatalf("closed %s after the timeout; want within a second", late)
	}
	t.Logf("idle session closed %s after client_idle_timeout (1s)", late.Round(time.Millisecond))
	_ = g
}

// TestReloadPoolSize: a reload changes the pool size live, without dropping
// a connection.
func TestReloadPoolSize(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 1
	g := startGuard(t, cfg)
	ctx := context.Background()
	a := connect(t, g.url("app"), pgx.QueryExecModeExec)
	b := connect(t, g.url("app"), pgx.QueryExecModeExec)
	txA, _ := a.Begin(ctx)
	txA.Exec(ctx, "SELECT 1")
	next := *cfg
	next.Pool.Size = 2
	if _, err := g.Reload(&next); err != nil {
		t.Fatal(err)
	}
	// With size 2, b gets a server while a holds the first.
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := b.Exec(qctx, "SELECT 1"); err != nil {
		t.Fatalf("second server after reload: %v", err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatalf("open transaction across the reload: %v", err)
	}
	if p := g.Pools()[0]; p.Size != 2 {
		t.Fatalf("pool size %d after reload, want 2", p.Size)
	}
}

// TestLeakReported: a session idle in a transaction past leak_warn_after is
// listed in /status (Status().Leaks) and counted in the metric.
func TestLeakReported(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.LeakWarnAfter = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	ctx := context.Background()
	leaky := connect(t, g.url("app")+"&application_name=leaky-script", pgx.QueryExecModeExec)
	if _, err := leaky.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "leak reported", func() bool {
		l := g.Status().Leaks
		return len(l) == 1 && l[0].Application == "leaky-script"
	})
	guardtest.WaitFor(t, "leak counted", func() bool {
		return testutil.ToFloat64(g.metrics.LeakWarnings.WithLabelValues("leaky-script")) == 1
	})
}

// TestLoginTimeout: a client that connects and says nothing is closed after
// pool.login_timeout, holding nothing.
func TestLoginTimeout(t *testing.T) {
	guardtest.CheckGoroutines(t)
	cfg := testConfig("transaction")
	cfg.Pool.LoginTimeout = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("pgguard sent something to a silent client")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("silent client closed after %s; pool.login_timeout is 300ms", d)
	}
}
