package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
)

const cachedSQL = "SELECT name FROM tenants WHERE id = $1"

// cachedClient is a transaction-mode client, with no server, of a proxy
// whose cache has a rule for cachedSQL and a named statement s1 of it.
func cachedClient(t testing.TB, p *Proxy, db *database) (*client, *captureConn) {
	t.Helper()
	cc := &captureConn{}
	c := &client{p: p, db: db, conn: cc, out: newSock(cc), pooling: poolTransaction, cached: new(clientCache)}
	c.want = newSessionWant(map[string]string{"application_name": "web"})
	c.setStmt("s1", &stmt{parse: append([]byte(cachedSQL), 0, 0, 0)})
	return c, cc
}

// cachedScenario is a stream of executions the cache answers: a simple
// Query; Parse/Bind/Describe/Execute/Sync of the unnamed statement; a Bind
// of it again without Describe; a named statement's, twice, once with a
// parameter larger than the read buffer; then Terminate. Each
// execution's entry is stored, keyed as fromCache keys it.
func cachedScenario(t *testing.T, p *Proxy, db *database) []byte {
	t.Helper()
	reply := func(described bool, v string) []byte {
		var msgs []pgproto3.BackendMessage
		if described {
			msgs = append(msgs, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("name"), DataTypeOID: 25, DataTypeSize: -1}}})
		}
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte(v)}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
		return enc(t, msgs...)
	}
	var stream []byte
	c, _ := cachedClient(t, p, db)
	step := func(described bool, v string, msgs ...pgproto3.FrontendMessage) {
		b := frontend(t, msgs...)
		x, found := c.scanExec(b)
		if found != wholeExec || x.n != len(b) {
			t.Fatalf("%q is not an execution the cache answers", b)
		}
		st, _ := x.statement()
		k, ok := p.Cache.Key(c.cacheSession(), &st)
		if !ok {
			t.Fatalf("no key for %q", b)
		}
		p.Cache.Get(context.Background(), k)
		if !p.Cache.Put(context.Background(), k, reply(described, v)) {
			t.Fatalf("not stored: %q", b)
		}
		if x.parse != nil {
			c.unnamed = x.parse
		}
		stream = append(stream, b...)
	}
	step(true, "simple", &pgproto3.Query{String: "SELECT name FROM tenants WHERE id = 1"})
	step(true, "unnamed", &pgproto3.Parse{Query: cachedSQL}, &pgproto3.Bind{Parameters: [][]byte{[]byte("2")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	step(false, "again", &pgproto3.Bind{Parameters: [][]byte{[]byte("3")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	step(true, "named", &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("4")}, ResultFormatCodes: []int16{1}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	// Larger than the read buffer: held back until whole.
	step(true, "big", &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{bytes.Repeat([]byte("9"), 40000)}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	return append(stream, 'X', 0, 0, 0, 4)
}

// TestCacheHitsChunking: the answers a client gets from the cache do not
// depend on how its messages were split into reads.
func TestCacheHitsChunking(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	cfg := *p.cfg.Load()
	cfg.Cache = []config.CacheRule{{Name: "t", Query: cachedSQL, TTL: config.D(time.Hour), MaxEntryBytes: 1 << 20}}
	p.cfg.Store(&cfg)
	rc, err := cache.New(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Cache = rc
	stream := cachedScenario(t, p, db)
	run := func(cuts []int) string {
		t.Helper()
		c, out := cachedClient(t, p, db)
		prev := 0
		var err error
		for _, cut := range append(cuts, len(stream)) {
			for piece := stream[prev:cut]; len(piece) > 0 && err == nil; {
				if c.buf == nil {
					c.buf = getReadBuf()
				}
				n := copy(c.buf[c.w:], piece)
				c.w += n
				piece = piece[n:]
				err = c.process()
			}
			prev = cut
		}
		if err != errTerminate {
			t.Fatalf("cuts %v: ended with %v, want Terminate (every execution answered without a server)", cuts, err)
		}
		return string(out.bytes())
	}
	want := run(nil)
	for _, v := range []string{"simple", "unnamed", "again", "named", "big"} {
		if !bytes.Contains([]byte(want), []byte(v)) {
			t.Fatalf("answers %q lack %q", want, v)
		}
	}
	if n := bytes.Count([]byte(want), []byte{'Z', 0, 0, 0, 5, 'I'}); n != 5 {
		t.Fatalf("%d ReadyForQuery in %q, want 5", n, want)
	}
	for i := 1; i < len(stream); i += 1 + i/256 { // every byte of the small messages, sparser in the big one
		if got := run([]int{i}); got != want {
			t.Fatalf("split at %d:\n got %q\nwant %q", i, got, want)
		}
	}
	ones := make([]int, 0, len(stream))
	for i := 1; i < len(stream); i++ {
		ones = append(ones, i)
	}
	if got := run(ones); got != want {
		t.Fatalf("one byte per read:\n got %q\nwant %q", got, want)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 200 {
		cuts := randomCuts(rng, len(stream), 3000)
		if got := run(cuts); got != want {
			t.Fatalf("cuts %v:\n got %q\nwant %q", cuts, got, want)
		}
	}
}

// FuzzScanExec: whatever a client sends, looking it up never panics, and
// what it consumes is whole messages.
func FuzzScanExec(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dSELECT 1\x00"))
	f.Add([]byte("B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04"))
	f.Add([]byte("P\x00\x00\x00\x08\x00x\x00\x00\x00B\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00"))
	p, db := unitProxy(f, "transaction")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _ := cachedClient(t, p, db)
		c.unnamed = []byte("SELECT 1\x00")
		x, found := c.scanExec(data)
		if found != wholeExec {
			return
		}
		if x.n > len(data) {
			t.Fatalf("consumed %d of %d bytes", x.n, len(data))
		}
		x.statement()
	})
}
