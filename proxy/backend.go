package proxy

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/limiter"
)

// backend is one server connection to an upstream. Its pump goroutine reads
// everything the server sends for the connection's whole life: that is how a
// connection the upstream closes while idle (Neon suspending its compute,
// pg_terminate_backend) is noticed at once, without a query round trip.
type backend struct {
	id       uint64
	db       *database
	conn     net.Conn
	out      *sock                // reads (pump) and writes (linked client) on conn
	hc       *pgconn.HijackedConn // pid, secret and config for CancelRequest
	upstream string               // "primary" or "fallback"
	created  time.Time
	act      *limiter.Activity // the budget model's view of it; nil on the fallback or without a limiter

	dead atomic.Bool

	// Guarded by mu: the link to a client and the protocol position.
	mu       sync.Mutex
	client   *client
	pending  int     // Query/Sync/FunctionCall messages sent whose ReadyForQuery has not come back
	open     bool    // the client sent messages after its last sync point (mid extended-protocol batch)
	txStatus byte    // from the last ReadyForQuery: 'I', 'T' or 'E'
	resets   int     // ReadyForQuerys still to swallow from reset queries pgguard sent
	resetBad bool    // a reset query failed: close instead of reuse
	prelude  int     // ReadyForQuerys still to swallow from session parameter syncs
	swallowZ int     // lone ReadyForQuerys to swallow (a Sync pgguard added)
	roGen    uint64  // read-only switch generation the server was synced for
	synced   *client // the linked client whose parameters b was brought in line with
	announce bool    // the sync under way restores startup values: forward its ParameterStatus
	// What the server holds: parameter values as reported (params) and at
	// connect (initial), custom parameters set, prepared statements.
	params  map[string]string
	initial map[string]string
	custom  kvs
	// staged are custom parameters SET in the unit of work under way: they
	// stick when it ends committed; unitAborted when an error or ROLLBACK
	// ended it.
	staged      kvs
	unitAborted bool
	stmts       serverStmts
	// Whose unnamed statement the server holds (a client and its number).
	unnamedOwner *client
	unnamedGen   uint64
	inflight     []inflightQuery // queries sent, awaiting their ReadyForQuery
	// replies expected for Parse/Close sent, and sync points sent and answered.
	replies   []pendingReply
	syncsSent uint64
	syncsDone uint64
	answered  chan struct{} // closed when pending reaches 0, for awaitAnswered
	// cancels counts CancelRequests in flight for this connection; a release
	// meanwhile is held (held=true) so the cancel cannot hit the next client.
	cancels  int
	held     bool
	timedOut bool // pgguard cancelled the running query for pool.query_timeout

	// Owned by the pump goroutine.
	in       frameReader
	carry    []byte       // a message header split across reads, held back
	lastUsed atomic.Int64 // unix nanos of the last link, for SHOW SERVERS
}

func newBackend(db *database, hc *pgconn.HijackedConn, upstream string) *backend {
	return &backend{
		id:       db.nextSrvID.Add(1),
		db:       db,
		conn:     hc.Conn,
		out:      newSock(hc.Conn),
		hc:       hc,
		upstream: upstream,
		created:  time.Now(),
		txStatus: 'I',
		params:   maps.Clone(hc.ParameterStatuses),
		initial:  hc.ParameterStatuses,
	}
}

// Dead implements pool.Conn.
func (b *backend) Dead() bool { return b.dead.Load() }

// Close implements pool.Conn: it closes the socket; the pump then exits.
func (b *backend) Close() {
	if !b.dead.Swap(true) {
		b.db.servers.Add(-1)
	}
	b.conn.Close()
}

// link attaches b to c for a transaction (or a session). It fails when b died
// since it was taken from the pool.
func (b *backend) link(c *client) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead.Load() {
		return false
	}
	b.client = c
	b.open = false
	c.server.Store(b)
	b.lastUsed.Store(time.Now().UnixNano())
	return true
}

