package proxy_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
)

// TestDisableWorkers flips the worker kill switch while a worker is inside
// a transaction and a web client runs transactions without pause, in both
// pooling modes: the worker's open transaction commits, its next one gets
// 53400 naming DISABLE_WORKERS, the web client has none refused, and the
// worker is served again once the switch is off.
func TestDisableWorkers(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(mode)
			cfg.Pool.Size = 3
			cfg.Limits = []config.Limit{
				{Name: "workers", ApplicationName: "availability-worker", Worker: true, Action: "delay", Burst: 1},
				{Name: "web", ApplicationName: "web", Priority: 10, MaxConnections: 2, Action: "delay", Burst: 1},
			}
			lim, err := limiter.New(cfg, guardtest.Logger())
			if err != nil {
				t.Fatal(err)
			}
			defer lim.Close()
			g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			worker := connect(t, g.url("app")+"&application_name=availability-worker", pgx.QueryExecModeExec)
			web := connect(t, g.url("app")+"&application_name=web", pgx.QueryExecModeExec)

			// The web client runs transactions until the worker is done.
			var stop atomic.Bool
			var webOK, webErrs atomic.Int64
			var firstWebErr atomic.Value
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					tx, err := web.Begin(ctx)
					if err == nil {
						_, err = tx.Exec(ctx, "SELECT 1")
						if err == nil {
							err = tx.Commit(ctx)
						} else {
							tx.Rollback(ctx)
						}
					}
					if err != nil {
						webErrs.Add(1)
						firstWebErr.CompareAndSwap(nil, err.Error())
						continue
					}
					webOK.Add(1)
				}
			}()

			tx, err := worker.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			lim.SetWorkersDisabled(true, "test")
			// The transaction under way finishes.
			var n int
			if err := tx.QueryRow(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
				t.Fatalf("worker inside its transaction after the switch: %d, %v", n, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("worker's COMMIT after the switch: %v", err)
			}
			// New transactions are refused, each time, naming the switch.
			for i := 0; i < 3; i++ {
				_, err := worker.Exec(ctx, "SELECT 3")
				if pgCode(err) != "53400" || !strings.Contains(pgMessage(err), "DISABLE_WORKERS") || !strings.Contains(pgMessage(err), `"workers"`) {
					t.Fatalf("worker's new transaction with the switch on: %v, want 53400 naming DISABLE_WORKERS", err)
				}
			}
			if _, err := worker.Begin(ctx); pgCode(err) != "53400" {
				t.Fatalf("worker BEGIN with the switch on: %v", err)
			}
			if mode == "session" {
				// A new worker session, which would hold a server from its
				// login (backendkey.go) and run nothing, is refused there.
				c, err := pgx.Connect(ctx, g.url("app")+"&application_name=availability-worker")
				if err == nil {
					c.Close(ctx)
				}
				if pgCode(err) != "53400" || !strings.Contains(err.Error(), "DISABLE_WORKERS") {
					t.Fatalf("worker login with the switch on, session mode: %v, want 53400 naming DISABLE_WORKERS", err)
				}
			}
			guardtest.WaitFor(t, "web transactions", func() bool { return webOK.Load() >= 20 })
			lim.SetWorkersDisabled(false, "test")
			if err := worker.QueryRow(ctx, "SELECT 4").Scan(&n); err != nil || n != 4 {
				t.Fatalf("worker after the switch is off: %d, %v", n, err)
			}
			stop.Store(true)
			wg.Wait()
			if webErrs.Load() != 0 {
				t.Fatalf("web client: %d of %d transactions failed while workers were disabled; first: %v",
					webErrs.Load(), webErrs.Load()+webOK.Load(), firstWebErr.Load())
			}
			t.Logf("web client: %d transactions, none refused", webOK.Load())
		})
	}
}
