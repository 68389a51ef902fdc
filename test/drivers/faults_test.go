package drivers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/faultnet"
	"github.com/pgguard/pgguard/internal/guardtest"
)

// Tests of pgguard on a faulty network (issue 13): server bytes split into
// 1-5 byte pieces, and connections reset in the middle of a message.

// faultModes are the exec modes the fault tests' sessions take in turn.
var faultModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeCacheDescribe,
}

// alive requires g to serve a new client, and that the split relays in
// front of its servers did split.
func (g *guard) alive(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
	if err != nil {
		t.Fatalf("pgguard no longer serves: %v", err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("pgguard no longer serves: %d %v", n, err)
	}
	for _, r := range g.relays {
		st := r.Stats()
		t.Logf("server bytes through the relay: %d in %d pieces (%d reads)", st.Bytes[faultnet.Down], st.Pieces[faultnet.Down], st.Reads[faultnet.Down])
	}
}

// TestSetResetStartupParam reproduces issue 13's crash: eight pgx
// sessions, each with a startup application_name of its own, SET it (by SET,
// or set_config in the session's exec mode), RESET it and read, through
// pgguard on 2 server connections — on the split network, whose server
// bytes arrive in 1-5 byte pieces, and for reference on the direct one. The
// RESET makes pgguard restore the startup value and forward the server's
// ParameterStatus for it. Every value is checked, including what the driver
// last heard in ParameterStatus, as on a direct connection.
func TestSetResetStartupParam(t *testing.T) {
	guardtest.EachNet(t, setResetStartupParam)
}

func setResetStartupParam(t *testing.T, n guardtest.Net) {
	const sessions, iters = 8, 30
	g := startGuardOver(t, n, txConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	errs := newCollect(sessions)
	var queries atomic.Int64
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := setResetSession(ctx, t, g, i, iters, &queries); err != nil {
				errs.add(fmt.Errorf("session %d (%s): %w", i, faultModes[i%len(faultModes)], err))
			}
		}()
	}
	wg.Wait()
	errs.report(t)
	t.Logf("%d sessions: %d queries, all checked", sessions, queries.Load())
	g.alive(t)
}

// setResetSession is session i of TestSetResetStartupParam.
func setResetSession(ctx context.Context, t *testing.T, g *guard, i, iters int, queries *atomic.Int64) error {
	mode := faultModes[i%len(faultModes)]
	cc := pgxConfig(t, g.url(), mode)
	start := fmt.Sprintf("start-%d", i)
	cc.RuntimeParams["application_name"] = start
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	// want checks the setting on the server and as last reported.
	want := func(step, v string) error {
		var got string
		var n int
		queries.Add(1)
		if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), $1::int", len(v)).Scan(&got, &n); err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
		if got != v || n != len(v) {
			return fmt.Errorf("%s: application_name %q (%d), want %q", step, got, n, v)
		}
		if rep := conn.PgConn().ParameterStatus("application_name"); rep != v {
			return fmt.Errorf("%s: application_name last reported %q, want %q", step, rep, v)
		}
		return nil
	}
	if err := want("at startup", start); err != nil {
		return err
	}
	for j := range iters {
		set := fmt.Sprintf("set-%d-%d", i, j)
		queries.Add(1)
		if j%2 == 0 || mode == pgx.QueryExecModeSimpleProtocol {
			_, err = conn.Exec(ctx, "SET application_name = '"+set+"'")
		} else { // in the extended protocol, a prepared statement in cache-statement mode
			_, err = conn.Exec(ctx, "SELECT set_config('application_name', $1, false)", set)
		}
		if err != nil {
			return fmt.Errorf("round %d: set: %w", j, err)
		}
		if err := want(fmt.Sprintf("round %d after SET", j), set); err != nil {
			return err
		}
		queries.Add(1)
		if _, err := conn.Exec(ctx, "RESET application_name"); err != nil {
			return fmt.Errorf("round %d: reset: %w", j, err)
		}
		if err := want(fmt.Sprintf("round %d after RESET", j), start); err != nil {
			return err
		}
		var s string
		queries.Add(1)
		if err := conn.QueryRow(ctx, "SELECT $1::text || repeat('.', $2::int)", set, j).Scan(&s); err != nil || s != set+strings.Repeat(".", j) {
			return fmt.Errorf("round %d: read %q, %v", j, s, err)
		}
	}
	return nil
}

