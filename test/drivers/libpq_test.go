package drivers

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq" // database/sql driver "postgres"

	"github.com/pgguard/pgguard/internal/guardtest"
)

const (
	pqClients = 50 // concurrent goroutines, each on its own client connection
	pqRounds  = 5
)

// TestLibPQ runs database/sql with lib/pq: 50 goroutines on a sql.DB of 50
// connections to pgguard (2 server connections behind it), with transactions,
// statements prepared with db.Prepare (lib/pq names them per connection), and
// queries with arguments outside transactions.
//
// By default lib/pq runs a query with arguments as Parse+Describe+Sync of
// the unnamed statement, then Bind+Execute+Sync of it: two round trips, with
// the server free to go to another client in between. binary_parameters=yes
// sends it all at once; both must work.
func TestLibPQ(t *testing.T) {
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, variant := range []struct{ name, params string }{
			{"default", ""},
			{"binary_parameters", "&binary_parameters=yes"},
		} {
			t.Run(variant.name, func(t *testing.T) {
				table := "pq_" + variant.name
				freshTable(t, table, "client int, seq int, kind text, n int8")
				g := startGuardOver(t, n, txConfig())
				db, err := sql.Open("postgres", g.url()+variant.params)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				db.SetMaxOpenConns(pqClients)
				db.SetMaxIdleConns(pqClients)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()

				get, err := db.PrepareContext(ctx, fmt.Sprintf("SELECT n FROM %s WHERE client = $1 AND seq = $2 AND kind = $3", table))
				if err != nil {
					t.Fatal(err)
				}
				defer get.Close()

				errs := newCollect(pqClients)
				var wg sync.WaitGroup
				for id := 0; id < pqClients; id++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for seq := 0; seq < pqRounds; seq++ {
							if err := pqRound(ctx, db, get, table, id, seq); err != nil {
								errs.add(fmt.Errorf("client %d round %d: %w", id, seq, err))
								return
							}
						}
					}()
				}
				wg.Wait()
				errs.report(t)
				if t.Failed() && variant.params == "" {
					t.Log(unnamedBug)
				}
				if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s WHERE kind = 'tx' AND n = seq * 3 + 7", table)); n != pqClients*pqRounds {
					t.Errorf("%d rows committed with the values written, want %d", n, pqClients*pqRounds)
				}
				if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s WHERE kind <> 'tx'", table)); n != 0 {
					t.Errorf("%d rows of rolled-back transactions committed", n)
				}
			})
		}
	})
}

// pqRound is one round of a lib/pq client: a read-write transaction, a
// transaction that fails and rolls back, and queries outside transactions.
func pqRound(ctx context.Context, db *sql.DB, get *sql.Stmt, table string, id, seq int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2, 'tx', $3)", table), id, seq, seq); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET n = n * 3 + $3 WHERE client = $1 AND seq = $2", table), id, seq, 7); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	var n int64
	if err := tx.StmtContext(ctx, get).QueryRowContext(ctx, id, seq, "tx").Scan(&n); err != nil {
		return fmt.Errorf("prepared read inside the transaction: %w", err)
	}
	if n != int64(seq*3+7) {
		return fmt.Errorf("read %d inside the transaction, want %d", n, seq*3+7)
	}
	var count int
	if err := tx.QueryRowContext(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE client = $1", table), id).Scan(&count); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	if count != seq+1 {
		return fmt.Errorf("counted %d rows, want %d", count, seq+1)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}

	// Outside a transaction: a prepared statement and several queries with
	// arguments, each of which may run on either server.
	if err := get.QueryRowContext(ctx, id, seq, "tx").Scan(&n); err != nil || n != int64(seq*3+7) {
		return fmt.Errorf("prepared read after commit: %d, %w", n, err)
	}
	for k := 0; k < 4; k++ {
		var s string
		var v int64
		q := fmt.Sprintf("SELECT $1::text || '-%d', $2::int8 + %d", k, k)
		if err := db.QueryRowContext(ctx, q, fmt.Sprintf("c%d'%d", id, seq), int64(id*1000+seq)).Scan(&s, &v); err != nil {
			return fmt.Errorf("query %d with arguments: %w", k, err)
		}
		if want := fmt.Sprintf("c%d'%d-%d", id, seq, k); s != want || v != int64(id*1000+seq+k) {
			return fmt.Errorf("query %d with arguments: got %q %d, want %q %d", k, s, v, want, id*1000+seq+k)
		}
	}

	// A transaction that fails midway and rolls back.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2, 'doomed', 0)", table), id, seq); err != nil {
		return fmt.Errorf("doomed insert: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT 1 / 0"); sqlState(err) != "22012" {
		return fmt.Errorf("division by zero: got %v, want 22012", err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT $1::int", 1); sqlState(err) != "25P02" {
		return fmt.Errorf("in an aborted transaction: got %v, want 25P02", err)
	}
	return tx.Rollback()
}
