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
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
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
