package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/metrics"
)

// captureConn is a net.Conn that keeps what is written to it.
type captureConn struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *captureConn) Read([]byte) (int, error) { return 0, io.EOF }
func (c *captureConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

func (c *captureConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

// unitProxy is a proxy with database "app" that never connects anywhere:
// tests drive its backends and clients by hand.
func unitProxy(t testing.TB, mode string) (*Proxy, *database) {
	t.Helper()
	cfg := config.Default()
	cfg.Databases = map[string]*config.Database{"app": {Primary: "postgres://u:p@127.0.0.1:1/app"}}
	cfg.Pool.Mode = mode
	cfg.QueryLog.Path = ""
	p, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, p.dbs["app"]
}

// pair is a backend linked to a client, both writing into captures.
type pair struct {
	b        *backend
	c        *client
	toClient *captureConn
	toServer *captureConn
	fills    []*cacheFill // result cache collectors the scenario set
}

func newPair(p *Proxy, db *database, mode poolMode) *pair {
	sc, cc := &captureConn{}, &captureConn{}
	hc := &pgconn.HijackedConn{Conn: sc, ParameterStatuses: map[string]string{"application_name": "", "TimeZone": "UTC"}}
	b := newBackend(db, hc, "primary")
	c := &client{p: p, db: db, conn: cc, out: newSock(cc), pooling: mode}
	c.want = newSessionWant(map[string]string{"application_name": "startup-app"})
	b.link(c)
	b.profile, b.roGen, b.roForced = c.profile(), p.roGen.Load(), b.mustReadOnly()
	if b.roForced { // as a sync would have left it
		b.params[readOnlyParam] = "on"
	}
	return &pair{b: b, c: c, toClient: cc, toServer: sc}
}

// enc encodes backend messages into one stream.
func enc(t testing.TB, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// relayScenario sets up the queue of a fresh pair as pgguard would have
// written the requests, and returns the server's whole reply stream. It
// covers everything the pump inspects or injects: a parameter sync with its
// ParameterStatus announced, Parse/Close replies swallowed, a Sync pgguard
// added, an error replaced for query_timeout, a duplicate statement's error
// renamed, COPY, notices, notifications, a ParameterStatus the client
// caused, and the release at the end.
func relayScenario(t testing.TB, pr *pair) []byte {
	b, c := pr.b, pr.c
	big := bytes.Repeat([]byte("x"), 700)
	b.mu.Lock()
	defer b.mu.Unlock()
	var s []byte
	// 1. A parameter sync that restores a startup value: swallowed but for its ParameterStatus.
	b.queue.push(request{kind: reqParamSync, announce: true})
	s = append(s, enc(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("set_config"), DataTypeOID: 25, DataTypeSize: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("startup-app")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ParameterStatus{Name: "application_name", Value: "startup-app"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	// 1b. Two cacheable misses: one reply collected whole, one outgrowing
	// max_entry_bytes. (BindComplete is not part of what is stored: a hit
	// writes its own.)
	for _, max := range []int{1 << 20, 700} {
		f := &cacheFill{max: max}
		pr.fills = append(pr.fills, f)
		b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true, extended: true, fill: f}}})
		s = append(s, enc(t, &pgproto3.BindComplete{},
			&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("logo"), DataTypeOID: 17, DataTypeSize: -1}}},
			&pgproto3.DataRow{Values: [][]byte{big[:5]}}, &pgproto3.DataRow{Values: [][]byte{big}},
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	}
	// 2. A client batch whose statement pgguard prepared first (Close and
	// Parse swallowed), then the client's own Parse, rows and a notice.
	batch := b.queue.pushed
	b.replies = append(b.replies,
		pendingReply{typ: '3', swallow: true, batch: batch},
		pendingReply{typ: '1', swallow: true, batch: batch, key: 7},
		pendingReply{typ: '1', batch: batch})
	b.stmts.add(&stmt{key: 7, base: 7}, batch, 0)
	b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true, extended: true}}})
	s = append(s, enc(t,
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a"), DataTypeOID: 25, DataTypeSize: -1}}},
		&pgproto3.DataRow{Values: [][]byte{big}}, &pgproto3.DataRow{Values: [][]byte{big[:3]}},
		&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "hello"},
		&pgproto3.DataRow{Values: [][]byte{big}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 3")},
		&pgproto3.ReadyForQuery{TxStatus: 'T'})...)
	// 3. A batch ended by a Sync pgguard added: its ReadyForQuery is swallowed.
	b.queue.push(request{kind: reqQuietSync, inflightQuery: inflightQuery{client: c}})
	s = append(s, enc(t, &pgproto3.BindComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'T'})...)
	// 4. A query pgguard cancelled for query_timeout: its 57014 is replaced.
	b.queue.push(request{kind: reqClient, timedOut: true, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true}}})
	s = append(s, enc(t,
		&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "57014", Message: "canceling statement due to user request"},
		&pgproto3.ReadyForQuery{TxStatus: 'E'})...)
	// 5. A Parse of a name the client has: pgguard's "pgg_dup" error renamed.
	batch = b.queue.pushed
	b.replies = append(b.replies,
		pendingReply{typ: '3', swallow: true, batch: batch},
		pendingReply{typ: '1', swallow: true, batch: batch},
		pendingReply{typ: '1', batch: batch, op: &stmtOp{dup: "s1"}})
	b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true, extended: true}}})
	s = append(s, enc(t,
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{},
		&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P05", Message: `prepared statement "pgg_dup" already exists`},
		&pgproto3.ReadyForQuery{TxStatus: 'E'})...)
	// 6. ROLLBACK, then COPY out with a notification and a ParameterStatus
	// the client's SET caused; its transaction ends, and the server goes back.
	b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true}}})
	s = append(s, enc(t, &pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c, pendingQuery: pendingQuery{query: true}}})
	s = append(s, enc(t,
		&pgproto3.CopyOutResponse{OverallFormat: 0, ColumnFormatCodes: []uint16{0}},
		&pgproto3.CopyData{Data: big}, &pgproto3.CopyData{Data: big[:10]},
		&pgproto3.NotificationResponse{PID: 42, Channel: "ch", Payload: "payload"},
		&pgproto3.CopyDone{},
		&pgproto3.CommandComplete{CommandTag: []byte("COPY 2")},
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Europe/Berlin"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	// 7. After the release: a notice nobody asked for, then the server's
	// FATAL as it is terminated while idle.
	s = append(s, enc(t,
		&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "late"},
		&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})...)
	return s
}

