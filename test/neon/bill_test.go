package neon

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// Scaled time for the replays: one minute of the post-mortem's day is
// 100 ms of replay time, and suspend_after is 4 minutes (400 ms). Neon's
// default is 5, but the post-mortem's 300-s poller would then fall exactly
// on the suspend edge, where a millisecond of timer jitter decides; at 4
// minutes it clearly lets the compute suspend between polls.
const (
	minute  = 100 * time.Millisecond
	suspend = 4 * minute
)

// tick runs f every `every` (f's own time included) for the ticks that
// start within d, and returns after the last one.
func tick(every, d time.Duration, f func()) {
	end := time.Now().Add(d)
	next := time.Now()
	for next.Before(end) {
		f()
		next = next.Add(every)
		if next.Before(end) {
			time.Sleep(time.Until(next))
		}
	}
}

// quietUntilSuspended waits until the compute and pgguard's model both
// say suspended, plus a little.
func quietUntilSuspended(t *testing.T, sim *neonsim.Sim, gs ...*guard) {
	t.Helper()
	guardtest.WaitFor(t, "the compute to suspend", func() bool { return !sim.Endpoint(ep).Awake() })
	for _, g := range gs {
		guardtest.WaitFor(t, "the model to see it suspended", func() bool { return !g.endpoint(t).AwakeNow })
	}
	time.Sleep(minute)
}

func mustQuery(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestModelEqualsBill replays the post-mortem's kinds of traffic through
// pgguard in scaled time: the 60-s availability poller with the branding
// endpoint's reads, then the poller at 300 s alone, a long query, a
// transaction held open, and clients that connect and leave without a
// query. The budget model's awake time and CU-hours must equal the
// simulator's ledger within 1%.
func TestModelEqualsBill(t *testing.T) {
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		guardtest.CheckGoroutines(t)
		sim := startSim(t, neonsim.Options{SuspendAfter: suspend, ComputeUnits: 0.25})
		g := startGuard(t, baseConfig(primaryURL(t, sim, n), suspend), sim)
		ctx := context.Background()
		worker, web, etl, adm := g.connect(t, "availability-worker"), g.connect(t, "web"), g.connect(t, "etl"), g.connect(t, "admin")

		// The poller at 60 s and the branding endpoint at a page view
		// every 6 s of the day, for 8 minutes.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick(minute/10, 8*minute, func() { mustQuery(t, web, "SELECT $1::int", 1) })
		}()
		tick(minute, 8*minute, func() { mustQuery(t, worker, "SELECT now()") })
		wg.Wait()
		quietUntilSuspended(t, sim, g)

		// The poller at 300 s: the compute suspends between its polls.
		tick(5*minute, 15*minute, func() { mustQuery(t, worker, "SELECT now()") })
		quietUntilSuspended(t, sim, g)

		// A long query, then a transaction held open 6 minutes.
		mustQuery(t, etl, "SELECT pg_sleep(0.5)")
		quietUntilSuspended(t, sim, g)
		mustQuery(t, adm, "BEGIN")
		mustQuery(t, adm, "SELECT 1")
		time.Sleep(6 * minute)
		mustQuery(t, adm, "COMMIT")
		quietUntilSuspended(t, sim, g)

		// Clients that connect and leave: no query, no wake-up.
		wakes := len(sim.Endpoint(ep).Ledger().Wakes)
		for range 5 {
			c, err := pgx.Connect(ctx, g.url("app", "healthcheck"))
			if err != nil {
				t.Fatal(err)
			}
			c.Close(ctx)
		}
		time.Sleep(suspend)
		l := sim.Endpoint(ep).Ledger()
		if len(l.Wakes) != wakes {
			t.Errorf("connect-only clients woke the compute: %d -> %d wake-ups", wakes, len(l.Wakes))
		}

		compareBill(t, l, g.lim.Budget().Snapshot().CUHours, g.endpoint(t).AwakeSeconds)
		if len(l.Wakes) < 5 {
			t.Errorf("only %d wake-ups: the replay did not let the compute suspend between phases and polls", len(l.Wakes))
		}
	})
}

// compareBill checks the model's awake seconds and CU-hours against the
// ledger within 1%. The model counts a wake-up from the moment pgguard
// dials; the compute starts once the TLS handshake and startup packet have
// arrived. That handshake (Wake.At - Wake.Arrived: about a millisecond on
// loopback, tens over the splitting relay) is a fixed cost per wake-up:
// 0.01% of a 5-minute awake period, but several percent of a scaled 400 ms
// one, so it is taken out before comparing and reported.
func compareBill(t *testing.T, l neonsim.Ledger, modelCUHours, modelAwakeSeconds float64) {
	t.Helper()
	var handshakes time.Duration
	for _, w := range l.Wakes {
		handshakes += w.At.Sub(w.Arrived)
	}
	model := time.Duration(modelAwakeSeconds * float64(time.Second))
	raw := float64(model-l.AwakeTime) / float64(l.AwakeTime)
	diff := float64(model-handshakes-l.AwakeTime) / float64(l.AwakeTime)
	modelCU := modelCUHours * 3600
	cuPerSec := modelCU / modelAwakeSeconds
	cuDiff := (modelCU - cuPerSec*handshakes.Seconds() - l.CUSeconds) / l.CUSeconds
	t.Logf("ledger: awake %v, %.3f CU-s, %d wake-ups, %d suspends, %d sessions, %d queries; model: awake %v, %.3f CU-s; difference %+.2f%% (%+.2f%% before taking out %v of handshakes, %v per wake-up)",
		l.AwakeTime.Round(time.Millisecond), l.CUSeconds, len(l.Wakes), l.Suspends, l.Sessions, l.Queries, model.Round(time.Millisecond), modelCU,
		100*diff, 100*raw, handshakes.Round(time.Millisecond), (handshakes / time.Duration(max(len(l.Wakes), 1))).Round(100*time.Microsecond))
	if math.Abs(diff) > 0.01 {
		t.Errorf("the model's awake time %v (less %v of handshakes) differs from the ledger's %v by %.2f%% (over 1%%)", model, handshakes, l.AwakeTime, 100*diff)
	}
	if math.Abs(cuDiff) > 0.01 {
		t.Errorf("the model's %.3f CU-s differ from the ledger's %.3f by %.2f%%", modelCU, l.CUSeconds, 100*cuDiff)
	}
}
