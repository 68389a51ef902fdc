package proxy

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
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
		var cuts []int
		for pos := 0; ; {
			pos += 1 + rng.IntN(3000)
			if pos >= len(stream) {
				break
			}
			cuts = append(cuts, pos)
		}
		check("random cuts", cuts)
	}
}