// relayOutcome is everything a relay run decides.
type relayOutcome struct {
	toClient string
	state    serverState
	linked   bool
	queue    int
	replies  int
	tx       byte
	dead     bool
	params   map[string]string
	reported kvs
	stmts    int
	syncBad  bool
	fills    string
}

func (o relayOutcome) String() string {
	return fmt.Sprintf("state=%v linked=%v queue=%d replies=%d tx=%c dead=%v params=%v reported=%v stmts=%d syncBad=%v client bytes=%d fills=%q",
		o.state, o.linked, o.queue, o.replies, o.tx, o.dead, o.params, o.reported, o.stmts, o.syncBad, len(o.toClient), o.fills)
}

func outcome(pr *pair) relayOutcome {
	b := pr.b
	b.mu.Lock()
	defer b.mu.Unlock()
	var fills string
	for _, f := range pr.fills {
		fills += fmt.Sprintf("%q bad=%v tooBig=%v;", f.buf, f.bad, f.tooBig)
	}
	return relayOutcome{
		fills:    fills,
		toClient: string(pr.toClient.bytes()), state: b.state, linked: b.client != nil, queue: b.queue.len(),
		replies: len(b.replies), tx: b.txStatus, dead: b.dead.Load(), params: maps.Clone(b.params),
		reported: slices.Clone(pr.c.want.reported), stmts: b.stmts.lru.Len(), syncBad: b.syncBad,
	}
}

func sameOutcome(a, b relayOutcome) bool {
	return a.toClient == b.toClient && a.state == b.state && a.linked == b.linked && a.queue == b.queue &&
		a.replies == b.replies && a.tx == b.tx && a.dead == b.dead && maps.Equal(a.params, b.params) &&
		slices.Equal(a.reported, b.reported) && a.stmts == b.stmts && a.syncBad == b.syncBad && a.fills == b.fills
}

// runRelay feeds stream to a fresh pair in the given pieces.
func runRelay(t testing.TB, p *Proxy, db *database, cuts []int) relayOutcome {
	pr := newPair(p, db, poolTransaction)
	stream := relayScenario(t, pr)
	prev := 0
	for _, cut := range append(cuts, len(stream)) {
		if cut > prev {
			pr.b.relay(bytes.Clone(stream[prev:cut])) // a fresh buffer, as each read overwrites the last
		}
		prev = cut
	}
	return outcome(pr)
}

