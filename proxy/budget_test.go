package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
)

// TestBudgetCountsSpans: through pgguard on a real PostgreSQL, a long
// pg_sleep and a session idle inside a transaction move the modeled awake
// time by their real duration plus suspend_after, not by suspend_after from
// the instants their queries ended (which the point model counted).
func TestBudgetCountsSpans(t *testing.T) {
	const (
		S    = time.Second             // budget.suspend_after, small for the test
		busy = 1500 * time.Millisecond // the query's and the transaction's length
	)
	cfg := testConfig("transaction")
	cfg.Budget.SuspendAfter = config.D(S)
	lim, err := limiter.New(cfg, guardtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	ctx := context.Background()
	sleeper := connect(t, g.url("app")+"&application_name=sleeper", pgx.QueryExecModeSimpleProtocol)
	idler := connect(t, g.url("app")+"&application_name=idler", pgx.QueryExecModeSimpleProtocol)

	// quiet waits until the modeled compute has suspended (suspend_after
	// without activity), then returns the month's awake time.
	quiet := func() time.Duration {
		t.Helper()
		var st limiter.BudgetStatus
		guardtest.WaitFor(t, "the modeled compute to suspend", func() bool {
			st = lim.Budget().Snapshot()
			return len(st.Endpoints) == 1 && !st.Endpoints[0].AwakeNow
		})
		return time.Duration(st.AwakeSeconds * float64(time.Second))
	}
	// check: the model saw activity for at least busy and at most the
	// client's wall time, then suspend_after of tail.
	walls := map[string]time.Duration{}
	check := func(what string, moved, wall time.Duration) {
		t.Helper()
		walls[what] = wall
		t.Logf("%s: modeled awake time moved %v (client wall time %v, suspend_after %v)", what, moved.Round(time.Millisecond), wall.Round(time.Millisecond), S)
		if moved < busy+S || moved > wall+S {
			t.Errorf("%s: awake time moved %v, want between %v (its %v + suspend_after) and %v (wall time + suspend_after)",
				what, moved, busy+S, busy, wall+S)
		}
	}

	before := quiet()
	t0 := time.Now()
	if _, err := sleeper.Exec(ctx, "SELECT pg_sleep(1.5)"); err != nil {
		t.Fatal(err)
	}
	check("sleeper", quiet()-before, time.Since(t0))

	before = quiet()
	t0 = time.Now()
	tx, err := idler.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(busy) // idle in transaction
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	check("idler", quiet()-before, time.Since(t0))

	// The pollers report says what kept the compute awake, per application,
	// each with its own awake time (a server passed from one client to the
	// other books the sync pgguard runs for the new one to it).
	by := map[string]limiter.PollerReport{}
	for _, p := range lim.Budget().Pollers() {
		by[p.Application] = p
		t.Logf("poller %s: %d queries, %d transactions, %d connections; awake %v (%s)",
			p.Application, p.Queries, p.Transactions, p.Connections, p.AwakeTime.Round(time.Millisecond), limiter.AwakeByString(p))
	}
	if p := by["sleeper"]; p.AwakeQueries < busy || p.KeptAwakeBy != "queries" || p.AwakeTime < busy+S || p.AwakeTime > walls["sleeper"]+S {
		t.Errorf("sleeper: %+v", p)
	}
	if p := by["idler"]; p.AwakeTransactions < busy-10*time.Millisecond || p.Transactions != 1 || p.KeptAwakeBy != "transactions" ||
		p.AwakeTime < busy+S || p.AwakeTime > walls["idler"]+S {
		t.Errorf("idler: %+v", p)
	}
}
