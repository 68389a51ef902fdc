package drivers

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCancelReachesOnlyItsClient: a CancelRequest for a client running
// pg_sleep stops that query and no other client's concurrent one, whether
// the other runs at the same time on the other server or right after on
// the same server.
func TestCancelReachesOnlyItsClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("concurrent", func(t *testing.T) {
		g := startTxGuard(t)
		a := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement))
		b := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeSimpleProtocol))
		for round := 0; round < 3; round++ {
			var wg sync.WaitGroup
			var errA, errB error
			var gotB string
			start := time.Now()
			wg.Add(2)
			go func() { defer wg.Done(); _, errA = a.Exec(ctx, "SELECT pg_sleep($1)", 20.0) }()
			go func() {
				defer wg.Done()
				errB = b.QueryRow(ctx, "SELECT 'b' || $1::text FROM pg_sleep(0.8)", round).Scan(&gotB)
			}()
			waitActive(t, 2)
			if err := a.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if sqlState(errA) != "57014" || time.Since(start) > 10*time.Second {
				t.Fatalf("round %d: canceled query ended with %v after %s, want 57014 at once", round, errA, time.Since(start))
			}
			if errB != nil || gotB != fmt.Sprintf("b%d", round) {
				t.Fatalf("round %d: the other client's query got %q, %v; want it untouched", round, gotB, errB)
			}
		}
	})

	t.Run("late cancel after the server moved on", func(t *testing.T) {
		cfg := txConfig()
		cfg.Pool.Size = 1 // both clients on the one server
		g := startGuard(t, cfg)
		a := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		b := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		for i := 0; i < 30; i++ {
			var v int
			if err := a.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
				t.Fatalf("a: %d %v", v, err)
			}
			done := make(chan error, 1)
			go func() { _, err := b.Exec(ctx, "SELECT pg_sleep(0.02)"); done <- err }()
			// a's cancel, sent while b may be running on a's former server.
			if err := a.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("round %d: a's cancel hit b's query: %v", i, err)
			}
		}
	})

	// A client whose query waits in pgguard's queue for a server and is
	// canceled there: on a direct connection the cancel stops the query.
	t.Run("cancel while queued", func(t *testing.T) {
		g := startTxGuard(t)
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ { // hold both servers for 1 s
			holder := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
			wg.Add(1)
			go func() { defer wg.Done(); holder.Exec(ctx, "SELECT pg_sleep(1)") }()
		}
		waitActive(t, 2)
		a := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		start := time.Now()
		errA := make(chan error, 1)
		go func() { _, err := a.Exec(ctx, "SELECT pg_sleep(3)"); errA <- err }()
		time.Sleep(200 * time.Millisecond) // a is queued
		if err := a.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		err := <-errA
		wg.Wait()
		if sqlState(err) != "57014" || time.Since(start) > 2500*time.Millisecond {
			t.Errorf("BUG: a CancelRequest for a client queued for a server is dropped: its query then runs in full (got %v after %s, want 57014 within about 1 s)",
				err, time.Since(start).Round(100*time.Millisecond))
		}
	})
}

// waitActive waits until n queries of pgUser run pg_sleep on the server.
func waitActive(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for queryInt(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep%'", pgUser) < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d running queries", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
