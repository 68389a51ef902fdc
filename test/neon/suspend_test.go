package neon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// TestNeverWakesOnItsOwn: clients connected and idle for 10x
// suspend_after, a reload, metrics scraped, the dashboard and /status
// fetched, health checks: the suspended compute is not woken (no wake-up,
// no session opened). The suspend's 57P01 on pgguard's pooled connections
// is noticed without a round trip, and the next client query wakes the
// compute once and succeeds.
func TestNeverWakesOnItsOwn(t *testing.T) {
	t.Parallel() // with the other tests that check no figure a busy CPU could skew
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const S = 300 * time.Millisecond
		sim := startSim(t, neonsim.Options{SuspendAfter: S})
		e := sim.Endpoint(ep)
		g := startGuard(t, baseConfig(primaryURL(t, sim, n), S), sim)
		ctx := context.Background()

		var clients []*pgx.Conn
		for i := range 6 {
			c := g.connect(t, "web-"+itoa(i))
			if _, err := scalar(ctx, c, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			clients = append(clients, c)
		}
		if l := e.Ledger(); len(l.Wakes) != 1 {
			t.Fatalf("wake-ups after the first queries: %d, want 1", len(l.Wakes))
		}
		if g.servers(t) == 0 {
			t.Fatal("pgguard holds no server connection after serving queries")
		}
		// The compute suspends; pgguard's pooled connections get 57P01 and
		// are dropped from the pool with no query sent.
		guardtest.WaitFor(t, "the compute to suspend", func() bool { return !e.Awake() })
		queries := e.Ledger().Queries
		guardtest.WaitFor(t, "pgguard to drop its dead server connections", func() bool { return g.servers(t) == 0 })
		guardtest.WaitFor(t, "the model to see the compute suspended", func() bool { return !g.endpoint(t).AwakeNow })

		before := e.Ledger()
		idleUntil := time.Now().Add(10 * S)
		g.reload(t, baseConfig(g.cfg.Databases["app"].Primary, S)) // SIGHUP with the same file
		for time.Now().Before(idleUntil) {
			g.get(t, "/metrics")
			g.get(t, "/status")
			g.get(t, "/")
			g.get(t, "/dashboard/state") // what the open page polls
			g.get(t, "/dashboard/history")
			g.get(t, "/queries")
			g.get(t, "/healthz")
			g.get(t, "/readyz")
			time.Sleep(S / 4)
		}
		con := g.connect(t, "console") // the admin console: SHOW BUDGET is pgguard's own figures
		con.Close(ctx)
		cfgc, _ := pgx.ParseConfig(g.url("pgguard", "psql"))
		cfgc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		admin, err := pgx.ConnectConfig(ctx, cfgc)
		if err != nil {
			t.Fatal(err)
		}
		var k, v string
		rows, _ := admin.Query(ctx, "SHOW BUDGET")
		var epRow string
		for rows.Next() {
			if rows.Scan(&k, &v) == nil && strings.HasPrefix(k, "endpoint ") {
				epRow = v
			}
		}
		if err := rows.Err(); err != nil || !strings.Contains(epRow, "suspended now") || !strings.Contains(epRow, "by web-") {
			t.Errorf("SHOW BUDGET endpoint row %q, %v: want suspended, last woken by a web client", epRow, err)
		}
		admin.Close(ctx)
		budget := g.get(t, "/status")
		after := e.Ledger()
		if len(after.Wakes) != len(before.Wakes) || after.Sessions != before.Sessions || after.Queries != queries {
			t.Fatalf("pgguard woke the compute on its own: wake-ups %d -> %d, sessions %d -> %d, queries %d -> %d",
				len(before.Wakes), len(after.Wakes), before.Sessions, after.Sessions, queries, after.Queries)
		}
		if !strings.Contains(strings.ReplaceAll(budget, " ", ""), `"awake_now":false`) {
			t.Errorf("/status does not show the compute suspended: %s", budget)
		}
		t.Logf("idle %v (10 x suspend_after) with %d clients connected, a reload, a client login and SHOW BUDGET, /metrics /status /queries /healthz /readyz and the dashboard's page, state and history every %v: wake-ups caused by pgguard 0, sessions opened 0",
			10*S, len(clients), S/4)

		// The next query, from a client idle since before the suspend, wakes
		// the compute once and succeeds: no dead server is handed out.
		t0 := time.Now()
		if v, err := scalar(ctx, clients[0], "SELECT 41 + 1"); err != nil || v != "42" {
			t.Fatalf("first query after the suspend: %q, %v", v, err)
		}
		for _, c := range clients[1:] {
			if _, err := scalar(ctx, c, "SELECT 1"); err != nil {
				t.Fatalf("another idle client after the suspend: %v", err)
			}
		}
		l := e.Ledger()
		if len(l.Wakes) != 2 {
			t.Errorf("wake-ups after the next query: %d, want 2", len(l.Wakes))
		}
		if ew := g.endpoint(t); !ew.AwakeNow || ew.LastWake.Before(t0) || ew.LastWakeBy != "web-0" {
			t.Errorf("model after the wake: awake %v, last wake %v by %q; want awake, after %v, by web-0", ew.AwakeNow, ew.LastWake, ew.LastWakeBy, t0)
		}
	})
}
