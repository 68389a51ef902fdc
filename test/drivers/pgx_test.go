package drivers

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// pgxModes are every QueryExecMode pgx v5 has.
var pgxModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

const (
	pgxClients = 50 // concurrent clients per mode, on 2 server connections
	pgxRounds  = 5  // rounds of the workload per client
	// pgxSplitRounds on a split network, where every byte costs a write
	// and a read: the workload is the same, repeated less.
	pgxSplitRounds = 2
	// pgxDistinct distinct statements per round: more than the statement
	// and description caches (capacity 4) hold, so they evict.
	pgxDistinct = 7
)

// TestPgxMatrix runs 50 pgx clients in each QueryExecMode through
// transaction pooling with 2 server connections, and once more in
// cache-statement mode with pool.max_prepared_statements = 3 so that servers
// evict statements too. Every client checks every value it reads; at the end
// the committed rows are checked on the server.
func TestPgxMatrix(t *testing.T) {
	type variant struct {
		name        string
		mode        pgx.QueryExecMode
		maxPrepared int // pool.max_prepared_statements; 0 keeps the default
	}
	var variants []variant
	for _, m := range pgxModes {
		variants = append(variants, variant{name: strings.ReplaceAll(m.String(), " ", "_"), mode: m})
	}
	variants = append(variants, variant{name: "cache_statement_max_prepared_3", mode: pgx.QueryExecModeCacheStatement, maxPrepared: 3})

	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				table := "pgx_" + v.name
				freshTable(t, table, "client int, seq int, kind text, note text, n int8")
				cfg := txConfig()
				if v.maxPrepared > 0 {
					cfg.Pool.MaxPreparedStatements = v.maxPrepared
				}
				g := startGuardOver(t, n, cfg)
				rounds := pgxRounds
				if n.Splits() {
					rounds = pgxSplitRounds
				}
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()

				errs := newCollect(pgxClients)
				var wg sync.WaitGroup
				start := time.Now()
				for id := 0; id < pgxClients; id++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						cl := &pgxClient{id: id, table: table, mode: v.mode, rounds: rounds}
						if err := cl.run(ctx, pgxConfig(t, g.url(), v.mode)); err != nil {
							errs.add(fmt.Errorf("client %d (%s): %w", id, v.mode, err))
						}
					}()
				}
				wg.Wait()
				errs.report(t)
				if t.Failed() && v.mode == pgx.QueryExecModeDescribeExec {
					t.Log(unnamedBug)
				}

				// What the clients committed, read directly from PostgreSQL.
				q := func(sql string) int64 { return queryInt(t, fmt.Sprintf(sql, table)) }
				if n := q("SELECT count(*) FROM %s WHERE kind = 'tx'"); n != int64(pgxClients*rounds) {
					t.Errorf("%d transaction rows committed, want %d", n, pgxClients*rounds)
				}
				if n := q("SELECT count(*) FROM %s WHERE kind = 'tx' AND n = seq + 1000 AND note = 'c' || client || '''s note #' || seq || ' ✓'"); n != int64(pgxClients*rounds) {
					t.Errorf("%d transaction rows have the values written, want %d", n, pgxClients*rounds)
				}
				if n := q("SELECT count(*) FROM %s WHERE kind = 'batch' AND n = 2 * seq + 1"); n != int64(pgxClients*rounds) {
					t.Errorf("%d batch rows committed with the values written, want %d", n, pgxClients*rounds)
				}
				if n := q("SELECT count(*) FROM %s WHERE kind = 'doomed'"); n != 0 {
					t.Errorf("%d rows of rolled-back work committed, want 0", n)
				}
				if n := q("SELECT count(DISTINCT (client, seq, kind)) FROM %s"); n != q("SELECT count(*) FROM %s") {
					t.Errorf("duplicate rows: %d distinct of %d", n, q("SELECT count(*) FROM %s"))
				}
				if v.maxPrepared > 0 {
					// Each server holds at most pool.max_prepared_statements.
					probe := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeSimpleProtocol))
					for i := 0; i < 6; i++ {
						var n int
						if err := probe.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n); err != nil {
							t.Fatal(err)
						}
						if n > v.maxPrepared {
							t.Fatalf("a server holds %d prepared statements, pool.max_prepared_statements = %d", n, v.maxPrepared)
						}
					}
				}
				t.Logf("%s: %d clients x %d rounds in %s", v.mode, pgxClients, rounds, time.Since(start).Round(time.Millisecond))
			})
		}
	})
}

// The SQL of the named statements every matrix client prepares.
const (
	getNSQL      = "SELECT n, note FROM %s WHERE client = $1 AND seq = $2 AND kind = $3"
	countKindSQL = "SELECT count(*) FROM %s WHERE client = $1 AND kind = $2"
)

// unnamedBug explains the failures of pgx's describe-exec mode and of lib/pq
// without binary_parameters.
const unnamedBug = "BUG: the unnamed prepared statement does not survive a Sync: a driver that sends Parse+Describe+Sync " +
	"and then Bind+Execute+Sync of the unnamed statement (pgx describe exec, lib/pq with arguments) gets its Bind run on " +
	"whatever server is free, which holds another client's unnamed statement (wrong results) or none (26000)"

