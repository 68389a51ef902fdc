package drivers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// errAbortCopy is what the aborting reader fails with; pgconn turns it into
// a CopyFail message.
var errAbortCopy = errors.New("client changed its mind")

// abortingReader yields n bytes of valid COPY text and then fails.
type abortingReader struct {
	data io.Reader
}

// Read implements io.Reader.
func (r *abortingReader) Read(p []byte) (int, error) {
	n, err := r.data.Read(p)
	if err == io.EOF {
		return n, errAbortCopy
	}
	return n, err
}

// copyRows returns COPY text for client id: rows (id, i, note) for i < n,
// with tabs, backslashes and non-ASCII escaped as COPY text requires.
func copyRows(id, n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "%d\t%d\tc%d row %d \\\\ tab\\there ✓ %s\n", id, i, id, i, strings.Repeat("x", i%50))
	}
	return sb.String()
}

// TestCopy runs COPY FROM STDIN and COPY TO STDOUT through transaction and
// session pooling: concurrent clients copy rows in and back out (text and
// binary COPY, inside and outside transactions, up to a few MB), one client
// aborts a COPY half way and keeps working, and the server's rows are checked.
func TestCopy(t *testing.T) {
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, mode := range []string{"transaction", "session"} {
			t.Run(mode, func(t *testing.T) {
				table := "copy_" + mode
				freshTable(t, table, "client int, i int, note text")
				cfg := txConfig()
				cfg.Pool.Mode = mode
				clients := 12
				if mode == "session" {
					cfg.Pool.Size, clients = 4, 4 // one server per client, for the whole session
				}
				g := startGuardOver(t, n, cfg)
				big := 20000 // rows client 0 copies, a few MB
				if n.Splits() {
					big = 2000 // 1.5 MB in 1-5 byte pieces takes half a minute
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				errs := newCollect(clients + 1)
				var wg sync.WaitGroup
				for id := 0; id < clients; id++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := copyClient(ctx, t, g, table, id, big); err != nil {
							errs.add(fmt.Errorf("client %d: %w", id, err))
						}
					}()
				}
				wg.Wait()
				errs.report(t)
				if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s", table)); n != int64(big+(clients-1)*200+clients*3) {
					t.Errorf("%d rows committed, want %d", n, big+(clients-1)*200+clients*3)
				}
				if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s WHERE i < 0", table)); n != 0 {
					t.Errorf("%d rows of aborted COPYs committed", n)
				}
			})
		}
	})
}

// copyClient copies rows in and out, aborts a COPY and checks the session
// still works; client 0 copies big rows, the others 200.
func copyClient(ctx context.Context, t *testing.T, g *guard, table string, id, big int) error {
	conn, err := pgx.ConnectConfig(ctx, pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	pc := conn.PgConn()
	n := 200
	if id == 0 {
		n = big
	}
	rows := copyRows(id, n)

	// COPY FROM STDIN outside a transaction, then back out.
	tag, err := pc.CopyFrom(ctx, strings.NewReader(rows), fmt.Sprintf("COPY %s (client, i, note) FROM STDIN", table))
	if err != nil {
		return fmt.Errorf("copy in: %w", err)
	}
	if tag.RowsAffected() != int64(n) {
		return fmt.Errorf("copy in: %d rows, want %d", tag.RowsAffected(), n)
	}
	var out bytes.Buffer
	if _, err := pc.CopyTo(ctx, &out, fmt.Sprintf("COPY (SELECT client, i, note FROM %s WHERE client = %d AND i >= 0 ORDER BY i) TO STDOUT", table, id)); err != nil {
		return fmt.Errorf("copy out: %w", err)
	}
	if out.String() != rows {
		return fmt.Errorf("copy out: %d bytes differ from the %d copied in", out.Len(), len(rows))
	}

	// A COPY the client aborts half way: CopyFail, error 57014, nothing kept.
	_, err = pc.CopyFrom(ctx, &abortingReader{strings.NewReader(copyRows(id, 50) + fmt.Sprintf("%d\t-1\tpartial", id))},
		fmt.Sprintf("COPY %s (client, i, note) FROM STDIN", table))
	if err == nil || sqlState(err) != "57014" {
		return fmt.Errorf("aborted copy: got %v, want 57014", err)
	}
	var k int
	if err := conn.QueryRow(ctx, "SELECT $1::int * 2", id).Scan(&k); err != nil || k != id*2 {
		return fmt.Errorf("after an aborted copy: %d, %w", k, err)
	}

	// The same abort inside a transaction; the transaction is aborted
	// until ROLLBACK, and then the connection works again.
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, -2, 'doomed')", table), id); err != nil {
		return err
	}
	_, err = pc.CopyFrom(ctx, &abortingReader{strings.NewReader(fmt.Sprintf("%d\t-3\tpartial\n", id))}, fmt.Sprintf("COPY %s (client, i, note) FROM STDIN", table))
	if sqlState(err) != "57014" {
		return fmt.Errorf("aborted copy in a transaction: got %v, want 57014", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); sqlState(err) != "25P02" {
		return fmt.Errorf("after an aborted copy in a transaction: got %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}

	// Text and binary COPY in one transaction, read back before COMMIT.
	tx, err = conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	src := [][]any{{id, 100000, "binary ✓"}, {id, 100001, "tab\there"}, {id, 100002, nil}}
	if got, err := tx.CopyFrom(ctx, pgx.Identifier{table}, []string{"client", "i", "note"}, pgx.CopyFromRows(src)); err != nil || got != 3 {
		return fmt.Errorf("binary copy in: %d rows, %w", got, err)
	}
	out.Reset()
	if _, err := pc.CopyTo(ctx, &out, fmt.Sprintf("COPY (SELECT i, note FROM %s WHERE client = %d AND i >= 100000 ORDER BY i) TO STDOUT (FORMAT csv)", table, id)); err != nil {
		return fmt.Errorf("copy out in a transaction: %w", err)
	}
	if want := "100000,binary ✓\n100001,tab\there\n100002,\n"; out.String() != want {
		return fmt.Errorf("copy out in a transaction: %q, want %q", out.String(), want)
	}
	return tx.Commit(ctx)
}
