package proxy_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/proxy"
)

// TestPanicIsolation: a panic in one connection's goroutine, on the client
// side or in a server's pump, closes that client with XX000 and is counted;
// the other sessions, and the process, go on.
func TestPanicIsolation(t *testing.T) {
	g := startGuard(t, testConfig("session"))
	ctx := context.Background()
	bystander := connect(t, g.url("app"), pgx.QueryExecModeExec)
	var one int
	if err := bystander.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	for _, where := range []string{"process", "relay"} {
		t.Run(where, func(t *testing.T) {
			victim := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
			if _, err := victim.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			var armed atomic.Bool
			armed.Store(true)
			proxy.SetPanicHook(func(w string) {
				if w == where && armed.CompareAndSwap(true, false) {
					panic("injected by TestPanicIsolation")
				}
			})
			defer proxy.SetPanicHook(nil)
			_, err := victim.Exec(ctx, "SELECT 2")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "XX000" || !strings.Contains(pgErr.Message, "internal error") {
				t.Fatalf("victim got %v, want XX000 internal error", err)
			}
			if armed.Load() {
				t.Fatal("the hook never fired")
			}
			var n int
			if err := bystander.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
				t.Fatalf("the other session: %d, %v", n, err)
			}
			fresh := connect(t, g.url("app"), pgx.QueryExecModeExec)
			if err := fresh.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
				t.Fatalf("a new session: %d, %v", n, err)
			}
			fresh.Close(ctx)
		})
	}
	panics := testutil.ToFloat64(g.metrics.Panics.WithLabelValues("client")) + testutil.ToFloat64(g.metrics.Panics.WithLabelValues("server"))
	if panics != 2 {
		t.Fatalf("pgguard_panics_total = %v, want 2", panics)
	}
}