// prepareSend readies bytes client c sends to b, under mu: it checks the
// link, brings session parameters in line on a new link, applies the
// statements' session effects, translates prepared statement names on the
// slow path, and records the replies to expect. It fails when b is no longer
// linked to c.
func (b *backend) prepareSend(c *client, p []byte, syncs, lead int, open, slow bool) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != c {
		return nil, false
	}
	out := p
	var sync string
	gen := c.p.roGen.Load()
	if (b.synced != c || b.roGen != gen && b.txStatus == 'I') && b.pending == 0 {
		b.synced, b.roGen = c, gen
		sync = syncSQL(c, b, c.p.cfg.Load().ReadOnly)
		b.announce = sync != "" && c.want.announce
		c.want.announce = false
	}
	if c.swallowZ {
		b.swallowZ++
		c.swallowZ = false
	}
	c.applyEffects(b)
	if sync != "" || slow {
		buf := c.obuf[:0]
		if sync != "" {
			buf = appendQuery(buf, sync)
			b.prelude++
			b.pending++
			b.syncsSent++
		}
		if slow {
			w := rewriter{c: c, b: b, out: buf, batch: b.syncsSent, max: c.p.cfg.Load().Pool.MaxPreparedStatements}
			w.chunk(p, lead)
			buf = w.out
		} else {
			buf = append(buf, p...)
			b.expectReplies(c)
		}
		c.obuf = buf
		out = buf
	} else {
		b.expectReplies(c)
	}
	switch c.unnamedSeen {
	case 1:
		b.unnamedOwner, b.unnamedGen = c, c.unnamedGen
	case 2:
		b.unnamedOwner = nil
	}
	b.startQueries(c, time.Now())
	b.pending += syncs
	b.syncsSent += uint64(syncs)
	b.open = open
	return out, true
}

// expectReplies records the ParseComplete/CloseComplete replies the fast
// path's messages will produce, all for the client.
func (b *backend) expectReplies(c *client) {
	for _, e := range c.expect {
		b.replies = append(b.replies, pendingReply{typ: e.typ, batch: b.syncsSent + uint64(e.syncs)})
	}
}

// pump relays server output to the linked client until the connection dies.
func (b *backend) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := b.out.Read(buf)
		if n > 0 {
			b.db.p.bytesOut.Add(float64(n))
			b.relay(buf[:n])
		}
		if err != nil {
			b.died(err)
			return
		}
	}
}

// relay scans one read's worth of server output, forwarding it to the linked
// client and acting on ReadyForQuery, ErrorResponse, ParameterStatus and the
// replies pgguard must swallow.
func (b *backend) relay(data []byte) {
	if n := b.in.nhdr; n > 0 { // a header split across reads was held back
		b.carry = append(append(b.carry[:0], b.in.hdr[:n]...), data...)
		data = b.carry
		b.in.nhdr = 0
	}
	start := 0 // first byte not yet forwarded or dropped
	b.in.scan(data, func(typ byte, body []byte, end int) {
		switch typ {
		case 'Z':
			if len(body) == 1 {
				start = b.readyForQuery(body[0], data, start, end)
			}
		case '1', '3':
			b.mu.Lock()
			swallow := b.reply(typ)
			b.mu.Unlock()
			if swallow {
				b.forward(data[start : end-5])
				start = end
			}
		case 'C':
			b.commandComplete(body)
		case 'E':
			b.serverError(body)
			if e := b.replacementError(body); e != nil && end-len(body)-5 >= start {
				// Say why in the client's terms: a query_timeout cancel, or
				// the client's name for a duplicate statement.
				b.forward(data[start : end-len(body)-5])
				b.forward(e.encode(nil))
				start = end
			}
		case 'S':
			if b.parameterStatus(body) {
				b.forward(data[end-len(body)-5 : end])
			}
		}
	})
	stop := len(data) - b.in.nhdr
	b.mu.Lock()
	dropping := b.prelude > 0
	b.mu.Unlock()
	if !dropping && start < stop {
		b.forward(data[start:stop])
	}
}

