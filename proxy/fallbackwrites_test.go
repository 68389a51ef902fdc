package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/metrics"
)

// TestWritableFallbackAccounted (finding 2 of issue 25): with
// fallback_read_only off, the writes the fallback serves are counted per
// table (status and pgguard_fallback_writes_total), queries are labeled
// with the upstream that answered them, and after failback a session-mode
// client that logged in during the outage cannot go on writing to the
// fallback: its session is closed between transactions with an error
// saying why.
func TestWritableFallbackAccounted(t *testing.T) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	ctx := context.Background()
	for _, c := range []*localpg.Cluster{primary, fallback} {
		if err := c.Exec(ctx, "CREATE TABLE acct (id serial, v text); CREATE TABLE other (x int); GRANT ALL ON acct, acct_id_seq, other TO tester"); err != nil {
			t.Fatal(err)
		}
	}
	guards := map[string]*guard{}
	for _, mode := range []string{"transaction", "session"} {
		cfg := failoverConfig(mode, primary.URL("app"), fallback.URL("app"))
		cfg.Failover.FallbackReadOnly = false
		guards[mode] = startGuard(t, cfg)
	}
	if err := primary.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	for mode, g := range guards {
		guardtest.WaitFor(t, mode+": the switch to the fallback", func() bool {
			conn, err := pgx.Connect(ctx, g.url("app"))
			if err != nil {
				return false
			}
			defer conn.Close(ctx)
			port, err := portOf(ctx, conn)
			return err == nil && port == fallback.Port()
		})
	}

	// Transaction mode: six writes to acct, one to other, reads alongside.
	g := guards["transaction"]
	for _, exec := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		conn := connect(t, g.url("app"), exec)
		for i := range 2 {
			if _, err := conn.Exec(ctx, "INSERT INTO acct (v) VALUES ($1)", "tx"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "SELECT count(*) FROM acct WHERE id > $1", i); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := conn.Exec(ctx, "UPDATE acct SET v = 'upd' WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
	}
	conn := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "INSERT INTO other VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	// A write is counted as its request leaves the queue, just after the
	// client has its reply.
	counted := func() bool {
		fw := g.Pools()[0].FallbackWrites
		return fw != nil && fw.Tables["acct"] == 6 && fw.Tables["other"] == 1 && fw.Total == 7
	}
	deadline := time.Now().Add(5 * time.Second)
	for !counted() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if fw := g.Pools()[0].FallbackWrites; !counted() {
		t.Errorf("fallback writes in the status: %+v, want acct=6 other=1 total=7", fw)
	}
	if n := testutil.ToFloat64(g.metrics.FallbackWrites.WithLabelValues("app", "acct")); n != 6 {
		t.Errorf("pgguard_fallback_writes_total{table=acct} = %v, want 6", n)
	}
	if n := queryCount(t, g.metrics, "fallback"); n < 11 {
		t.Errorf("pgguard_query_duration_seconds{upstream=fallback} counts %d queries, want at least the 11 the fallback answered", n)
	}
	if n := queryCount(t, g.metrics, "primary"); n != 0 {
		t.Errorf("pgguard_query_duration_seconds{upstream=primary} counts %d queries; the primary answered none", n)
	}

	// Session mode: a client logs in during the outage and writes.
	gs := guards["session"]
	sess := connect(t, gs.url("app"), pgx.QueryExecModeSimpleProtocol)
	for range 3 {
		if _, err := sess.Exec(ctx, "INSERT INTO acct (v) VALUES ('session')"); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.Restart(); err != nil {
		t.Fatal(err)
	}
	for mode, g := range guards {
		guardtest.WaitFor(t, mode+": the switch back", func() bool { return g.Pools()[0].Upstream == "primary" })
	}
	time.Sleep(600 * time.Millisecond) // a few janitor ticks
	var wrote, refused int
	for range 5 {
		_, err := sess.Exec(ctx, "INSERT INTO acct (v) VALUES ('session')")
		var pe *pgconn.PgError
		switch {
		case err == nil:
			wrote++
		case errors.As(err, &pe) && strings.Contains(pe.Message, "primary again"):
			refused++
			t.Logf("the session-mode client after failback: %v", err)
		}
		if err != nil {
			break
		}
	}
	n, err := fallback.QueryInt(ctx, "SELECT count(*) FROM acct WHERE v = 'session'")
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 || refused != 1 {
		t.Errorf("after failback the session-mode client wrote %d more rows to the fallback (%d there), refused %d times; want none, 3, and one clear error", wrote, n, refused)
	}
	if fw := gs.Pools()[0].FallbackWrites; fw == nil || fw.Tables["acct"] != 3 {
		t.Errorf("session mode: fallback writes in the status: %+v, want acct=3", fw)
	}
}

// queryCount returns how many queries pgguard_query_duration_seconds
// counted for database app on upstream u.
func queryCount(t *testing.T, m *metrics.Metrics, u string) uint64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pgguard_query_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["database"] == "app" && labels["upstream"] == u {
				return mt.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}
