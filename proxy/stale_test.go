package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// wire drives a linked pair by hand: what the client sends is rewritten as
// prepareSend does, what the server answers is relayed by the pump.
type wire struct {
	t  *testing.T
	pr *pair
}

func newWire(t *testing.T) *wire {
	p, db := unitProxy(t, "transaction")
	pr := newPair(p, db, poolTransaction)
	return &wire{t: t, pr: pr}
}

// send returns what pgguard writes to the server for msgs.
func (w *wire) send(msgs ...pgproto3.FrontendMessage) []byte {
	w.t.Helper()
	c := w.pr.c
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			c.queued = append(c.queued, pendingQuery{query: true})
		}
	}
	out, ok := w.pr.b.prepareSend(c, frontend(w.t, msgs...), 0, false, true)
	if !ok {
		w.t.Fatal("prepareSend failed")
	}
	c.sentUnnamed()
	c.sent()
	return bytes.Clone(out)
}

// reply relays msgs from the server and returns what the client got.
func (w *wire) reply(msgs ...pgproto3.BackendMessage) []byte {
	w.t.Helper()
	before := len(w.pr.toClient.bytes())
	w.pr.b.relay(enc(w.t, msgs...))
	return w.pr.toClient.bytes()[before:]
}

// staleErr is PostgreSQL's error for a statement whose result type changed.
var staleErr = &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
	Message: "cached plan must not change result type", File: "plancache.c", Line: 720, Routine: "RevalidateCachedQuery"}