// readyForQuery handles a ReadyForQuery ending at data[end]; it returns the
// new start of unforwarded data.
func (b *backend) readyForQuery(status byte, data []byte, start, end int) int {
	now := time.Now()
	b.mu.Lock()
	b.txStatus = status
	if b.pending > 0 {
		b.pending--
	}
	b.act.Ready(now, b.pending > 0, status != 'I')
	b.syncsDone++
	b.batchDone()
	if b.pending == 0 && b.answered != nil {
		close(b.answered)
		b.answered = nil
	}
	if b.prelude > 0 {
		b.prelude--
		b.announce = false
		b.unitAborted = false // the sync's own errors are not the client's
		b.mu.Unlock()
		return end // session parameter sync replies are swallowed
	}
	if b.swallowZ > 0 {
		b.swallowZ--
		b.mu.Unlock()
		b.forward(data[start : end-6])
		return end
	}
	if status == 'I' {
		b.unitDone()
	}
	q, done := b.finishQuery(now)
	if done && q.query {
		defer b.report(q, now)
	}
	if b.client == nil && b.resets > 0 {
		b.resets--
		done := b.resets == 0
		b.mu.Unlock()
		if done {
			b.finishReset(status)
		}
		return end // reset replies are swallowed
	}
	c := b.client
	release := c != nil && b.pending == 0 && !b.open && status == 'I' && c.pooling == poolTransaction && !c.pinned.Load()
	if release {
		b.client = nil
		b.synced = nil
		c.unlink()
	}
	hold := release && b.cancels > 0
	b.held = hold
	b.mu.Unlock()
	if c == nil || !release {
		return start
	}
	c.write(data[start:end])
	b.db.xacts.Add(1)
	c.transactionDone()
	if !hold {
		b.db.pool.Release(b)
	}
	return end
}

// finishReset returns b to the pool after pgguard's own ROLLBACK/DISCARD ALL.
func (b *backend) finishReset(status byte) {
	b.mu.Lock()
	bad := b.resetBad || status != 'I'
	b.mu.Unlock()
	if bad {
		b.db.pool.Discard(b)
		return
	}
	b.db.pool.Release(b)
}

// forward sends server bytes to the linked client; with no client they are
// dropped (notices after a release, reset replies).
func (b *backend) forward(p []byte) {
	b.mu.Lock()
	c := b.client
	b.mu.Unlock()
	if c != nil {
		c.write(p)
	}
}

// serverError notes FATAL errors (the server is closing: never reuse it) and
// failures of pgguard's own reset queries.
func (b *backend) serverError(body []byte) {
	sev, code := errorFields(body)
	if sev == "FATAL" || sev == "PANIC" || code == codeAdminShutdown {
		b.dead.Store(true)
	}
	b.queryError(code, body)
	b.mu.Lock()
	b.unitAborted = true
	b.mu.Unlock()
	b.mu.Lock()
	if b.client == nil && b.resets > 0 {
		b.resetBad = true
	}
	if c := b.client; c != nil && b.prelude > 0 {
		// A session parameter could not be applied: give up on the client's
		// custom parameters rather than fail every transaction.
		b.db.p.log.Warn("could not apply a client's session parameters on a server connection; dropping them",
			"client", c.id, "server", b.id, "sqlstate", code)
		c.want.custom = nil
		b.custom = nil
	}
	b.mu.Unlock()
}

// parameterStatus keeps the server's reported parameter values current. It
// reports whether the client must see one that comes in a session sync,
// which pgguard otherwise swallows.
func (b *backend) parameterStatus(body []byte) (announce bool) {
	name, rest, ok := cstring(body)
	if !ok {
		return false
	}
	value, _, ok := cstring(rest)
	if !ok {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.params[name] = value
	if c := b.client; c != nil && b.prelude == 0 && reportedParams[name] {
		c.want.reported.set(name, value) // the client SET it
	}
	return b.prelude > 0 && b.announce
}

// died handles the end of the server connection: out of the pool if idle; the
// linked client, if any, is told and loses its server.
func (b *backend) died(err error) {
	wasDead := b.dead.Swap(true)
	if !wasDead {
		b.db.servers.Add(-1)
	}
	b.conn.Close()
	b.mu.Lock()
	b.act.Close(time.Now())
	for _, r := range b.replies {
		b.skipped(r)
	}
	b.replies = nil
	if b.answered != nil {
		close(b.answered)
		b.answered = nil
	}
	c := b.client
	b.client = nil
	resetting := b.resets > 0
	b.resets = 0
	b.mu.Unlock()
	switch {
	case c != nil:
		c.unlink()
		b.db.linkedServerDied(b, err)
		c.serverLost(b, err)
		b.db.pool.Discard(b)
	case resetting:
		b.db.pool.Discard(b)
	default:
		b.db.pool.Remove(b)
	}
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		b.db.p.log.Debug("server connection ended", "database", b.db.name, "server", b.id, "err", err)
	}
}

