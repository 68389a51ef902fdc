package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
)

// Issue 24, finding 4: the cache forgets what the server committed, at
// every commit point, also ones pgguard does not see as a unit's end.

// sameRow reads tenant id's row through reader and directly, and fails
// the test if they differ.
func sameRow(t *testing.T, what string, reader, direct *pgx.Conn, id int) {
	t.Helper()
	if got, want := brandingRow(t, reader, id), brandingRow(t, direct, id); got != want {
		t.Fatalf("%s: pgguard answered %q, a direct connection %q", what, got, want)
	}
}

// TestCacheCommitPoints: COMMIT AND CHAIN, and a procedure or DO block
// that commits and then fails: a reader on another connection gets what
// a direct connection gets.
func TestCacheCommitPoints(t *testing.T) {
	freshBranding(t)
	superExec(t, `CREATE OR REPLACE PROCEDURE cache_commit_then_fail(c text) LANGUAGE plpgsql AS $$
		BEGIN UPDATE cache_branding SET color = c WHERE tenant_id = 7; COMMIT; RAISE EXCEPTION 'after the commit'; END $$;
		GRANT ALL ON PROCEDURE cache_commit_then_fail(text) TO tester`)
	ctx := context.Background()
	g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{brandingRule()})
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	reader := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)

	t.Run("COMMIT AND CHAIN", func(t *testing.T) {
		writer := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
		sameRow(t, "before", reader, direct, 6)
		if _, err := writer.Exec(ctx, "BEGIN; UPDATE cache_branding SET color = '#chain' WHERE tenant_id = 6; COMMIT AND CHAIN"); err != nil {
			t.Fatal(err)
		}
		sameRow(t, "after COMMIT AND CHAIN, its chained transaction open", reader, direct, 6)
		if _, err := writer.Exec(ctx, "ROLLBACK"); err != nil {
			t.Fatal(err)
		}
		sameRow(t, "after the chained transaction", reader, direct, 6)
	})
	for name, sql := range map[string]string{
		"CALL": "CALL cache_commit_then_fail('#call')",
		"DO":   "DO $$BEGIN UPDATE cache_branding SET color = '#do' WHERE tenant_id = 7; COMMIT; RAISE EXCEPTION 'after the commit'; END$$",
	} {
		t.Run(name, func(t *testing.T) {
			writer := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
			sameRow(t, "before", reader, direct, 7)
			if _, err := writer.Exec(ctx, sql); err == nil {
				t.Fatal("it did not fail")
			}
			sameRow(t, "after it committed and failed", reader, direct, 7)
		})
	}
}

// TestCacheOrphanedWrite: a client leaves while its autocommit UPDATE
// waits for a row lock; the lock holder then lets go. Whatever becomes of
// the orphaned UPDATE, a reader through pgguard, before and after, gets
// what a direct connection gets.
func TestCacheOrphanedWrite(t *testing.T) {
	freshBranding(t)
	ctx := context.Background()
	g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{brandingRule()})
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	reader := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	locker := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	sameRow(t, "before", reader, direct, 5)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE cache_branding SET name = name WHERE tenant_id = 5"); err != nil {
		t.Fatal(err)
	}
	// A raw session: a driver would send a CancelRequest as it closes.
	orphan := rawSession(t, g.url("app"))
	sendQuery(t, orphan, "UPDATE cache_branding SET color = '#orphan' WHERE tenant_id = 5")
	waiting := func() bool {
		n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%#orphan%' AND wait_event_type = 'Lock'")
		return err == nil && n == 1
	}
	guardtest.WaitFor(t, "the UPDATE waits for the row lock", waiting)
	orphan.Close() // the client leaves mid-statement
	time.Sleep(50 * time.Millisecond)
	sameRow(t, "while the orphaned UPDATE waits", reader, direct, 5)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "the orphaned UPDATE's backend ends", func() bool {
		n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%#orphan%' AND state = 'active' AND pid <> pg_backend_pid()")
		return err == nil && n == 0
	})
	for range 3 {
		sameRow(t, "after the lock holder let go", reader, direct, 5)
	}
}
