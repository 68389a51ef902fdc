package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestQueryTimeoutAfterLateCancel (finding 3): a query_timeout cancel that
// lands after its query finished marks only that request; the next query on
// the server can be timed out again, and its own cancel is not renamed.
func TestQueryTimeoutAfterLateCancel(t *testing.T) {
	p, db := unitProxy(t, "session")
	pr := newPair(p, db, poolSession)
	b, c := pr.b, pr.c
	push := func() {
		b.mu.Lock()
		b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c}})
		b.mu.Unlock()
	}
	push()
	if !b.markTimedOut(c) {
		t.Fatal("first query could not be marked")
	}
	b.relay(enc(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	push()
	if !b.markTimedOut(c) {
		t.Fatal("query_timeout stopped working after a cancel that came too late")
	}
	b.relay(enc(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	push() // not timed out: a user's cancel keeps the server's own words
	b.relay(enc(t, &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "57014", Message: "canceling statement due to user request"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if out := pr.toClient.bytes(); !bytes.Contains(out, []byte("due to user request")) {
		t.Fatalf("the user's cancel was renamed: %q", out)
	}
}

// TestCancelHoldsServer (finding 4): a server whose client left while a
// CancelRequest for it is still in flight is not handed out (cancelling)
// until the cancel settles, whether it was released or reset.
func TestCancelHoldsServer(t *testing.T) {
	p, db := unitProxy(t, "session")
	for _, how := range []string{"release", "reset"} {
		pr := newPair(p, db, poolSession)
		b := pr.b
		b.mu.Lock()
		b.cancels = 1
		b.txStatus = 'T'
		b.mu.Unlock()
		if how == "release" {
			b.mu.Lock()
			b.unlinkLocked()
			b.mu.Unlock()
			b.enter(srvIdle)
		} else {
			b.reset(pr.c, true) // ROLLBACK, DISCARD ALL
			b.relay(enc(t, &pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
				&pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
		}
		if b.state != srvCancelling {
			t.Fatalf("%s: state %v with a cancel in flight, want cancelling", how, b.state)
		}
		for _, idle := range db.pool.Idle() {
			if idle == b {
				t.Fatalf("%s: a server with a cancel in flight is idle in the pool", how)
			}
		}
		b.mu.Lock()
		b.cancels = 0
		b.mu.Unlock()
		b.enter(srvIdle) // what cancelFor does once the request is delivered
		if b.state != srvIdle {
			t.Fatalf("%s: state %v after the cancel settled", how, b.state)
		}
	}
}

// TestPumpLeavesClientState (finding 5): the pump never writes a client's
// state; the ReadyForQuery that ends a transaction unlinks the server, and a
// client that already moved on (waiting for its next server) stays so.
func TestPumpLeavesClientState(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	pr := newPair(p, db, poolTransaction)
	b, c := pr.b, pr.c
	b.mu.Lock()
	b.queue.push(request{kind: reqClient, inflightQuery: inflightQuery{client: c}})
	b.mu.Unlock()
	c.setState(stateWaiting) // as if c read the reply and queued again before the pump finished
	b.relay(enc(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if c.server.Load() != nil {
		t.Fatal("server still linked after its transaction ended")
	}
	if s := c.currentState(); s != stateWaiting {
		t.Fatalf("client state %s, want waiting", stateNames[s])
	}
	if b.state != srvIdle {
		t.Fatalf("server state %v, want idle", b.state)
	}
}