// reset detaches b from its client and sends the queries that make it safe
// for another client; the pump returns it to the pool when they complete.
// With the server mid-query it is closed instead.
func (b *backend) reset(c *client, discardAll bool) {
	b.mu.Lock()
	if b.client != c {
		b.mu.Unlock()
		return
	}
	b.client = nil
	b.synced = nil
	c.unlink()
	if b.pending > 0 || b.open || b.dead.Load() {
		b.mu.Unlock()
		b.db.pool.Discard(b)
		return
	}
	var q []byte
	if b.txStatus != 'I' {
		q = appendQuery(q, "ROLLBACK")
		b.resets++
	}
	if discardAll {
		q = appendQuery(q, "DISCARD ALL")
		b.resets++
		b.custom = nil
		b.stmts.clear()
	}
	b.resetBad = false
	b.mu.Unlock()
	if len(q) == 0 {
		b.db.pool.Release(b)
		return
	}
	if _, err := b.out.Write(q); err != nil {
		b.db.pool.Discard(b)
	}
}

// unitDone settles the SETs and RESETs of a finished unit of work (mu
// held): they stick, for the client and the server, unless it was rolled
// back. A RESET to a value the client gave at startup is redone by the
// next sync, before the client's next message runs.
func (b *backend) unitDone() {
	if c := b.client; c != nil && !b.unitAborted {
		for _, e := range b.staged {
			if c.want.apply(e, &b.custom) {
				b.synced = nil
				c.want.announce = true
			}
		}
	}
	clear(b.staged)
	b.staged = b.staged[:0]
	b.unitAborted = false
}

// awaitAnswered waits until b has answered every sync point sent, while it
// stays linked to c.
func (b *backend) awaitAnswered(c *client) {
	b.mu.Lock()
	for b.client == c && b.pending > 0 {
		if b.answered == nil {
			b.answered = make(chan struct{})
		}
		ch := b.answered
		b.mu.Unlock()
		<-ch
		b.mu.Lock()
	}
	b.mu.Unlock()
}

// markTimedOut flags the running query of c as cancelled for
// pool.query_timeout; false if it already is, or c no longer holds b.
func (b *backend) markTimedOut(c *client) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != c || b.timedOut {
		return false
	}
	b.timedOut = true
	return true
}

// replacementError returns the error to give the client in place of a
// server error pgguard caused: 57014 after a query_timeout cancel, 42P05 of
// rewriter.duplicate. Otherwise nil.
func (b *backend) replacementError(body []byte) *Error {
	_, code := errorFields(body)
	b.mu.Lock()
	if e := b.duplicateError(code); e != nil {
		b.mu.Unlock()
		return e
	}
	if !b.timedOut {
		b.mu.Unlock()
		return nil
	}
	b.timedOut = false
	b.mu.Unlock()
	if code != codeQueryCanceled {
		return nil
	}
	return errorf(codeQueryCanceled, "canceling statement: it ran longer than pool.query_timeout = %s; raise pool.query_timeout or speed the query up",
		b.db.p.cfg.Load().Pool.QueryTimeout.Duration)
}

// cancelFor sends a CancelRequest for what b runs for client c, and for
// nothing else: if b is no longer c's it does nothing, and b cannot go to
// another client until the request has been delivered. pgconn dials the same
// address, with TLS when the connection uses it.
func (b *backend) cancelFor(c *client) {
	b.mu.Lock()
	if b.client != c {
		b.mu.Unlock()
		return
	}
	b.cancels++
	b.mu.Unlock()

	hc := *b.hc
	if pc, err := pgconn.Construct(&hc); err == nil {
		ctx, done := context.WithTimeout(context.Background(), 10*time.Second)
		if err := pc.CancelRequest(ctx); err != nil {
			b.db.p.log.Warn("cancel request failed", "database", b.db.name, "server", b.id, "err", err)
		}
		done()
	}

	b.mu.Lock()
	b.cancels--
	release := b.cancels == 0 && b.held
	if release {
		b.held = false
	}
	b.mu.Unlock()
	if release {
		b.db.pool.Release(b)
	}
}

// appendQuery appends a simple-protocol Query message.
func appendQuery(dst []byte, sql string) []byte {
	dst, at := beginMsg(dst, 'Q')
	dst = append(dst, sql...)
	return endMsg(append(dst, 0), at)
}