// TestReadOnlyInBatches sends writes inside pipelines and transactions
// with the read-only switch on, through pgguard — on the split network,
// whose server bytes arrive in 1-5 byte pieces, and for reference on the
// direct one. pgguard refuses a write's Parse inside an open batch by
// ending the batch with a Sync of its own and swallowing that Sync's
// ReadyForQuery. Eight sessions observe every result and SQLSTATE, which
// must equal what the same sequence observes on a direct connection in a
// read-only transaction.
func TestReadOnlyInBatches(t *testing.T) {
	freshTable(t, "ro_split", "id int, v text")
	setup(t, "INSERT INTO ro_split VALUES (1, 'one'), (2, 'two')")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// pgx's exec mode sends a batch as one pipeline of Parse, Bind,
	// Describe, Execute per statement and one Sync: the write's Parse comes
	// in the open batch. (The modes that prepare or describe first see the
	// refusal of the write's Parse fail the whole batch, where PostgreSQL
	// refuses only its Execute: another behavior, not this test's subject.)
	const mode = pgx.QueryExecModeExec
	conn := direct(t, mode, map[string]string{"default_transaction_read_only": "on"})
	var obs []string
	for j := range 2 {
		obs = append(obs, roBatchRound(ctx, conn, j)...)
	}
	want := strings.Join(obs, " | ")
	t.Logf("on a direct read-only connection: %s", want)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) { readOnlyInBatches(t, n, want) })
}

