package proxy

import (
	"encoding/binary"
	"log/slog"
	"net"
	"testing"

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
