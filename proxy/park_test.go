package proxy_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
)

// serving counts the goroutines serving client sessions.
func serving() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "proxy.(*client).serve(")
}

// TestParkedClients: idle clients give up their goroutines, come back on
// their next query, and are still reaped by client_idle_timeout and closed
// by shutdown.
func TestParkedClients(t *testing.T) {
	guardtest.CheckGoroutines(t)
	cfg := testConfig("transaction")
	cfg.Pool.ClientIdleTimeout = config.D(4 * time.Second)
	g := startGuard(t, cfg)
	ctx := context.Background()
	a := connect(t, g.url("app"), pgx.QueryExecModeExec)
	b := connect(t, g.url("app"), pgx.QueryExecModeExec)
	connect(t, g.url("app"), pgx.QueryExecModeExec) // left parked for Close
	guardtest.WaitFor(t, "idle clients parked", func() bool { return serving() == 0 })

	start := time.Now()
	var n int
	if err := a.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query on a parked client: %d %v", n, err)
	}
	t.Logf("parked client answered in %s", time.Since(start).Round(time.Microsecond))
	guardtest.WaitFor(t, "client parked again", func() bool { return serving() == 0 })
	if err := a.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatalf("second query: %v", err)
	}

	// b stays parked until client_idle_timeout closes it.
	time.Sleep(time.Until(start.Add(cfg.Pool.ClientIdleTimeout.Duration + time.Second)))
	if _, err := b.Exec(ctx, "SELECT 1"); pgCode(err) != "57P05" {
		t.Fatalf("parked client past client_idle_timeout: %v, want 57P05", err)
	}
}
