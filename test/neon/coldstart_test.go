package neon

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// TestColdStartAbsorbed: 50 clients arrive while the compute takes 2 s to
// wake. Every one gets its answer, none an error, and pgguard opens no
// more server connections at once than pool.size + max_overflow allow.
func TestColdStartAbsorbed(t *testing.T) {
	t.Parallel() // with the other tests that check no figure a busy CPU could skew
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const cold = 2 * time.Second
		sim := startSim(t, neonsim.Options{SuspendAfter: time.Minute, ColdStart: cold})
		cfg := baseConfig(primaryURL(t, sim, n), time.Minute)
		cfg.Pool.Size, cfg.Pool.MaxOverflow = 4, 1
		g := startGuard(t, cfg, sim)

		const clients = 50
		var wg sync.WaitGroup
		var errs atomic.Int64
		var firstErr atomic.Value
		t0 := time.Now()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := pgx.Connect(ctx, g.url("app", "web"))
				if err == nil {
					var v int
					if err = c.QueryRow(ctx, "SELECT $1::int * 2", i).Scan(&v); err == nil && v != 2*i {
						t.Errorf("client %d got %d", i, v)
					}
					c.Close(ctx)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		l := sim.Endpoint(ep).Ledger()
		t.Logf("%d clients during a %v cold start: %d errors, answered within %v; compute: %d wake-up, %d sessions opened, at most %d at once (pool.size %d + max_overflow %d)",
			clients, cold, errs.Load(), took.Round(time.Millisecond), len(l.Wakes), l.Sessions, l.Peak, cfg.Pool.Size, cfg.Pool.MaxOverflow)
		if errs.Load() > 0 {
			t.Fatalf("%d clients failed; first: %v", errs.Load(), firstErr.Load())
		}
		if len(l.Wakes) != 1 || l.Wakes[0].ColdStart != cold {
			t.Errorf("wake-ups %+v, want one with the cold start", l.Wakes)
		}
		// Overflow connections close on release when nobody waits and open
		// again when clients queue, so more than size+max_overflow may open
		// in all; never more at once.
		if limit := cfg.Pool.Size + cfg.Pool.MaxOverflow; l.Peak > limit {
			t.Errorf("pgguard held %d sessions at once; the pool allows %d", l.Peak, limit)
		}
	})
}
