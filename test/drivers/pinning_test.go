package drivers

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
)

// busyClients keeps n clients running short transactions through g until
// the test ends, so that a client that is not pinned would land on another
// server between its transactions.
func busyClients(t *testing.T, g *guard, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				var v int
				if err := conn.QueryRow(ctx, "SELECT $1::int FROM pg_sleep(0.001)", i).Scan(&v); err != nil && ctx.Err() == nil {
					t.Errorf("background client %d: %v", i, err)
					return
				}
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// pinnedCount reads pgguard_clients_pinned_total{reason}.
func pinnedCount(t *testing.T, g *guard, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.metrics.ClientsPinned.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestPinnedSessionFeatures checks the session features transaction pooling
// cannot move between servers — LISTEN (with notify.pooled = false), session advisory locks, WITH HOLD
// cursors, temporary tables, SQL PREPARE — behave as on a direct connection
// while other clients keep both servers busy: the client is pinned to its
// server (counted in pgguard_clients_pinned_total and shown in SHOW
// CLIENTS), and its prepared
// statements from before the pin keep working.
func TestPinnedSessionFeatures(t *testing.T) {
	g := startTxGuard(t)
	busyClients(t, g, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// session opens a client in the default exec mode (named statements),
	// has it prepare a statement before it pins itself, and checks that the
	// statement still works after.
	session := func(t *testing.T) *pgx.Conn {
		conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement))
		var v int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&v); err != nil || v != 42 {
			t.Fatalf("before the pin: %d %v", v, err)
		}
		return conn
	}
	stillWorks := func(t *testing.T, conn *pgx.Conn) {
		t.Helper()
		var v int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 1).Scan(&v); err != nil || v != 2 {
			t.Errorf("BUG? statement prepared before the pin, used after it: %d %v", v, err)
		}
	}
	pinned := func(t *testing.T, reason string, before float64) {
		t.Helper()
		if got := pinnedCount(t, g, reason); got != before+1 {
			t.Errorf("pgguard_clients_pinned_total{reason=%q} went from %v to %v, want +1", reason, before, got)
		}
		shown := 0
		for _, c := range g.Clients() {
			if c.Pinned == reason {
				shown++
			}
		}
		if shown != 1 {
			t.Errorf("SHOW CLIENTS lists %d clients pinned for %q, want 1", shown, reason)
		}
	}

	// LISTEN pins only with notify.pooled = false; by default pgguard's
	// listener serves it (listen_test.go), and the same checks hold.
	t.Run("LISTEN", func(t *testing.T) {
		before := pinnedCount(t, g, "LISTEN")
		listener := session(t)
		if _, err := listener.Exec(ctx, "LISTEN drivers_chan"); err != nil {
			t.Fatal(err)
		}
		if got := pinnedCount(t, g, "LISTEN"); got != before {
			t.Errorf("pooled LISTEN pinned its client: pgguard_clients_pinned_total{reason=LISTEN} %v -> %v", before, got)
		}
		listenAcrossTransactions(t, ctx, g, listener)
		stillWorks(t, listener)
	})
	t.Run("LISTEN notify.pooled=false", func(t *testing.T) {
		cfg := txConfig()
		cfg.Notify.Pooled = false
		g := startGuard(t, cfg)
		busyClients(t, g, 3)
		listener := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement))
		if _, err := listener.Exec(ctx, "LISTEN drivers_chan"); err != nil {
			t.Fatal(err)
		}
		if got := pinnedCount(t, g, "LISTEN"); got != 1 {
			t.Errorf("pgguard_clients_pinned_total{reason=LISTEN} = %v, want 1", got)
		}
		listenAcrossTransactions(t, ctx, g, listener)
	})

	t.Run("advisory lock", func(t *testing.T) {
		before := pinnedCount(t, g, "session advisory lock")
		holder := session(t)
		other := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
			t.Fatal(err)
		}
		pinned(t, "session advisory lock", before)
		for i := 0; i < 5; i++ {
			var got bool
			if err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", int64(4242)).Scan(&got); err != nil || got {
				t.Fatalf("another client took the lock held across transactions: %v %v", got, err)
			}
			if err := holder.QueryRow(ctx, "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND pid = pg_backend_pid()", int64(4242)).Scan(&got); err != nil || !got {
				t.Fatalf("holder's transaction %d runs where the lock is not held: %v %v", i, got, err)
			}
		}
		var unlocked bool
		if err := holder.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", int64(4242)).Scan(&unlocked); err != nil || !unlocked {
			t.Fatalf("unlock by the holder: %v %v", unlocked, err)
		}
		var got bool
		if err := other.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242) AND pg_advisory_unlock(4242)").Scan(&got); err != nil || !got {
			t.Fatalf("lock not free after unlock: %v %v", got, err)
		}
		stillWorks(t, holder)
	})

	t.Run("WITH HOLD cursor", func(t *testing.T) {
		before := pinnedCount(t, g, "cursor WITH HOLD")
		conn := session(t)
		if _, err := conn.Exec(ctx, "DECLARE drivers_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 12) g"); err != nil {
			t.Fatal(err)
		}
		pinned(t, "cursor WITH HOLD", before)
		next := 1
		for i := 0; i < 4; i++ {
			rows, err := conn.Query(ctx, "FETCH 3 FROM drivers_cur")
			if err != nil {
				t.Fatal(err)
			}
			vals, err := pgx.CollectRows(rows, pgx.RowTo[int32])
			if err != nil {
				t.Fatalf("fetch %d: %v", i, err)
			}
			if fmt.Sprint(vals) != fmt.Sprint([]int32{int32(next), int32(next + 1), int32(next + 2)}) {
				t.Fatalf("fetch %d: got %v, want from %d", i, vals, next)
			}
			next += 3
		}
		if _, err := conn.Exec(ctx, "CLOSE drivers_cur"); err != nil {
			t.Fatal(err)
		}
		stillWorks(t, conn)
	})

	t.Run("temporary table", func(t *testing.T) {
		before := pinnedCount(t, g, "temporary table")
		conn := session(t)
		other := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE drivers_tmp (v int)"); err != nil {
			t.Fatal(err)
		}
		pinned(t, "temporary table", before)
		for i := 1; i <= 5; i++ {
			if _, err := conn.Exec(ctx, "INSERT INTO drivers_tmp VALUES ($1)", i); err != nil {
				t.Fatalf("insert %d into the temp table: %v", i, err)
			}
			var visible *string
			if err := other.QueryRow(ctx, "SELECT to_regclass('pg_temp.drivers_tmp')::text").Scan(&visible); err != nil || visible != nil {
				t.Fatalf("another client sees the temp table: %v %v", visible, err)
			}
		}
		var sum int
		if err := conn.QueryRow(ctx, "SELECT sum(v) FROM drivers_tmp").Scan(&sum); err != nil || sum != 15 {
			t.Fatalf("temp table sum %d %v, want 15", sum, err)
		}
		stillWorks(t, conn)
	})

	t.Run("SQL PREPARE", func(t *testing.T) {
		before := pinnedCount(t, g, "SQL PREPARE")
		conn := session(t)
		if _, err := conn.Exec(ctx, "PREPARE drivers_triple(int) AS SELECT $1 * 3"); err != nil {
			t.Fatal(err)
		}
		pinned(t, "SQL PREPARE", before)
		for i := 0; i < 5; i++ {
			var v int
			if err := conn.QueryRow(ctx, fmt.Sprintf("EXECUTE drivers_triple(%d)", i)).Scan(&v); err != nil || v != i*3 {
				t.Fatalf("EXECUTE %d: %d %v", i, v, err)
			}
		}
		if _, err := conn.Exec(ctx, "DEALLOCATE drivers_triple"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "EXECUTE drivers_triple(1)"); sqlState(err) != "26000" {
			t.Fatalf("EXECUTE after DEALLOCATE: got %v, want 26000", err)
		}
		if _, err := conn.Exec(ctx, "PREPARE drivers_a AS SELECT 1; PREPARE drivers_b AS SELECT 2"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'drivers_%'").Scan(&n); err != nil || n != 2 {
			t.Fatalf("pg_prepared_statements shows %d of drivers_a, drivers_b: %v", n, err)
		}
		if _, err := conn.Exec(ctx, "DEALLOCATE ALL"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "EXECUTE drivers_a"); sqlState(err) != "26000" {
			t.Fatalf("EXECUTE after DEALLOCATE ALL: got %v, want 26000", err)
		}
		// On a direct connection DEALLOCATE ALL drops the driver's
		// protocol-level statements too; pgx's cache does not know, so
		// only a fresh statement is expected to work.
		var v int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 100", 1).Scan(&v); err != nil || v != 101 {
			t.Fatalf("fresh statement after DEALLOCATE ALL: %d %v", v, err)
		}
	})

	// A pinned client's server goes back clean when it leaves: a new client
	// on the same server sees none of its session state.
	t.Run("released clean", func(t *testing.T) {
		conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		for i := 0; i < 10; i++ {
			var listens, locks, temps, prepared int
			err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_listening_channels()),
				(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
				(SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND pg_table_is_visible(oid)),
				(SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'drivers_%' OR name LIKE 'stmtcache_%')`).Scan(&listens, &locks, &temps, &prepared)
			if err != nil {
				t.Fatal(err)
			}
			if listens+locks+temps+prepared != 0 {
				t.Fatalf("state of pinned clients left on a server: %d channels, %d advisory locks, %d temp tables, %d prepared statements", listens, locks, temps, prepared)
			}
		}
	})
}

// listenAcrossTransactions has a client that LISTENs run transactions
// between notifications another client sends: each arrives.
func listenAcrossTransactions(t *testing.T, ctx context.Context, g *guard, listener *pgx.Conn) {
	t.Helper()
	notifier := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
	for i := 0; i < 5; i++ {
		// The listener runs transactions between notifications.
		var v int
		if err := listener.QueryRow(ctx, "SELECT $1::int * 2", i).Scan(&v); err != nil || v != i*2 {
			t.Fatalf("listener transaction %d: %d %v", i, v, err)
		}
		payload := fmt.Sprintf("payload %d ✓", i)
		if _, err := notifier.Exec(ctx, "SELECT pg_notify('drivers_chan', $1)", payload); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("notification %d not delivered: %v", i, err)
		}
		if n.Channel != "drivers_chan" || n.Payload != payload {
			t.Fatalf("notification %d: got %s %q, want drivers_chan %q", i, n.Channel, n.Payload, payload)
		}
	}
}
