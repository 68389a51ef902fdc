package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func frontend(t testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
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

// TestRetryAfterFailedWrite (finding 6): a Parse whose write to a fresh
// server failed was never sent, so the retry on another server prepares
// the statement again instead of answering 42P05 for a name the client
// never got.
func TestRetryAfterFailedWrite(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	c := &client{p: p, db: db, pooling: poolTransaction}
	parse := frontend(t, &pgproto3.Parse{Name: "s1", Query: "SELECT 1"}, &pgproto3.Sync{})
	rewrite := func() []byte {
		pr := newPair(p, db, poolTransaction)
		pr.b.mu.Lock()
		defer pr.b.mu.Unlock()
		w := rewriter{c: c, b: pr.b, batch: pr.b.queue.pushed, max: 10}
		w.chunk(parse, 0)
		return w.out
	}
	ops := len(c.stmtOps)
	rewrite()          // the first attempt, whose write fails
	c.undoStmtOps(ops) // what send does before it retries
	if out := rewrite(); bytes.Contains(out, []byte("pgg_dup")) {
		t.Fatal("the retry answers 42P05 for a statement the client never got")
	}
	if c.stmts["s1"] == nil {
		t.Fatal("the retry did not record s1")
	}
}

// TestEvictionSparesBatchInFlight (finding 10): preparing a statement on a
// server at pool.max_prepared_statements never closes one that a batch
// still unanswered (this one included) has named: closing it would close
// the portal that batch bound from it.
func TestEvictionSparesBatchInFlight(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	pr := newPair(p, db, poolTransaction)
	c, b := pr.c, pr.b
	c.pooling = poolTransaction
	batch := frontend(t,
		&pgproto3.Parse{Name: "a", Query: "SELECT 1"},
		&pgproto3.Bind{PreparedStatement: "a"},
		&pgproto3.Parse{Name: "b", Query: "SELECT 2"}, // over max = 1
		&pgproto3.Bind{PreparedStatement: "b", DestinationPortal: "pb"},
		&pgproto3.Execute{}, &pgproto3.Execute{Portal: "pb"}, &pgproto3.Sync{})
	b.mu.Lock()
	w := rewriter{c: c, b: b, batch: b.queue.pushed, max: 1}
	w.chunk(batch, 0)
	b.mu.Unlock()
	first := c.stmts["a"].name
	closeA := append([]byte("S"+first), 0)
	if n := bytes.Count(w.out, closeA); n != 1 { // the Close pgguard sends before preparing it, no other
		t.Fatalf("the batch closes %s %d times; it has yet to execute its portal", first, n)
	}
	// Once the batch is answered, the next prepare may evict it.
	b.mu.Lock()
	b.queue.push(request{kind: reqClient})
	b.queue.pop()
	w = rewriter{c: c, b: b, batch: b.queue.pushed, max: 1}
	w.chunk(frontend(t, &pgproto3.Parse{Name: "c", Query: "SELECT 3"}, &pgproto3.Sync{}), 0)
	b.mu.Unlock()
	if !bytes.Contains(w.out, closeA) {
		t.Fatalf("a later batch did not evict %s", first)
	}
}
