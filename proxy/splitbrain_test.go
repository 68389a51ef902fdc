package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// TestSplitBrain (finding 5 of issue 25): two instances share one Redis;
// instance A is cut off from the primary, instance B is not. A is told it
// alone cannot reach the primary (status, /readyz's degraded list) under
// either policy. With split_policy = "fail_over" A serves the fallback (its
// stale reads are what that policy accepts); with "refuse" A answers errors
// and is not ready, never serving the fallback's stale rows, until B loses
// the primary too, when both serve the fallback.
func TestSplitBrain(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	for _, policy := range []string{"fail_over", "refuse"} {
		t.Run(policy, func(t *testing.T) { splitBrain(t, policy) })
	}
}

func splitBrain(t *testing.T, policy string) {
	ctx := context.Background()
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	for c, rows := range map[*localpg.Cluster]int{primary: 12, fallback: 3} {
		if err := c.Exec(ctx, "CREATE TABLE items AS SELECT generate_series(1, "+itoa(int64(rows))+") AS id; GRANT ALL ON items TO tester"); err != nil {
			t.Fatal(err)
		}
	}
	// A reaches the primary through a relay the test cuts; B directly.
	relay := startReplyCutter(t, primary.Addr())
	guards := map[string]*guard{}
	for name, primaryURL := range map[string]string{
		"A": strings.Replace(primary.URL("app"), primary.Addr(), relay.ln.Addr().String(), 1),
		"B": primary.URL("app"),
	} {
		cfg := failoverConfig("transaction", primaryURL, fallback.URL("app"))
		cfg.Failover.SplitPolicy = policy
		cfg.Failover.FallbackNotice = true
		cfg.Failover.FailbackAfter = config.D(time.Hour)
		g := startGuard(t, cfg)
		f, err := failover.NewFleet(r.URL(), "limiter.redis_url", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		f.Start(g.Monitors)
		t.Cleanup(f.Close)
		guards[name] = g
	}
	a, b := guards["A"], guards["B"]
	count := func(g *guard) (int64, string, error) {
		var notice string
		cc, err := pgx.ParseConfig(g.url("app"))
		if err != nil {
			t.Fatal(err)
		}
		cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notice = n.Message }
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := pgx.ConnectConfig(qctx, cc)
		if err != nil {
			return 0, "", err
		}
		defer conn.Close(ctx)
		var n int64
		err = conn.QueryRow(qctx, "SELECT count(*) FROM items").Scan(&n)
		return n, notice, err
	}
	for name, g := range guards {
		if n, _, err := count(g); err != nil || n != 12 {
			t.Fatalf("%s before the cut: %d rows, %v", name, n, err)
		}
	}
	guardtest.WaitFor(t, "both instances to see each other", func() bool {
		st := a.Pools()[0].Failover.Peers
		return st.Known && st.Up == 1 && b.Pools()[0].Failover.Peers.Up == 1
	})

	// A is cut off from the primary.
	relay.ln.Close()
	relay.cutAll()
	n, notice, err := count(a)
	switch policy {
	case "fail_over":
		if err != nil || n != 3 {
			t.Errorf("A under fail_over: %d rows, %v; want the fallback's 3", n, err)
		}
		if !strings.Contains(notice, "fallback") {
			t.Errorf("A under fail_over: notice %q, want one saying the fallback serves", notice)
		}
	case "refuse":
		if err == nil || !strings.Contains(err.Error(), "split_policy") {
			t.Errorf("A under refuse: %d rows, %v; want an error naming failover.split_policy", n, err)
		}
		t.Logf("A under refuse: %v", err)
	}
	guardtest.WaitFor(t, "A to know it alone cannot reach the primary", func() bool { return a.Pools()[0].Failover.Isolated })
	if d := a.Degraded(); len(d) == 0 || !strings.Contains(d[0], "other instances can") {
		t.Errorf("A's degraded list: %q", d)
	}
	if policy == "refuse" {
		if a.Ready() {
			t.Error("A is ready while it refuses")
		}
		for range 3 { // every attempt is refused, none served stale
			if n, _, err := count(a); err == nil {
				t.Errorf("A under refuse served %d rows", n)
			}
		}
	}
	if n, _, err := count(b); err != nil || n != 12 {
		t.Errorf("B meanwhile: %d rows, %v; want the primary's 12", n, err)
	}

	if policy != "refuse" {
		return
	}
	// B loses the primary too: the fleet has it nowhere, A serves the fallback.
	if err := primary.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	count(b) // B's clients find out
	guardtest.WaitFor(t, "B on its fallback", func() bool { return b.Pools()[0].Upstream == "fallback" })
	guardtest.WaitFor(t, "A on its fallback once no instance reaches the primary", func() bool { return a.Pools()[0].Upstream == "fallback" })
	if n, _, err := count(a); err != nil || n != 3 {
		t.Errorf("A once the whole fleet lost the primary: %d rows, %v; want the fallback's 3", n, err)
	}
}
