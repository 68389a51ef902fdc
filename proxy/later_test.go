package proxy_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/proxy"
)

// TestDeferredSends: clients queued for one server do not wait on their
// goroutines (later.go), and each still gets its own answers, in order,
// under its own session parameters: a server handed over with another
// client's application_name is synced first (Take declines: the client's
// goroutine is woken to do it), pipelines and simple and extended queries
// alike; a queued client whose wait times out is refused and its session
// goes on.
func TestDeferredSends(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 1
	g := startGuard(t, cfg)
	ctx := context.Background()
	sends0, wakes0 := proxy.DeferredSends()
	const clients, rounds = 6, 150
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		cc, err := pgx.ParseConfig(g.url("app"))
		if err != nil {
			t.Fatal(err)
		}
		cc.RuntimeParams["application_name"] = fmt.Sprintf("deferred-%d", i%2) // two profiles: hand-overs need syncs
		cc.DefaultQueryExecMode = []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement}[i%3]
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		wg.Add(1)
		go func(i int, conn *pgx.Conn) {
			defer wg.Done()
			app := fmt.Sprintf("deferred-%d", i%2)
			for r := 0; r < rounds; r++ {
				if r%10 == 9 { // a pipeline: two queries, one write
					b := &pgx.Batch{}
					b.Queue("SELECT $1::int", r)
					b.Queue("SELECT current_setting('application_name')")
					br := conn.SendBatch(ctx, b)
					var n int
					var got string
					err1 := br.QueryRow().Scan(&n)
					err2 := br.QueryRow().Scan(&got)
					br.Close()
					if err1 != nil || err2 != nil || n != r || got != app {
						errs <- fmt.Errorf("client %d round %d: pipeline got %d %q (%v, %v), want %d %q", i, r, n, got, err1, err2, r, app)
						return
					}
					continue
				}
				var n int
				var got string
				if err := conn.QueryRow(ctx, "SELECT $1::int * 1000 + $2::int, current_setting('application_name')", i, r).Scan(&n, &got); err != nil || n != i*1000+r || got != app {
					errs <- fmt.Errorf("client %d round %d: got %d %q (%v), want %d %q", i, r, n, got, err, i*1000+r, app)
					return
				}
			}
		}(i, conn)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	sends, wakes := proxy.DeferredSends()
	if sends == sends0 || wakes == wakes0 {
		t.Fatalf("%d sends deferred, %d woken: the queued clients did not defer, or no hand-over needed a sync", sends-sends0, wakes-wakes0)
	}
	t.Logf("%d sends deferred, %d needed their goroutine", sends-sends0, wakes-wakes0)

	// A deferred send whose wait times out is refused; the session goes on.
	cfg = testConfig("transaction")
	cfg.Pool.Size = 1
	cfg.Pool.WaitTimeout = config.D(200 * time.Millisecond)
	g = startGuard(t, cfg)
	holder := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	sends0, _ = proxy.DeferredSends()
	bounded, cancel := context.WithTimeout(ctx, 10*time.Second) // the refusal, not a hang
	defer cancel()
	if _, err := other.Exec(bounded, "SELECT 1"); pgCode(err) != "53300" {
		t.Fatalf("queued past pool.wait_timeout: got %v, want 53300", err)
	}
	if sends, _ := proxy.DeferredSends(); sends == sends0 {
		t.Fatal("the queued send did not defer")
	}
	tx.Rollback(ctx)
	var n int
	if err := other.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("after the refusal: %d %v", n, err)
	}
}
