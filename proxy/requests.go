package proxy

import (
	"time"
)

// The queue of outstanding requests (PgBouncer's outstanding_requests, in
// Go). Every write to a server that the server answers with a
// ReadyForQuery pushes one request first, under the backend's mu; the pump
// pops it at that ReadyForQuery. The request at the head decides what
// becomes of every reply before it: forwarded to the client, swallowed, or
// replaced with the client's own error text. Adding a kind of injected
// request means adding a kind here, not another counter.

// requestKind is who asked for a request and so who sees its replies.
type requestKind uint8

const (
	reqClient    requestKind = iota // a client's sync point (Query, Sync, FunctionCall): forwarded
	reqQuietSync                    // a Sync pgguard added to end a client's open batch: forwarded but for its ReadyForQuery
	reqParamSync                    // pgguard's session parameter sync: swallowed (ParameterStatus forwarded when announce)
	reqReset                        // pgguard's ROLLBACK or DISCARD ALL after the client left: swallowed
	reqHidden                       // pgguard's query ahead of a client's, in its link: swallowed, errors included
	reqProbe                        // pgguard's query whose row it reads (probe, replica.go): swallowed
	reqLearn                        // pgguard's question of what the session holds (learn.go): read by pgguard, swallowed
)

// request is one outstanding ReadyForQuery and what to do with its replies.
type request struct {
	inflightQuery // the query log's record (client requests)
	kind          requestKind
	announce      bool      // reqParamSync: it restores startup values the client must hear of
	timedOut      bool      // reqClient: pgguard cancelled it for pool.query_timeout
	cancelAt      time.Time // ... at this time (stall.go closes the server past pool.cancel_timeout)
	failed        bool      // an ErrorResponse answered it
	// op is the client's statement change the request settles (its SQL
	// PREPARE or DEALLOCATE name): skipped if it fails.
	op *stmtOp
	// probe collects the row of a reqProbe.
	probe *probe
	// held is a reqLearn's client's ReadyForQuery, kept until the commit
	// position is known (replica.go).
	held []byte
	// refused: a replica refused the client's work (25006, 40001) before
	// its reply started; it runs again on the primary (rerun.go), and the
	// error (kept here) reaches the client only if it cannot.
	refused []byte
}

// forwarded reports whether the request's replies go to the client.
func (r *request) forwarded() bool { return r.kind == reqClient || r.kind == reqQuietSync }

// requestQueue is a FIFO of requests that keeps its capacity. pushed and
// popped number the batches (a statement prepared by batch n is known to
// exist once popped > n). Guarded by the backend's mu.
type requestQueue struct {
	items  []request
	head   int
	pushed uint64
	popped uint64
}

func (q *requestQueue) len() int { return len(q.items) - q.head }

func (q *requestQueue) push(r request) {
	if r.start.IsZero() {
		r.start = time.Now() // pgguard's own (probes, hidden Syncs): stall.go times every head
	}
	q.items = append(q.items, r)
	q.pushed++
}

// front returns the oldest request, or nil; valid until the next push.
func (q *requestQueue) front() *request {
	if q.head == len(q.items) {
		return nil
	}
	return &q.items[q.head]
}

func (q *requestQueue) pop() request {
	r := q.items[q.head]
	q.items[q.head] = request{}
	q.head++
	q.popped++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return r
}

// learning reports whether the only request outstanding is a learn query.
func (q *requestQueue) learning() bool {
	return q.len() == 1 && q.items[q.head].kind == reqLearn
}

// outstanding returns the requests not answered yet, oldest first; valid
// until the next push or pop.
func (q *requestQueue) outstanding() []request { return q.items[q.head:] }

// owesClient reports whether a request still owes the client replies (mu held).
func (b *backend) owesClient() bool {
	for _, r := range b.queue.outstanding() {
		if r.forwarded() {
			return true
		}
	}
	return false
}

// clear forgets every request (the connection is gone).
func (q *requestQueue) clear() {
	clear(q.items)
	q.items, q.head = q.items[:0], 0
}