// TestStaleStatementReplayed: once a server answers a client's statement
// with "cached plan must not change result type", that statement keeps
// failing with the same error, also where the server no longer holds it,
// and the stale copy is closed; the same text prepared again gets a new
// server name and is prepared afresh.
func TestStaleStatementReplayed(t *testing.T) {
	w := newWire(t)
	b, c := w.pr.b, w.pr.c
	const sql = "SELECT * FROM t"
	w.send(&pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Sync{})
	w.reply(&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	old := c.stmts["s1"].name

	out := w.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if !bytes.Contains(out, []byte(old+"\x00")) {
		t.Fatalf("Bind does not name %s: %q", old, out)
	}
	first := w.reply(staleErr, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	if !bytes.Contains(first, []byte("RevalidateCachedQuery")) {
		t.Fatalf("the client did not get the server's error: %q", first)
	}

	out = w.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if bytes.Contains(out, []byte(old+"\x00")) || !bytes.Contains(out, []byte("pgg_stale_")) {
		t.Fatalf("a Bind of the stale statement names %q", out)
	}
	i := bytes.Index(out, []byte("pgg_stale_"))
	name := string(out[i : i+bytes.IndexByte(out[i:], 0)])
	again := w.reply(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "26000",
		Message: `prepared statement "` + name + `" does not exist`}, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	if want := first[:len(first)-6]; !bytes.Equal(again[:len(again)-6], want) {
		t.Fatalf("the stale statement's error is not replayed:\ngot  %q\nwant %q", again, want)
	}

	out = w.send(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Sync{})
	if !bytes.Contains(out, append([]byte("S"+old), 0)) {
		t.Errorf("the stale copy %s is not closed: %q", old, out)
	}
	if bytes.Contains(out, []byte("pgg_noop")) || c.stmts["s1"].name == old {
		t.Errorf("the text prepared again is answered from the stale copy: %q", out)
	}
	if _, held := b.stmts.byID[c.stmts["s1"].key]; !held {
		t.Error("the new copy is not recorded")
	}
}

// TestTypeGoneStatementPreparedAgain: after "cache lookup failed for type",
// the server's copy of the statement is prepared again before its next use,
// under the same name, and nothing is replayed.
func TestTypeGoneStatementPreparedAgain(t *testing.T) {
	w := newWire(t)
	c := w.pr.c
	w.send(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::mood"}, &pgproto3.Sync{})
	w.reply(&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	name := c.stmts["s1"].name
	w.send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("sad")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	w.reply(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "XX000", Message: "cache lookup failed for type 16408"},
		&pgproto3.ReadyForQuery{TxStatus: 'E'})
	out := w.send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("sad")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	parse := append([]byte(name+"\x00"), "SELECT $1::mood"...)
	if !bytes.Contains(out, parse) || bytes.Contains(out, []byte("pgg_stale_")) {
		t.Fatalf("the statement is not prepared again before its Bind: %q", out)
	}
}

// TestStaleCandidates: which statements a failing batch may have failed
// on: those it named and did not prepare itself.
func TestStaleCandidates(t *testing.T) {
	w := newWire(t)
	b, c := w.pr.b, w.pr.c
	w.send(&pgproto3.Parse{Name: "a", Query: "SELECT 1"}, &pgproto3.Parse{Name: "b", Query: "SELECT 2"}, &pgproto3.Sync{})
	w.reply(&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{},
		&pgproto3.ReadyForQuery{TxStatus: 'T'})
	keyA, keyB := c.stmts["a"].key, c.stmts["b"].key
	// A batch naming a, and preparing and naming c: only a is a candidate.
	w.send(&pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "c", Query: "SELECT 3"}, &pgproto3.Bind{PreparedStatement: "c"}, &pgproto3.Sync{})
	w.reply(staleErr, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	keys := &b.db.stmtKeys
	if _, stale := keys.stale(keyA, 0); !stale {
		t.Error("a, the one candidate, is not known stale")
	}
	if _, stale := keys.stale(keyB, 0); stale {
		t.Error("b, which the batch did not name, is known stale")
	}
	if _, stale := keys.stale(c.stmts["c"].key, 0); stale {
		t.Error("c, which the batch prepared itself, is known stale")
	}
	if keys.key(c.stmts["b"].base) == keyB {
		t.Error("the first stale statement of an epoch does not start a new one")
	}
	// A statement prepared under another search_path than the client has
	// now may fail for that alone: it is no candidate.
	b.mu.Lock()
	c.want.custom.set("search_path", "SET search_path = other")
	b.mu.Unlock()
	w.send(&pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	w.reply(staleErr, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	if _, stale := keys.stale(keyB, 0); stale {
		t.Error("b, prepared under another search_path, is known stale")
	}
}

func TestStmtKeys(t *testing.T) {
	var k stmtKeys
	if k.key(42) != 42 {
		t.Fatal("before any change a text's key is its base")
	}
	k.schemaChanged()
	k1 := k.key(42)
	if k1 == 42 || k.key(43) == k1 {
		t.Fatal("a schema change gives texts new, distinct keys")
	}
	// A copy of this epoch found stale starts another; one of an older
	// epoch does not.
	k.found([]serverStmt{{key: k1, base: 42, seq: k.seq()}}, enc(t, staleErr)[5:])
	k2 := k.key(42)
	if k2 == k1 {
		t.Fatal("a stale copy of the current epoch does not start a new epoch")
	}
	k.found([]serverStmt{{key: 7, base: 7}}, enc(t, staleErr)[5:])
	if k.key(42) != k2 {
		t.Fatal("a stale copy of an older epoch starts a new one")
	}
	if replay, stale := k.stale(k1, k.seq()); !stale || replay == nil {
		t.Fatal("a key whose result type changed is stale for every copy, with its error")
	}
	// A type gone: copies prepared before the finding are stale, later ones not.
	before := k.seq()
	k.found([]serverStmt{{key: 9, base: 9}, {key: 10, base: 10}},
		enc(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX000", Message: "cache lookup failed for type 1"})[5:])
	for _, key := range []uint64{9, 10} {
		if replay, stale := k.stale(key, before); !stale || replay != nil {
			t.Errorf("copy of %d prepared before: stale %v, replay %q", key, stale, replay)
		}
		if _, stale := k.stale(key, k.seq()); stale {
			t.Errorf("copy of %d prepared after the finding is stale", key)
		}
	}
}

func TestStaleStatementError(t *testing.T) {
	for _, c := range []struct {
		e    *pgproto3.ErrorResponse
		want bool
	}{
		{staleErr, true},
		{&pgproto3.ErrorResponse{Code: "0A000", Message: "cached plan must not change result type"}, true},
		{&pgproto3.ErrorResponse{Code: "0A000", Message: "le plan en cache ne doit pas changer", Routine: "RevalidateCachedQuery"}, true},
		{&pgproto3.ErrorResponse{Code: "0A000", Message: "cannot do that"}, false},
		{&pgproto3.ErrorResponse{Code: "XX000", Message: "cache lookup failed for type 16408"}, true},
		{&pgproto3.ErrorResponse{Code: "XX000", Message: "Couldn't connect to compute node"}, false},
		{&pgproto3.ErrorResponse{Code: "22012", Message: "division by zero"}, false},
	} {
		body := enc(t, c.e)[5:]
		if got := staleStatementError(c.e.Code, body); got != c.want {
			t.Errorf("%s %q: %v, want %v", c.e.Code, c.e.Message, got, c.want)
		}
	}
}

// TestDeallocateRewritten: a client's SQL DEALLOCATE of a statement it
// prepared with Parse deallocates a throwaway statement pgguard prepares
// first, in a hidden query; the name is the client's no more unless the
// server fails it.
func TestDeallocateRewritten(t *testing.T) {
	w := newWire(t)
	b, c := w.pr.b, w.pr.c
	w.send(&pgproto3.Parse{Name: "ps", Query: "SELECT 1"}, &pgproto3.Sync{})
	w.reply(&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'T'})

	out := w.send(&pgproto3.Query{String: "DEALLOCATE ps"})
	want := frontend(t, &pgproto3.Query{String: "PREPARE pgg_dealloc AS SELECT"}, &pgproto3.Query{String: "DEALLOCATE pgg_dealloc"})
	if !bytes.Equal(out, want) {
		t.Fatalf("sent %q, want %q", out, want)
	}
	if c.stmts["ps"] != nil {
		t.Fatal("ps is still the client's")
	}
	got := w.reply(&pgproto3.CommandComplete{CommandTag: []byte("PREPARE")}, &pgproto3.ReadyForQuery{TxStatus: 'T'},
		&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	if want := enc(t, &pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")}, &pgproto3.ReadyForQuery{TxStatus: 'T'}); !bytes.Equal(got, want) {
		t.Fatalf("the client got %q, want %q", got, want)
	}

	// In an aborted transaction both fail; the client sees its own error
	// once, and keeps the statement.
	w.send(&pgproto3.Parse{Name: "ps", Query: "SELECT 1"}, &pgproto3.Sync{})
	w.reply(&pgproto3.ParseComplete{}, &pgproto3.CloseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	w.send(&pgproto3.Query{String: "DEALLOCATE ps"})
	aborted := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02", Message: "current transaction is aborted"}
	got = w.reply(aborted, &pgproto3.ReadyForQuery{TxStatus: 'E'}, aborted, &pgproto3.ReadyForQuery{TxStatus: 'E'})
	if want := enc(t, aborted, &pgproto3.ReadyForQuery{TxStatus: 'E'}); !bytes.Equal(got, want) {
		t.Fatalf("the client got %q, want %q", got, want)
	}
	c.awaitStmtOps()
	if c.stmts["ps"] == nil {
		t.Fatal("a DEALLOCATE the server failed removed the statement")
	}

	// Inside an extended-protocol batch it is left to the server.
	out = w.send(&pgproto3.Bind{PreparedStatement: "ps"}, &pgproto3.Query{String: "DEALLOCATE ps"})
	if bytes.Contains(out, []byte("pgg_dealloc")) {
		t.Fatalf("rewritten inside an open batch: %q", out)
	}
	_ = b
}

// TestUnnamedInStreamOrder: in a chunk that Binds the unnamed statement
// before parsing the next one, the Bind gets the statement the client
// parsed before the chunk, re-parsed on this server, and the one parsed in
// the chunk is the client's afterwards.
func TestUnnamedInStreamOrder(t *testing.T) {
	w := newWire(t)
	b, c := w.pr.b, w.pr.c
	// The client parsed "SELECT $1::int" on another server.
	c.unnamed, c.unnamedGen = []byte("SELECT $1::int\x00\x00\x00"), 1
	c.unnamedSeen = 1 // process saw the Parse in the chunk
	c.unnamedNext = append(c.unnamedNext[:0], "SELECT 2\x00\x00\x00"...)
	out := w.send(&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	want := frontend(t, &pgproto3.Parse{Query: "SELECT $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if !bytes.Equal(out, want) {
		t.Fatalf("sent %q\nwant %q", out, want)
	}
	if string(queryText(c.unnamed)) != "SELECT 2" || b.unnamedOwner != c || b.unnamedGen != c.unnamedGen {
		t.Fatalf("afterwards the client's unnamed statement is %q (server's owner %p gen %d, client's %d)",
			c.unnamed, b.unnamedOwner, b.unnamedGen, c.unnamedGen)
	}
}