// pgxClient is one client of the pgx matrix.
type pgxClient struct {
	conn   *pgx.Conn
	id     int
	table  string
	mode   pgx.QueryExecMode
	rounds int
}

// sql substitutes the client's table for every %s in format.
func (c *pgxClient) sql(format string) string {
	return strings.ReplaceAll(format, "%s", c.table)
}

// note is the text client id stores in round seq: quotes and non-ASCII
// survive every parameter path.
func note(id, seq int) string { return fmt.Sprintf("c%d's note #%d ✓", id, seq) }

// run connects and does the workload.
func (c *pgxClient) run(ctx context.Context, cc *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	c.conn = conn

	// Named statements prepared once, on whatever server, and used in every
	// later round, on servers that mostly lack them.
	if _, err := conn.Prepare(ctx, "get_n", c.sql(getNSQL)); err != nil {
		return fmt.Errorf("prepare get_n: %w", err)
	}
	if _, err := conn.Prepare(ctx, "count_kind", c.sql(countKindSQL)); err != nil {
		return fmt.Errorf("prepare count_kind: %w", err)
	}
	// A statement that fails to prepare leaves the session usable.
	if _, err := conn.Prepare(ctx, "broken", "SELEKT 1"); sqlState(err) != "42601" {
		return fmt.Errorf("prepare of a syntax error: got %v, want 42601", err)
	}

	for seq := 0; seq < c.rounds; seq++ {
		for _, step := range []func(context.Context, int) error{c.transaction, c.roundTrip, c.distinct, c.batch, c.failedTransaction, c.failedBatch} {
			if err := step(ctx, seq); err != nil {
				return fmt.Errorf("round %d: %w", seq, err)
			}
		}
	}
	return nil
}

// transaction inserts, counts, updates and reads back a row in one
// transaction, using a named statement prepared rounds ago.
func (c *pgxClient) transaction(ctx context.Context, seq int) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, c.sql("INSERT INTO %s (client, seq, kind, note, n) VALUES ($1, $2, 'tx', $3, $4)"), c.id, seq, note(c.id, seq), int64(seq)); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	var count int64
	if err := tx.QueryRow(ctx, "count_kind", c.id, "tx").Scan(&count); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	if count != int64(seq+1) {
		return fmt.Errorf("saw %d of its rows inside the transaction, want %d", count, seq+1)
	}
	tag, err := tx.Exec(ctx, c.sql("UPDATE %s SET n = n + $3 WHERE client = $1 AND seq = $2 AND kind = 'tx'"), c.id, seq, int64(1000))
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("update touched %d rows, want 1", tag.RowsAffected())
	}
	var n int64
	var text string
	if err := tx.QueryRow(ctx, "get_n", c.id, seq, "tx").Scan(&n, &text); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if n != int64(seq+1000) || text != note(c.id, seq) {
		return fmt.Errorf("read back n=%d note=%q, want %d %q", n, text, seq+1000, note(c.id, seq))
	}
	return tx.Commit(ctx)
}

// roundTrip sends parameters of many types outside a transaction and checks
// they come back unchanged, with results in the driver's default formats
// and, in the extended modes, forced to text.
func (c *pgxClient) roundTrip(ctx context.Context, seq int) error {
	at := time.Date(2024, 2, 29, 12, 30, 45, 123456000, time.UTC).Add(time.Duration(c.id*1000+seq) * time.Second)
	blob := []byte{0, 1, 2, 0xff, byte(c.id), byte(seq), '\\', '\''}
	want := fmt.Sprintf("%d|%g|%s|%x|%s|%t", int64(c.id)<<40+int64(seq), float64(c.id)+0.25, note(c.id, seq), blob, at.Format(time.RFC3339Nano), seq%2 == 0)
	const q = "SELECT $1::int8, $2::float8, $3::text, $4::bytea, $5::timestamptz, $6::bool"
	args := []any{int64(c.id)<<40 + int64(seq), float64(c.id) + 0.25, note(c.id, seq), blob, at, seq%2 == 0}
	scan := func(extra ...any) (string, error) {
		var (
			i  int64
			f  float64
			s  string
			b  []byte
			ts time.Time
			ok bool
		)
		if err := c.conn.QueryRow(ctx, q, append(extra, args...)...).Scan(&i, &f, &s, &b, &ts, &ok); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d|%g|%s|%x|%s|%t", i, f, s, b, ts.UTC().Format(time.RFC3339Nano), ok), nil
	}
	got, err := scan()
	if err != nil {
		return fmt.Errorf("round trip: %w", err)
	}
	if got != want {
		return fmt.Errorf("round trip: got %s, want %s", got, want)
	}
	if c.mode != pgx.QueryExecModeSimpleProtocol {
		got, err := scan(pgx.QueryResultFormats{pgx.TextFormatCode})
		if err != nil {
			return fmt.Errorf("round trip, text results: %w", err)
		}
		if got != want {
			return fmt.Errorf("round trip, text results: got %s, want %s", got, want)
		}
	}
	return nil
}

