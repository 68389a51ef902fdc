package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/metrics"
)

// testClient returns a client of a proxy that never dials, reading from
// the returned pipe end's peer, with max_message_size maxMsg.
func testClient(t *testing.T, mode poolMode, maxMsg int) (*client, net.Conn) {
	t.Helper()
	cfg := config.Default()
	cfg.MaxMessageSize = maxMsg
	cfg.Databases = map[string]*config.Database{"app": {Primary: "postgres://u@127.0.0.1:1/app"}}
	p, err := New(cfg, slog.New(slog.DiscardHandler), metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	conn, peer := net.Pipe()
	t.Cleanup(func() { conn.Close(); peer.Close() })
	c := &client{p: p, db: p.database("app"), conn: conn, out: newSock(conn), pooling: mode}
	return c, peer
}

// TestClientBufferGrowsAsBytesArrive: a header declaring a 100 MB Query does
// not make pgguard allocate 100 MB; the read buffer grows with the bytes that
// actually arrive (at most about twice them).
func TestClientBufferGrowsAsBytesArrive(t *testing.T) {
	c, peer := testClient(t, poolTransaction, 128<<20)
	const declared, sent = 100 << 20, 4 << 20
	go func() {
		hdr := []byte{'Q', 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], declared)
		peer.Write(hdr)
		chunk := make([]byte, 64<<10)
		for n := 0; n < sent; n += len(chunk) {
			if _, err := peer.Write(chunk); err != nil {
				return
			}
		}
	}()
	for c.w < 5+sent {
		if err := c.fill(); err != nil {
			t.Fatal(err)
		}
		if err := c.process(); err != nil {
			t.Fatal(err)
		}
		if limit := max(readBufSize, 2*c.w); cap(c.buf) > limit {
			t.Fatalf("read buffer of %d bytes with %d received (header declares %d)", cap(c.buf), c.w, declared)
		}
	}
	t.Logf("after %d bytes of a %d-byte message: buffer of %d bytes", c.w, declared, cap(c.buf))
}

// linkClient links c to a server connection over a pipe whose far end
// swallows what it is sent, and drains what c's peer is sent.
func linkClient(t *testing.T, c *client, peer net.Conn) {
	t.Helper()
	go io.Copy(io.Discard, peer)
	srv, far := net.Pipe()
	t.Cleanup(func() { srv.Close(); far.Close() })
	go io.Copy(io.Discard, far)
	b := newBackend(c.db, &pgconn.HijackedConn{Conn: srv, ParameterStatuses: map[string]string{}}, "primary")
	if !b.link(c) {
		t.Fatal("link failed")
	}
}

// feed writes msgs to c through peer and runs c's read loop until it has
// processed every byte.
func feed(t *testing.T, c *client, peer net.Conn, msgs []byte) {
	t.Helper()
	go peer.Write(msgs)
	for read := 0; read < len(msgs); {
		w := c.w
		if err := c.fill(); err != nil {
			t.Fatal(err)
		}
		read += c.w - w
		if err := c.process(); err != nil {
			t.Fatal(err)
		}
	}
}

// parseMsg and closeMsg encode a Parse or a statement Close of name.
func parseMsg(b []byte, name, sql string) []byte {
	b, at := beginMsg(b, 'P')
	b = append(append(append(append(b, name...), 0), sql...), 0, 0, 0)
	return endMsg(b, at)
}

func closeMsg(b []byte, name string) []byte {
	b, at := beginMsg(b, 'C')
	b = append(append(append(b, 'S'), name...), 0)
	return endMsg(b, at)
}

// TestSessionStmtsForgottenAndBounded: in session mode the statements a
// client prepares are remembered for the read-only guard until it closes
// them, and at most sessionStmtsMax of them (JDBC's S_1, S_2, ...).
func TestSessionStmtsForgottenAndBounded(t *testing.T) {
	c, peer := testClient(t, poolSession, 1<<20)
	linkClient(t, c, peer)
	var msgs []byte
	for i := range 3000 {
		name := fmt.Sprintf("S_%d", i)
		msgs = parseMsg(msgs, name, fmt.Sprintf("SELECT %d", i))
		msgs = closeMsg(msgs, name)
		msgs = append(msgs, 'S', 0, 0, 0, 4)
	}
	feed(t, c, peer, msgs)
	if n := len(c.stmts); n != 0 {
		t.Fatalf("%d statements remembered after each was closed", n)
	}
	msgs = msgs[:0]
	for i := range 3000 {
		msgs = parseMsg(msgs, fmt.Sprintf("S_%d", i), fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	feed(t, c, peer, append(msgs, 'S', 0, 0, 0, 4))
	if n := len(c.stmts); n == 0 || n > sessionStmtsMax {
		t.Fatalf("%d statements remembered of 3000 left open; want 1..%d", n, sessionStmtsMax)
	}
	if st := c.stmt([]byte("S_2999")); st == nil || string(queryText(st.parse)) != "INSERT INTO t VALUES (2999)" {
		t.Fatalf("the latest statement is not remembered: %+v", st)
	}
}
