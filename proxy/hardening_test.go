package proxy_test

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Tests of waits that must end: a client that stopped reading, a queued
// client that hung up.

// rawSession logs in through pgguard with pgconn and returns the bare
// socket, for a client that misbehaves at the protocol level.
func rawSession(t *testing.T, url string) net.Conn {
	t.Helper()
	hc, err := connectPg(t, url).Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return hc.Conn
}

// sendQuery writes a simple-protocol Query message.
func sendQuery(t *testing.T, conn net.Conn, sql string) {
	t.Helper()
	msg := []byte{'Q', 0, 0, 0, 0}
	msg = append(append(msg, sql...), 0)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
}

// floodStuckClient has a raw session run a query whose result fills every
// socket buffer between PostgreSQL and the client, which never reads: it
// returns once the server waits to write (pgguard's pump is blocked writing
// to the client) and the session's pgguard client id.
func floodStuckClient(t *testing.T, g *guard) uint32 {
	t.Helper()
	before := map[uint32]bool{}
	for _, c := range g.Clients() {
		before[c.ID] = true
	}
	conn := rawSession(t, g.url("app"))
	var id uint32
	for _, c := range g.Clients() {
		if !before[c.ID] {
			id = c.ID
		}
	}
	sendQuery(t, conn, "SELECT repeat('x', 1 << 20) FROM generate_series(1, 1024) /* stuck */")
	waitUntil(t, "the server to block writing to a client that does not read", func() bool {
		n, err := pg.QueryInt(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'ClientWrite' AND query LIKE '%/* stuck */'")
		return err == nil && n == 1
	})
	return id
}

// waitUntil polls cond for up to 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// within runs f and fails the test if it has not returned after d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() { f(); close(done) }()
	select {
	case <-done:
		t.Logf("%s took %s", what, time.Since(start).Round(time.Millisecond))
	case <-time.After(d):
		t.Fatalf("%s still blocked after %s", what, d)
	}
}

// TestClientThatStopsReading: a client that stopped reading while pgguard
// writes it a large result blocks neither KILL nor shutdown, and the rest
// of pgguard goes on serving.
func TestClientThatStopsReading(t *testing.T) {
	cfg := testConfig("transaction")
	g := startGuard(t, cfg)
	ctx := context.Background()

	id := floodStuckClient(t, g)
	within(t, 20*time.Second, "KILL of a client that does not read", func() {
		if !g.Kill(id) {
			t.Error("KILL: no such client")
		}
	})
	other := connect(t, g.url("app"), pgx.QueryExecModeExec)
	var n int
	if err := other.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("another client after the KILL: %d %v", n, err)
	}
	other.Close(ctx)

	floodStuckClient(t, g)
	within(t, 20*time.Second, "shutdown with a client that does not read", func() {
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		g.Shutdown(sctx)
	})
}

// TestQueuedClientHangsUp: a client that sends a statement while queued for
// a server and then closes its socket does not have it run when a server
// frees up; the server goes on to serve others.
func TestQueuedClientHangsUp(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			table := "hangup_" + mode
			if err := pg.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (v int); GRANT ALL ON "+table+" TO tester"); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(mode)
			cfg.Pool.Size = 1
			g := startGuard(t, cfg)
			holder := connect(t, g.url("app"), pgx.QueryExecModeExec)
			if _, err := holder.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
				t.Fatal(err)
			}
			if mode == "session" {
				// A session-mode client queues at login, for its session's
				// server (backendkey.go): one hangs up there.
				qctx, quit := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() {
					pc, err := pgconn.Connect(qctx, g.url("app"))
					if err == nil {
						pc.Close(ctx)
					}
					done <- err
				}()
				waitUntil(t, "the client to queue", func() bool { return g.Pools()[0].ClientsWaiting == 1 })
				quit()
				if err := <-done; err == nil {
					t.Fatal("a login queued for the only server connection succeeded")
				}
			} else {
				quitter := rawSession(t, g.url("app"))
				sendQuery(t, quitter, "INSERT INTO "+table+" VALUES (1)")
				waitUntil(t, "the client to queue", func() bool { return g.Pools()[0].ClientsWaiting == 1 })
				quitter.Close()
			}
			time.Sleep(100 * time.Millisecond) // let its FIN land
			if mode == "session" {
				holder.Close(ctx) // the server goes back only with the session
			} else if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the client that hung up to be gone", func() bool {
				p := g.Pools()[0]
				return p.ClientsWaiting == 0 && len(g.Clients()) <= 1
			})
			next := connect(t, g.url("app"), pgx.QueryExecModeExec)
			var n int
			if err := next.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("%d rows: the INSERT of a client that hung up while queued ran", n)
			}
		})
	}
}