// distinct runs more distinct statements than the client's caches hold,
// outside a transaction, so that each lands on either server and the caches
// evict (pgx closes evicted prepared statements).
func (c *pgxClient) distinct(ctx context.Context, seq int) error {
	for k := 0; k < pgxDistinct; k++ {
		var got int64
		sql := fmt.Sprintf("SELECT $1::int8 * 10 + %d AS v%d", k, k)
		if err := c.conn.QueryRow(ctx, sql, int64(c.id*100+seq)).Scan(&got); err != nil {
			return fmt.Errorf("distinct statement %d: %w", k, err)
		}
		if want := int64((c.id*100+seq)*10 + k); got != want {
			return fmt.Errorf("distinct statement %d: got %d, want %d", k, got, want)
		}
	}
	return nil
}

// batch sends a pipeline of several statements (an implicit transaction)
// and checks each result.
func (c *pgxClient) batch(ctx context.Context, seq int) error {
	count, get := "count_kind", "get_n"
	if c.mode == pgx.QueryExecModeSimpleProtocol { // its batches take SQL only
		count, get = c.sql(countKindSQL), c.sql(getNSQL)
	}
	b := &pgx.Batch{}
	b.Queue(c.sql("INSERT INTO %s (client, seq, kind, n) VALUES ($1, $2, 'batch', $3)"), c.id, seq, int64(2*seq))
	b.Queue(count, c.id, "batch")
	b.Queue(c.sql("UPDATE %s SET n = n + 1 WHERE client = $1 AND seq = $2 AND kind = 'batch'"), c.id, seq)
	b.Queue(get, c.id, seq, "batch")
	b.Queue("SELECT $1::text || '/' || $2::int4", note(c.id, seq), seq)
	br := c.conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("batch insert: %w", err)
	}
	var n int64
	if err := br.QueryRow().Scan(&n); err != nil {
		return fmt.Errorf("batch count: %w", err)
	}
	if n != int64(seq+1) {
		return fmt.Errorf("batch count %d, want %d", n, seq+1)
	}
	if tag, err := br.Exec(); err != nil || tag.RowsAffected() != 1 {
		return fmt.Errorf("batch update: %v rows, %w", tag.RowsAffected(), err)
	}
	var text *string
	if err := br.QueryRow().Scan(&n, &text); err != nil {
		return fmt.Errorf("batch read back: %w", err)
	}
	if n != int64(2*seq+1) || text != nil {
		return fmt.Errorf("batch read back n=%d note=%v, want %d NULL", n, text, 2*seq+1)
	}
	var s string
	if err := br.QueryRow().Scan(&s); err != nil {
		return fmt.Errorf("batch concat: %w", err)
	}
	if want := fmt.Sprintf("%s/%d", note(c.id, seq), seq); s != want {
		return fmt.Errorf("batch concat %q, want %q", s, want)
	}
	return br.Close()
}

// failedTransaction hits an error mid-transaction: later statements fail
// with 25P02 until the rollback, nothing is committed, and the session
// goes on working.
func (c *pgxClient) failedTransaction(ctx context.Context, seq int) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, c.sql("INSERT INTO %s (client, seq, kind) VALUES ($1, $2, 'doomed')"), c.id, seq); err != nil {
		return fmt.Errorf("doomed insert: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1 / (0 * $1::int)", c.id); sqlState(err) != "22012" {
		return fmt.Errorf("division by zero: got %v, want 22012", err)
	}
	if _, err := tx.Exec(ctx, "count_kind", c.id, "tx"); sqlState(err) != "25P02" {
		return fmt.Errorf("statement in an aborted transaction: got %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	var count int64
	if err := c.conn.QueryRow(ctx, "count_kind", c.id, "doomed").Scan(&count); err != nil || count != 0 {
		return fmt.Errorf("after rollback: %d doomed rows, %v", count, err)
	}
	return nil
}

// failedBatch sends a pipeline whose middle statement fails: the server
// skips the rest up to Sync and the whole implicit transaction rolls back.
func (c *pgxClient) failedBatch(ctx context.Context, seq int) error {
	b := &pgx.Batch{}
	b.Queue(c.sql("INSERT INTO %s (client, seq, kind) VALUES ($1, $2, 'doomed')"), c.id, seq+100)
	b.Queue("SELECT 1 / (0 * $1::int)", c.id)
	b.Queue(c.sql("INSERT INTO %s (client, seq, kind) VALUES ($1, $2, 'doomed')"), c.id, seq+200)
	err := c.conn.SendBatch(ctx, b).Close()
	if sqlState(err) != "22012" {
		return fmt.Errorf("failing batch: got %v, want 22012", err)
	}
	var got []byte
	if err := c.conn.QueryRow(ctx, "SELECT $1::bytea", []byte("after")).Scan(&got); err != nil || !bytes.Equal(got, []byte("after")) {
		return fmt.Errorf("after a failed batch: %q %v", got, err)
	}
	return nil
}