func readOnlyInBatches(t *testing.T, n guardtest.Net, want string) {
	const sessions, iters = 8, 12
	const mode = pgx.QueryExecModeExec
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	g := startGuardOver(t, n, txConfig())
	g.SetReadOnly(true, "test")
	errs := newCollect(sessions)
	var rounds atomic.Int64
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.ConnectConfig(ctx, pgxConfig(t, g.url(), mode))
			if err != nil {
				errs.add(fmt.Errorf("session %d: connect: %w", i, err))
				return
			}
			defer conn.Close(context.Background())
			for k := range iters {
				j := k % 2 // rounds 0 and 1 as on the direct connection
				var obs []string
				if j == 1 {
					obs = append(obs, roBatchRound(ctx, conn, 0)...)
				}
				obs = append(obs, roBatchRound(ctx, conn, j)...)
				rounds.Add(1)
				if j == 1 {
					if got := strings.Join(obs, " | "); got != want {
						errs.add(fmt.Errorf("session %d round %d:\nthrough pgguard: %s\ndirect:          %s", i, k, got, want))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	errs.report(t)
	if n := queryInt(t, "SELECT count(*) FROM ro_split"); n != 2 {
		t.Errorf("%d rows in ro_split after writes refused, want 2", n)
	}
	t.Logf("%d sessions: %d rounds of refused writes in batches", sessions, rounds.Load())
	g.alive(t)
}

// roBatchRound runs round j of the read-only sequence on conn and returns
// what it observed: each result's value or SQLSTATE.
func roBatchRound(ctx context.Context, conn *pgx.Conn, j int) []string {
	var obs []string
	note := func(v any, err error) {
		if err != nil {
			obs = append(obs, "E:"+sqlState(err))
			return
		}
		obs = append(obs, fmt.Sprint(v))
	}
	// A pipeline with a read, a write and a read.
	b := &pgx.Batch{}
	b.Queue("SELECT $1::int + 1", j)
	b.Queue("INSERT INTO ro_split VALUES ($1, 'refused')", j)
	b.Queue("SELECT $1::text || '!'", "after")
	br := conn.SendBatch(ctx, b)
	var n int
	err := br.QueryRow().Scan(&n)
	note(n, err)
	_, err = br.Exec()
	note("insert", err)
	var s string
	err = br.QueryRow().Scan(&s)
	note(s, err)
	note("close", br.Close())
	// The session goes on.
	err = conn.QueryRow(ctx, "SELECT $1::int * 2", j+5).Scan(&n)
	note(n, err)
	// In a transaction: the refusal aborts it.
	tx, err := conn.Begin(ctx)
	note("begin", err)
	if err == nil {
		err = tx.QueryRow(ctx, "SELECT count(*) FROM ro_split WHERE id > $1", 0).Scan(&n)
		note(n, err)
		_, err = tx.Exec(ctx, "UPDATE ro_split SET v = $1", "refused")
		note("update", err)
		_, err = tx.Exec(ctx, "SELECT $1::int", 1)
		note("aborted", err)
		note("rollback", tx.Rollback(ctx))
	}
	// A pipeline that starts with the write.
	b = &pgx.Batch{}
	b.Queue("DELETE FROM ro_split WHERE id = $1", j)
	b.Queue("SELECT $1::int", 7)
	br = conn.SendBatch(ctx, b)
	_, err = br.Exec()
	note("delete", err)
	err = br.QueryRow().Scan(&n)
	note(n, err)
	note("close", br.Close())
	return obs
}

// TestResetMidMessage cuts connections in the middle of a message, on
// either side of pgguard, while other clients work: the client whose
// connection is cut gets an error promptly (no hang), every other client's
// every query succeeds with the right result, and pgguard goes on serving.
func TestResetMidMessage(t *testing.T) {
	t.Run("server connection", func(t *testing.T) {
		g := startGuardOver(t, guardtest.Split, txConfig())
		others := startOthers(t, g, 6)
		// The victim's result, a 60 kB DataRow, is cut a third of the
		// way. Its query waits for a lock the test holds, so that the cut
		// can be armed on its server connection alone.
		lock := direct(t, pgx.QueryExecModeExec, nil)
		if _, err := lock.Exec(context.Background(), "SELECT pg_advisory_lock(4242)"); err != nil {
			t.Fatal(err)
		}
		victim := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		const victimSQL = "SELECT pg_advisory_xact_lock(4242), repeat('x', 60000) AS victim"
		res := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var s string
			err := victim.QueryRow(ctx, victimSQL).Scan(nil, &s)
			if err == nil {
				err = fmt.Errorf("no error: got %d bytes", len(s))
			} else if ctx.Err() != nil {
				err = fmt.Errorf("hung until the deadline: %w", err)
			} else {
				err = errClean{err}
			}
			res <- err
		}()
		var port int64
		guardtest.WaitFor(t, "the victim's query to wait for the lock", func() bool {
			n, err := pg.QueryInt(context.Background(), "SELECT client_port FROM pg_stat_activity WHERE query = $1 AND wait_event_type = 'Lock'", victimSQL)
			port = n
			return err == nil && n > 0
		})
		c := relayConnFrom(t, g.relays[0], int(port))
		c.ResetAfter(faultnet.Down, 20000)
		began := time.Now()
		if _, err := lock.Exec(context.Background(), "SELECT pg_advisory_unlock(4242)"); err != nil {
			t.Fatal(err)
		}
		err := <-res
		var clean errClean
		if !errors.As(err, &clean) {
			t.Fatalf("victim: %v", err)
		}
		t.Logf("victim's error after %s: %v", time.Since(began).Round(time.Millisecond), clean.error)
		if got := g.relays[0].Stats().Resets; got != 1 {
			t.Errorf("%d connections reset by the relay, want 1", got)
		}
		others.stop(t)
		g.alive(t)
	})

	t.Run("client connection", func(t *testing.T) {
		freshTable(t, "reset_mid", "id int, v text")
		g := startGuardOver(t, guardtest.Split, txConfig())
		others := startOthers(t, g, 6)
		// The victim reaches pgguard through a relay of its own and is
		// cut inside a 100 kB Bind, in a transaction holding a server.
		cr := guardtest.Relay(t, g.addr, guardtest.Shapes{})
		victim := connect(t, pgxConfig(t, strings.Replace(g.url(), g.addr, cr.Addr(), 1), pgx.QueryExecModeExec))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tx, err := victim.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO reset_mid VALUES (1, 'uncommitted')"); err != nil {
			t.Fatal(err)
		}
		cr.Conns()[0].ResetAfter(faultnet.Up, 30000)
		_, err = tx.Exec(ctx, "INSERT INTO reset_mid VALUES (2, $1)", strings.Repeat("y", 100000))
		if err == nil || ctx.Err() != nil {
			t.Fatalf("victim: %v (context: %v)", err, ctx.Err())
		}
		t.Logf("victim's error: %v", err)
		// pgguard noticed the cut: its server went back to work, so
		// the others (sharing the other one meanwhile) keep going, and
		// the victim's transaction was rolled back.
		guardtest.WaitFor(t, "the victim's transaction to end", func() bool {
			n, err := pg.QueryInt(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND usename = 'tester'")
			return err == nil && n == 0
		})
		others.stop(t)
		if n := queryInt(t, "SELECT count(*) FROM reset_mid"); n != 0 {
			t.Errorf("%d rows of the cut transaction committed", n)
		}
		g.alive(t)
	})

	t.Run("random resets", func(t *testing.T) {
		// Server connections reset at random (one chunk in 40) for 3 s,
		// then not: clients either get their right result or an error,
		// never a wrong result or a hang, and all work once it stops.
		cfg := txConfig()
		n := guardtest.Net{Name: "resets", Relay: &guardtest.Shapes{Down: faultnet.Shape{MaxPiece: 5, ResetChance: 0.025}}}
		g := startGuardOver(t, n, cfg)
		const clients = 8
		var ok, failed atomic.Int64
		errs := newCollect(clients)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := &echoClient{t: t, g: g, id: i}
				defer cl.close()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					err := cl.query(k)
					var clean errClean
					switch {
					case err == nil:
						ok.Add(1)
					case errors.As(err, &clean):
						failed.Add(1)
					default:
						errs.add(fmt.Errorf("client %d: %w", i, err))
						return
					}
				}
			}()
		}
		time.Sleep(3 * time.Second)
		resets := g.relays[0].Stats().Resets
		g.relays[0].SetShape(faultnet.Down, guardtest.SplitDown)
		close(stop)
		wg.Wait()
		errs.report(t)
		t.Logf("during random resets: %d queries right, %d failed cleanly; %d server connections reset", ok.Load(), failed.Load(), resets)
		if resets == 0 {
			t.Error("no connection was reset: the test proves nothing")
		}
		// Resets off: every client works again, after reconnecting.
		for i := range clients {
			cl := &echoClient{t: t, g: g, id: 100 + i}
			for k := range 5 {
				if err := cl.query(k); err != nil {
					t.Errorf("client %d after the resets: %v", i, err)
					break
				}
			}
			cl.close()
		}
		g.alive(t)
	})
}

