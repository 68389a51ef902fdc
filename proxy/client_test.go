package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/metrics"
)

// clientScenario is a client's stream covering what the client reader
// inspects, streams or refuses: simple and extended queries, a named
// statement, a CopyData far larger than the read buffer (streamed), a Query
// larger than it (assembled), a write refused by the read-only switch in a
// simple Query and in the middle of an extended batch (the rest of which is
// discarded up to its Sync), and a Terminate.
func clientScenario(t testing.TB) []byte {
	t.Helper()
	var out []byte
	add := func(msgs ...pgproto3.FrontendMessage) {
		for _, m := range msgs {
			var err error
			if out, err = m.Encode(out); err != nil {
				t.Fatal(err)
			}
		}
	}
	add(&pgproto3.Query{String: "SELECT 1"},
		&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int"},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("4")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.CopyData{Data: bytes.Repeat([]byte("c"), 40000)},
		&pgproto3.Query{String: "SELECT '" + strings.Repeat("q", 20000) + "'"},
		&pgproto3.Query{String: "INSERT INTO t VALUES (1)"},
		&pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "w", Query: "UPDATE t SET a = 1"},
		&pgproto3.Bind{PreparedStatement: "w"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT 3"},
		&pgproto3.Terminate{})
	return out
}

// clientOutcome is what the client reader decided.
type clientOutcome struct {
	toServer, toClient string
	kinds              []requestKind
	stmts              []string
	err                string
}

// runClient feeds a client stream to a client linked (session mode) to a
// server, in the given pieces, as reads would deliver them.
func runClient(t testing.TB, p *Proxy, db *database, stream []byte, cuts []int) clientOutcome {
	pr := newPair(p, db, poolSession)
	c := pr.c
	var err error
	prev := 0
	for _, cut := range append(cuts, len(stream)) {
		for piece := stream[prev:cut]; len(piece) > 0 && err == nil; {
			if c.buf == nil {
				c.buf = getReadBuf()
			}
			n := copy(c.buf[c.w:], piece)
			if n == 0 {
				t.Fatalf("read buffer full at %d bytes", c.w)
			}
			c.w += n
			piece = piece[n:]
			err = c.process()
		}
		prev = cut
	}
	o := clientOutcome{toServer: string(pr.toServer.bytes()), toClient: string(pr.toClient.bytes())}
	if err != nil {
		o.err = err.Error()
	}
	pr.b.mu.Lock()
	for i := pr.b.queue.head; i < len(pr.b.queue.items); i++ {
		o.kinds = append(o.kinds, pr.b.queue.items[i].kind)
	}
	pr.b.mu.Unlock()
	for name := range c.stmts {
		o.stmts = append(o.stmts, name)
	}
	slices.Sort(o.stmts)
	return o
}

func sameClientOutcome(a, b clientOutcome) bool {
	return a.toServer == b.toServer && a.toClient == b.toClient && slices.Equal(a.kinds, b.kinds) &&
		slices.Equal(a.stmts, b.stmts) && a.err == b.err
}

// TestClientReaderChunking: what reaches the server, what the client is
// told and the requests queued do not depend on how the client's stream was
// split into reads.
func TestClientReaderChunking(t *testing.T) {
	p, db := unitProxy(t, "session")
	cfg := *p.cfg.Load()
	cfg.ReadOnly = true
	p.cfg.Store(&cfg)
	stream := clientScenario(t)
	want := runClient(t, p, db, stream, nil)
	if want.err != errTerminate.Error() {
		t.Fatalf("ended with %q, want Terminate", want.err)
	}
	// Requests: Q, Sync, the big Q, the refused INSERT's raise, the quiet
	// Sync ending the refused batch and its raise, then SELECT 3.
	wantKinds := []requestKind{reqClient, reqClient, reqClient, reqClient, reqQuietSync, reqClient, reqClient}
	if !slices.Equal(want.kinds, wantKinds) {
		t.Fatalf("requests %v, want %v", want.kinds, wantKinds)
	}
	if strings.Contains(want.toServer, "INSERT INTO") || strings.Contains(want.toServer, "UPDATE t") {
		t.Fatal("a refused write reached the server")
	}
	if !strings.Contains(want.toServer, strings.Repeat("c", 40000)) || !strings.Contains(want.toServer, "SELECT 3") {
		t.Fatal("the server did not get the whole stream")
	}
	check := func(name string, cuts []int) {
		t.Helper()
		if got := runClient(t, p, db, stream, cuts); !sameClientOutcome(got, want) {
			t.Fatalf("%s %v: got %d bytes to the server, %v, stmts %v, err %q; want %d, %v, %v, %q",
				name, cuts, len(got.toServer), got.kinds, got.stmts, got.err, len(want.toServer), want.kinds, want.stmts, want.err)
		}
	}
	for i := 1; i < len(stream); i += 1 + i/64 { // every byte of the messages, sparser inside the big ones
		check("split at", []int{i})
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		check("random cuts", randomCuts(rng, len(stream), 3000))
	}
}

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
// accepts every Parse, Close and Sync, and drains what c's peer is sent.
func linkClient(t *testing.T, c *client, peer net.Conn) {
	t.Helper()
	go io.Copy(io.Discard, peer)
	srv, far := net.Pipe()
	t.Cleanup(func() { srv.Close(); far.Close() })
	go func() {
		r := bufio.NewReader(far)
		var hdr [5]byte
		for {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return
			}
			if _, err := r.Discard(int(binary.BigEndian.Uint32(hdr[1:])) - 4); err != nil {
				return
			}
			switch hdr[0] {
			case 'P':
				far.Write([]byte{'1', 0, 0, 0, 4})
			case 'C':
				far.Write([]byte{'3', 0, 0, 0, 4})
			case 'S':
				far.Write([]byte{'Z', 0, 0, 0, 5, 'I'})
			}
		}
	}()
	b := newBackend(c.db, &pgconn.HijackedConn{Conn: srv, ParameterStatuses: map[string]string{}}, "primary")
	if !b.link(c) {
		t.Fatal("link failed")
	}
	go b.pump()
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

// BenchmarkClientHungUp is the cost of the peek a queued client's hand-over
// makes (hungUp), on a loopback TCP client.
func BenchmarkClientHungUp(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	conn, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	s := newSock(conn)
	c := &client{conn: conn, out: s, raw: s.raw}
	b.ReportAllocs()
	for b.Loop() {
		if c.hungUp() {
			b.Fatal("a live client seen as gone")
		}
	}
	peer.Close()
	time.Sleep(10 * time.Millisecond)
	if !c.hungUp() {
		b.Fatal("a client that closed not seen as gone")
	}
}
