package neon

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// TestListenersNeverWake: transaction-mode clients LISTEN through pgguard's
// one listening connection. The compute suspends (its 57P01 cuts that
// connection too) and, idle for 10x suspend_after with every listener
// connected, is not woken: no wake-up, no session, no query. The next
// client query wakes it once; the listener is back before that query runs,
// so its NOTIFY reaches every listener, after a WARNING naming the channel
// and the time nothing listened.
func TestListenersNeverWake(t *testing.T) {
	t.Parallel()
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const S = 300 * time.Millisecond
		sim := startSim(t, neonsim.Options{SuspendAfter: S})
		e := sim.Endpoint(ep)
		g := startGuard(t, baseConfig(primaryURL(t, sim, n), S), sim)
		ctx := context.Background()

		var mu sync.Mutex
		notices := map[string][]string{}
		var listeners []*pgx.Conn
		for i := range 5 {
			app := "listener-" + itoa(i)
			cc, err := pgx.ParseConfig(g.url("app", app))
			if err != nil {
				t.Fatal(err)
			}
			cc.OnNotice = func(_ *pgconn.PgConn, nt *pgconn.Notice) {
				mu.Lock()
				notices[app] = append(notices[app], nt.Message)
				mu.Unlock()
			}
			c, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close(ctx) })
			if _, err := c.Exec(ctx, "LISTEN jobs"); err != nil {
				t.Fatal(err)
			}
			listeners = append(listeners, c)
		}
		sender := g.connect(t, "sender")
		wait := func(what string) {
			t.Helper()
			for i, c := range listeners {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				nt, err := c.WaitForNotification(wctx)
				cancel()
				if err != nil || nt.Payload != what {
					t.Fatalf("listener %d: %v %v, want %q", i, nt, err, what)
				}
			}
		}
		if _, err := sender.Exec(ctx, "NOTIFY jobs, 'awake'"); err != nil {
			t.Fatal(err)
		}
		wait("awake")

		guardtest.WaitFor(t, "the compute to suspend", func() bool { return !e.Awake() })
		guardtest.WaitFor(t, "the listener to see it", func() bool {
			ls := g.p.Listeners()
			return len(ls) == 1 && ls[0].State == "down"
		})
		before := e.Ledger()
		time.Sleep(10 * S)
		after := e.Ledger()
		if len(after.Wakes) != len(before.Wakes) || after.Sessions != before.Sessions || after.Queries != before.Queries {
			t.Fatalf("idle listeners woke the compute: wake-ups %d -> %d, sessions %d -> %d, queries %d -> %d",
				len(before.Wakes), len(after.Wakes), before.Sessions, after.Sessions, before.Queries, after.Queries)
		}
		t.Logf("%d listeners idle %v (10 x suspend_after) after the suspend: wake-ups 0, sessions opened 0", len(listeners), 10*S)

		// The next query wakes the compute once; its NOTIFY is heard.
		if _, err := sender.Exec(ctx, "NOTIFY jobs, 'after'"); err != nil {
			t.Fatal(err)
		}
		wait("after")
		if l := e.Ledger(); len(l.Wakes) != len(before.Wakes)+1 {
			t.Errorf("wake-ups after the next query: %d, want %d", len(l.Wakes), len(before.Wakes)+1)
		}
		mu.Lock()
		defer mu.Unlock()
		for app, ns := range notices {
			if len(ns) != 1 || !strings.Contains(ns[0], `channel "jobs"`) || !strings.Contains(ns[0], "terminating connection due to administrator command") {
				t.Errorf("%s: gap notices %q", app, ns)
			}
		}
		if len(notices) != len(listeners) {
			t.Errorf("%d of %d listeners heard of the gap", len(notices), len(listeners))
		}
	})
}