// messageCuts returns the cuts that deliver stream one message per read.
func messageCuts(stream []byte) []int {
	var cuts []int
	for pos := 0; pos < len(stream); {
		pos += 1 + int(uint32(stream[pos+1])<<24|uint32(stream[pos+2])<<16|uint32(stream[pos+3])<<8|uint32(stream[pos+4]))
		cuts = append(cuts, pos)
	}
	return cuts
}

// TestRelayChunking: the bytes a client receives and the server's final
// state do not depend on how the server's stream was split into reads:
// one message per read, every split into two reads at each byte, one byte
// per read, and random chunkings all give the same outcome.
func TestRelayChunking(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	stream := relayScenario(t, newPair(p, db, poolTransaction))
	want := runRelay(t, p, db, messageCuts(stream))
	if !want.dead || want.linked || want.queue != 0 || want.replies != 0 || want.tx != 'I' {
		t.Fatalf("one message per read: %v", want)
	}
	if want.params["TimeZone"] != "Europe/Berlin" || want.params["application_name"] != "startup-app" {
		t.Fatalf("server parameters %v", want.params)
	}
	if v, _ := want.reported.get("TimeZone"); v != "Europe/Berlin" {
		t.Fatalf("the client's SET TimeZone was not followed: %v", want.reported)
	}
	checkClientStream(t, []byte(want.toClient))
	pr := newPair(p, db, poolTransaction)
	relayScenario(t, pr)
	f0, f1 := pr.fills[0], pr.fills[1]
	reply := enc(t, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("logo"), DataTypeOID: 17, DataTypeSize: -1}}},
		&pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 5)}}, &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 700)}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")})
	if wantFills := fmt.Sprintf("%q bad=false tooBig=false;%q bad=true tooBig=true;", reply, []byte(nil)); want.fills != wantFills {
		t.Fatalf("cache collectors: %s, want %s (%v %v)", want.fills, wantFills, f0, f1)
	}

	check := func(name string, cuts []int) {
		t.Helper()
		if got := runRelay(t, p, db, cuts); !sameOutcome(got, want) {
			t.Fatalf("%s %v:\n got %v\nwant %v", name, cuts, got, want)
		}
	}
	check("whole stream in one read", nil)
	for i := 1; i < len(stream); i++ {
		check("split at", []int{i})
	}
	ones := make([]int, 0, len(stream))
	for i := 1; i < len(stream); i++ {
		ones = append(ones, i)
	}
	check("one byte per read", ones)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		check("random cuts", randomCuts(rng, len(stream), 40))
	}
}

// randomCuts splits a stream of n bytes into reads of 1 to maxPiece bytes.
func randomCuts(rng *rand.Rand, n, maxPiece int) []int {
	var cuts []int
	for pos := 1 + rng.IntN(maxPiece); pos < n; pos += 1 + rng.IntN(maxPiece) {
		cuts = append(cuts, pos)
	}
	return cuts
}

// checkClientStream decodes what the client received and checks it is what
// a direct connection would have sent.
func checkClientStream(t *testing.T, data []byte) {
	t.Helper()
	var types []byte
	var errs []string
	for pos := 0; pos < len(data); {
		typ := data[pos]
		n := int(uint32(data[pos+1])<<24 | uint32(data[pos+2])<<16 | uint32(data[pos+3])<<8 | uint32(data[pos+4]))
		body := data[pos+5 : pos+1+n]
		types = append(types, typ)
		if typ == 'E' {
			var e pgproto3.ErrorResponse
			if err := e.Decode(body); err != nil {
				t.Fatal(err)
			}
			errs = append(errs, e.Code+" "+e.Message)
		}
		pos += 1 + n
	}
	// S: announced; 2 T D D C Z twice (cache misses); 1: the client's
	// Parse; 2 T D D N D C Z; 2 (quiet Z swallowed); E Z; E Z; C Z; H d d A
	// c C S Z.
	if got, want := string(types), "S2TDDCZ2TDDCZ12TDDNDCZ2EZEZCZHddAcCSZ"; got != want {
		t.Fatalf("client received %s, want %s", got, want)
	}
	if len(errs) != 2 || !bytes.Contains([]byte(errs[0]), []byte("pool.query_timeout")) || errs[1] != `42P05 prepared statement "s1" already exists` {
		t.Fatalf("errors %q", errs)
	}
}