// errClean is an error a client got promptly, without a wrong result.
type errClean struct{ error }

func (e errClean) Unwrap() error { return e.error }

// relayConnFrom finds the relay connection whose target side has local
// port port (the server's pg_stat_activity.client_port).
func relayConnFrom(t *testing.T, r *faultnet.Relay, port int) *faultnet.Conn {
	t.Helper()
	suffix := fmt.Sprintf(":%d", port)
	for _, c := range r.Conns() {
		if a := c.Upstream(); a != nil && strings.HasSuffix(a.String(), suffix) {
			return c
		}
	}
	t.Fatalf("no relay connection from port %d", port)
	return nil
}

// echoClient runs checked queries, reconnecting when its session ends.
type echoClient struct {
	t    *testing.T
	g    *guard
	id   int
	conn *pgx.Conn
}

// query runs query k; an error that came within 10 s, with no wrong
// result, is an errClean.
func (c *echoClient) query(k int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.conn == nil || c.conn.IsClosed() {
		conn, err := pgx.ConnectConfig(ctx, pgxConfig(c.t, c.g.url(), faultModes[c.id%len(faultModes)]))
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("connect hung: %w", err)
			}
			return errClean{err}
		}
		c.conn = conn
	}
	want := fmt.Sprintf("c%d-%d ✓ %s", c.id, k, strings.Repeat("z", k%200))
	var got string
	var n int64
	err := c.conn.QueryRow(ctx, "SELECT $1::text, count(*) FROM generate_series(1, $2::int)", want, k%50+1).Scan(&got, &n)
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("query %d hung: %w", k, err)
	case err != nil:
		return errClean{err}
	case got != want || n != int64(k%50+1):
		return fmt.Errorf("query %d: got %q %d, want %q %d", k, got, n, want, k%50+1)
	}
	return nil
}

func (c *echoClient) close() {
	if c.conn != nil {
		c.conn.Close(context.Background())
	}
}

// others are clients querying in a loop while a test cuts another's
// connection; every one of their queries must succeed.
type others struct {
	n     int
	stopc chan struct{}
	wg    sync.WaitGroup
	errs  *collect
	ok    atomic.Int64
}

// startOthers starts n clients of g.
func startOthers(t *testing.T, g *guard, n int) *others {
	o := &others{n: n, stopc: make(chan struct{}), errs: newCollect(n)}
	for i := range n {
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			cl := &echoClient{t: t, g: g, id: i}
			defer cl.close()
			for k := 0; ; k++ {
				select {
				case <-o.stopc:
					return
				default:
				}
				if err := cl.query(k); err != nil {
					o.errs.add(fmt.Errorf("other client %d: %w", i, err))
					return
				}
				o.ok.Add(1)
			}
		}()
	}
	return o
}

// stop waits for the others to run 5 more queries each, then ends them and
// fails t with their errors.
func (o *others) stop(t *testing.T) {
	t.Helper()
	more := o.ok.Load() + int64(5*o.n)
	guardtest.WaitFor(t, "the other clients' queries", func() bool { return o.ok.Load() >= more || len(o.errs.ch) > 0 })
	close(o.stopc)
	o.wg.Wait()
	o.errs.report(t)
	t.Logf("other clients: %d queries, all right", o.ok.Load())
}
