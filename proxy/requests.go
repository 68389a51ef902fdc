package proxy

import (
	"time"
	"unique"
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

// needsSync reports whether b's session parameters must be brought in line
// with c's before c's next message (mu held): b was last synced for other
// values than c's, or, while no transaction is open, the read-only switch
// flipped, b must now be read-only or no longer, or b must be read-only and
// reported default_transaction_read_only off (a function's set_config).
// Never while replies are outstanding.
func (b *backend) needsSync(c *client) bool {
	if b.queue.len() > 0 {
		return false
	}
	if b.profile != c.profile() {
		return true
	}
	if b.txStatus != 'I' {
		return false
	}
	ro := b.mustReadOnly()
	return b.roGen != c.p.roGen.Load() || b.roForced != ro || ro && b.params[readOnlyParam] != "on"
}

// inSync reports whether b can run c's next message without a sync query
// (mu held). A server last synced for other values may hold c's already:
// that is recorded, so the next check is a comparison.
func (b *backend) inSync(c *client) bool {
	if !b.needsSync(c) {
		return true
	}
	ro := b.mustReadOnly()
	if syncSQL(c, b, ro) != "" {
		return false
	}
	b.profile, b.roGen, b.roForced = c.profile(), c.p.roGen.Load(), ro
	return true
}

// syncParams brings b's session parameters in line with c's before c's
// next message, and waits for the answer: the client's statements must not
// run with another client's settings. It reports false when the sync failed
// (b is then unusable: its values are unknown) or b was lost meanwhile.
func (b *backend) syncParams(c *client) bool {
	b.mu.Lock() // send waited for c's last request to settle (awaitSettled)
	if b.client != c || b.inSync(c) {
		b.mu.Unlock()
		return true
	}
	ro := b.mustReadOnly()
	sql := syncSQL(c, b, ro)
	b.profile, b.roGen, b.roForced = c.profile(), c.p.roGen.Load(), ro
	b.custom = append(b.custom[:0], c.want.custom...)
	b.queue.push(request{kind: reqParamSync, announce: c.want.announce, inflightQuery: inflightQuery{start: time.Now()}})
	b.unnamedOwner = nil           // a Query destroys the unnamed statement
	b.act.Query(c.app, time.Now()) // the sync runs for c
	c.want.announce = false
	b.syncBad = false
	b.setStateLocked(srvSyncing)
	b.mu.Unlock()
	if _, err := b.out.Write(appendQuery(nil, sql)); err != nil {
		return false
	}
	b.awaitAnswered(c)
	b.mu.Lock()
	ok := !b.syncBad && b.client == c
	if !ok {
		b.profile = unique.Handle[string]{}
	}
	b.mu.Unlock()
	return ok
}

// prepareSend readies bytes client c sends to b, under mu: it checks the
// link, applies the statements' session effects, translates prepared
// statement names on the slow path, and pushes a request per sync point
// sent. It fails when b is no longer linked to c.
func (b *backend) prepareSend(c *client, p []byte, lead int, open, slow bool) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != c {
		return nil, false
	}
	c.applyEffects(b)
	c.listenSending()
	out := p
	max := c.p.cfg.Load().Pool.MaxPreparedStatements
	var hidden []hiddenQuery
	if slow || b.stmts.needsTrim(max) && lead == 0 {
		w := rewriter{c: c, b: b, out: c.obuf[:0], batch: b.queue.pushed, max: max, open: b.open}
		w.chunk(p, lead)
		c.obuf = w.out
		out, hidden = w.out, w.hidden
	} else {
		for _, e := range c.expect {
			b.replies = append(b.replies, pendingReply{typ: e.typ, batch: b.queue.pushed + uint64(e.syncs), op: e.op})
		}
	}
	switch c.unnamedSeen {
	case 1: // the client's next unnamed statement, once sent (client.sentUnnamed)
		b.unnamedOwner, b.unnamedGen = c, c.unnamedGen+1
	case 2:
		b.unnamedOwner = nil
	}
	now := time.Now()
	b.act.Query(c.app, now)
	for i, q := range c.queued {
		op := q.op
		if len(hidden) > 0 && hidden[0].at == i {
			b.queue.push(request{kind: reqHidden})
			op, hidden = hidden[0].op, hidden[1:]
		}
		kind := reqClient
		if q.quiet {
			kind = reqQuietSync
		}
		b.queue.push(request{kind: kind, op: op, inflightQuery: inflightQuery{pendingQuery: q, client: c, start: now, wait: c.wait}})
		c.wait = 0
	}
	b.batch.sent(b.open, open, len(c.queued) > 0, now) // opentimeout.go
	b.open = open
	return out, true
}
