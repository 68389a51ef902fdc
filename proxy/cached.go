package proxy

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/internal/msgread"
	"github.com/pgguard/pgguard/querylog"
)

// The result cache (package cache) in the relay. An execution a [[cache]]
// rule chooses is looked up when it reaches the head of the client's input
// with nothing outstanding and no transaction open: a hit is answered by
// pgguard without a server; a miss is relayed as usual, the pump collects
// the reply for its request and stores it once the client has it.
//
// Every statement a client sends adds the tables it may write to the
// request of its sync point; the pump gathers them per unit of work and,
// when the unit commits, invalidates them before the ReadyForQuery that
// tells the client so (a rolled-back unit invalidates nothing).

// clientCache is a client's result-cache state, owned by its goroutine.
type clientCache struct {
	// writes: the tables the statements since the last sync point may write.
	writes cache.Pending
	// missFill collects a miss's reply, for the execution's sync point.
	missFill *cacheFill
	// sess is the session as the cache keys it, as of the client's wantGen sessGen.
	sess    *cache.Session
	sessGen uint32
}

// cacheExec is one execution at the head of a client's input that the
// cache may answer: a Query, or [Parse] Bind [Describe] Execute Sync of the
// unnamed portal.
type cacheExec struct {
	n        int    // bytes it spans
	parse    []byte // its Parse message's body after the name, if it has one
	bind     []byte // its Bind's body
	text     []byte // the statement text
	stmt     []byte // the body after the name of the Parse that made the statement
	extended bool
	describe bool
}

// What scanExec found at the head of the input.
type scanned uint8

const (
	notCacheable scanned = iota // not an execution the cache answers
	partExec                    // so far one, but its messages have not all arrived
	wholeExec                   // one, whole
)

// scanExec finds the execution data starts with, if it is one of the
// shapes the cache answers. It reads headers and names, not values. A
// partial one is held back until it is whole (the server answers nothing
// before its Sync either), so that where reads split it never decides
// whether it is looked up.
func (c *client) scanExec(data []byte) (cacheExec, scanned) {
	var x cacheExec
	short := false // the data ends before the next message does
	next := func() (byte, []byte, bool) {
		if len(data)-x.n < 5 {
			short = true
			return 0, nil, false
		}
		typ := data[x.n]
		end := x.n + 1 + int(binary.BigEndian.Uint32(data[x.n+1:]))
		if end > len(data) || end < x.n+5 {
			short = end > len(data)
			return 0, nil, false
		}
		body := data[x.n+5 : end]
		x.n = end
		return typ, body, true
	}
	verdict := func(ok bool) (cacheExec, scanned) {
		switch {
		case ok:
			return x, wholeExec
		case short:
			return x, partExec
		}
		return x, notCacheable
	}
	typ, body, ok := next()
	if !ok {
		return x, notCacheable // the caller waits for a whole first message anyway
	}
	if typ == 'Q' {
		x.text = queryText(body)
		return verdict(len(x.text) == len(body)-1)
	}
	x.extended = true
	reparse := c.pooling == poolTransaction && c.server.Load() == nil
	if typ == 'P' {
		name, rest, ok := cbytes(body)
		if !ok || len(name) > 0 || !reparse {
			// A named statement's Parse has its own bookkeeping; and the
			// unnamed one's must reach a server unless pgguard parses it
			// again where the client binds it (transaction mode, unlinked).
			return x, notCacheable
		}
		x.parse = rest
		if typ, body, ok = next(); !ok {
			return verdict(false)
		}
	}
	if typ != 'B' {
		return x, notCacheable
	}
	x.bind = body
	portal, rest, ok := cbytes(body)
	name, _, ok2 := cbytes(rest)
	if !ok || !ok2 || len(portal) > 0 {
		return x, notCacheable
	}
	switch {
	case len(name) > 0:
		if c.stmtOpState == stmtOpsBehind {
			c.learnStmtOps() // as relaying it would (handle): then it is known
		}
		st := c.stmt(name)
		if st == nil || c.stmtOpState != stmtOpsNone || x.parse != nil {
			return x, notCacheable
		}
		x.stmt = st.parse
	case x.parse != nil:
		x.stmt = x.parse
	case c.unnamed != nil:
		x.stmt = c.unnamed // where it is bound, pgguard parses it again or the server has it
	default:
		return x, notCacheable
	}
	x.text = queryText(x.stmt)
	if typ, body, ok = next(); ok && typ == 'D' {
		if len(body) != 2 || body[0] != 'P' || body[1] != 0 {
			return x, notCacheable
		}
		x.describe = true
		typ, body, ok = next()
	}
	if !ok {
		return verdict(false)
	}
	// Execute of the unnamed portal, all rows, then Sync.
	if typ != 'E' || len(body) != 5 || body[0] != 0 || binary.BigEndian.Uint32(body[1:]) != 0 {
		return x, notCacheable
	}
	typ, _, ok = next()
	return verdict(ok && typ == 'S')
}

// statement decodes the parameters of x for the cache's key; false when the
// messages are malformed (the server will say so).
func (x *cacheExec) statement() (cache.Statement, bool) {
	st := cache.Statement{Text: x.text, Extended: x.extended, Described: x.describe || !x.extended}
	if !x.extended {
		return st, true
	}
	if len(x.text) >= len(x.stmt) {
		return st, false // no NUL after the text
	}
	r := msgread.Reader{B: x.stmt[len(x.text)+1:]}
	for range r.U16() {
		st.ParamTypes = append(st.ParamTypes, r.U32())
	}
	_, rest, _ := cbytes(x.bind)
	_, rest, _ = cbytes(rest)
	r = msgread.Reader{B: rest}
	for range r.U16() {
		st.ParamFormats = append(st.ParamFormats, int16(r.U16()))
	}
	for range r.U16() {
		n := int32(r.U32())
		if n < 0 {
			st.Params = append(st.Params, nil)
			continue
		}
		st.Params = append(st.Params, r.Next(int(n)))
	}
	for range r.U16() {
		st.ResultFormats = append(st.ResultFormats, int16(r.U16()))
	}
	return st, !r.Bad && len(r.B) == 0
}

// cacheSession is what the client's results depend on, rebuilt when its
// session parameters change.
func (c *client) cacheSession() *cache.Session {
	gen := c.wantGen.Load()
	cc := c.cached
	if cc.sess != nil && cc.sessGen == gen {
		return cc.sess
	}
	s := &cache.Session{Database: c.db.name, Upstream: c.db.upstreamID, User: c.user, Application: c.app}
	for _, e := range c.want.reported {
		s.Settings = append(s.Settings, cache.Setting{Name: e.k, Value: e.v})
	}
	for _, e := range c.want.custom {
		s.Settings = append(s.Settings, cache.Setting{Name: e.k, Value: e.v})
	}
	cc.sess, cc.sessGen = s, gen
	return s
}

// idleSession returns the client's session for the cache's key when
// pgguard knows that session exactly (sessionKnown), nothing it sent is
// outstanding and no transaction is open, so that an answer from pgguard
// cannot overtake a server's: a request leaves its server's queue only
// once its reply is written (backend.readyForQuery). That is a client
// without a server, or a linked one idle outside a transaction, whose
// session is read under the server's lock (the pump follows the server's
// ParameterStatus into it).
func (c *client) idleSession() (*cache.Session, bool) {
	if !c.sessionKnown() {
		return nil, false
	}
	for {
		b := c.server.Load()
		if b == nil {
			return c.cacheSession(), true
		}
		// Its last reply written, or about to be once Redis has answered:
		// wait for the pump to finish the request (and release the
		// server), rather than send this to the server.
		c.awaitSettled()
		b.mu.Lock()
		if b.client != c { // unlinked meanwhile: look again
			b.mu.Unlock()
			continue
		}
		idle := b.queue.len() == 0 && !b.open && b.txStatus == 'I'
		var s *cache.Session
		if idle {
			s = c.cacheSession()
		}
		b.mu.Unlock()
		return s, idle
	}
}

// fromCache looks up the execution data starts with. On a hit it answers
// the client and returns the bytes consumed; on a hit the limiter refuses,
// it returns them with the refusal, for the caller to answer; on a
// cacheable miss it leaves c.cached.missFill for the execution's sync point, so
// the pump collects the reply. It returns -1 for an execution whose
// messages have not all arrived: the caller waits for them.
func (c *client) fromCache(data []byte) (int, error) {
	rc := c.p.Cache
	x, found := c.scanExec(data)
	switch found {
	case notCacheable:
		return 0, nil
	case partExec:
		return -1, nil
	}
	s, ok := c.idleSession()
	if !ok {
		return 0, nil
	}
	if _, ok := rc.Match(s, x.text); !ok {
		return 0, nil
	}
	st, ok := x.statement()
	if !ok {
		return 0, nil
	}
	k, ok := rc.Key(s, &st)
	if !ok {
		return 0, nil
	}
	start := time.Now()
	reply, hit := rc.Get(c.p.ctx, k)
	if !hit {
		c.cached.missFill = &cacheFill{key: k, max: k.MaxBytes()}
		return 0, nil
	}
	c.lastTyp = 'Q' // what the client sent last: a sync point
	if x.extended {
		c.lastTyp = 'S'
	}
	if err := c.lim.AdmitCached(); err != nil {
		return x.n, c.p.clientError(err, c.db, false) // refused: the caller answers
	}
	c.answer(&x, reply)
	c.cacheAnswered(&x, reply, start)
	return x.n, nil
}

// answer writes a hit's reply in the shape the client's messages ask for,
// gathered in c.obuf (a large reply is written as it is, not copied).
func (c *client) answer(x *cacheExec, reply []byte) {
	const copyMax = 32 << 10
	out := c.obuf[:0]
	if x.parse != nil {
		out = append(out, '1', 0, 0, 0, 4)
	}
	if x.extended {
		out = append(out, '2', 0, 0, 0, 4)
	}
	if len(reply) > copyMax {
		if len(out) > 0 {
			c.write(out)
		}
		c.write(reply)
		out = out[:0]
	} else {
		out = append(out, reply...)
	}
	out = append(out, 'Z', 0, 0, 0, 5, 'I')
	c.write(out)
	c.obuf = out[:0]
}

// cacheAnswered does for a hit what a server's reply would have done: the
// client's unnamed statement and batch state, the counters and the query log.
func (c *client) cacheAnswered(x *cacheExec, reply []byte, start time.Time) {
	if x.parse != nil {
		c.unnamed = append(c.unnamed[:0:0], x.parse...)
		c.unnamedEff = statementEffect(x.text)
		c.unnamedGen++ // no server holds it: a later Bind of "" parses it again
	} else if !x.extended {
		c.unnamed, c.unnamedEff = nil, nil // a Query destroys it
	}
	c.db.queryCount.Add(1)
	c.db.queries.Inc()
	c.lastActive.Store(time.Now().UnixNano())
	if ql := c.p.QueryLog; ql != nil {
		rows, tag := replyTag(reply)
		ql.Log(querylog.Record{
			Time: start, Database: c.db.name, User: c.user, Application: c.app, ClientAddr: c.addr,
			Query: c.intern(x.text), Duration: time.Since(start), Rows: rows, Tag: tag,
			Extended: x.extended, Cache: "hit", Client: c.id, TxStatus: 'I',
		})
	}
}

// replyTag returns the row count and command word of a reply's CommandComplete.
func replyTag(reply []byte) (int64, string) {
	for len(reply) >= 5 {
		n := min(1+int(binary.BigEndian.Uint32(reply[1:])), len(reply))
		if reply[0] == 'C' {
			word, rows := commandTag(queryText(reply[5:n]))
			return rows, word
		}
		reply = reply[n:]
	}
	return 0, ""
}

// cacheFill collects a miss's reply for the cache as the pump relays it:
// RowDescription, DataRows and CommandComplete, whatever the chunking.
// Owned by the pump once its request is sent.
type cacheFill struct {
	key    *cache.Key
	max    int    // max_entry_bytes
	buf    []byte // the reply so far
	keep   bool   // the message under way belongs to it
	bad    bool   // the reply is not one to store
	tooBig bool   // ... because it outgrew max
}

// begin starts a server message of type typ and size bytes (header included).
func (f *cacheFill) begin(typ byte, size int) {
	f.keep = false
	switch {
	case f.bad:
	case typ == '1' || typ == '2' || typ == '3':
		// ParseComplete, BindComplete, CloseComplete: pgguard writes its own.
	case typ != 'T' && typ != 'D' && typ != 'C':
		f.bad = true // an error, a notice, a parameter change: not a plain result
	case len(f.buf)+size > f.max:
		f.bad, f.tooBig, f.buf = true, true, nil
	default:
		f.keep = true
	}
}

// add appends bytes of the message under way.
func (f *cacheFill) add(p []byte) {
	if f.keep {
		f.buf = append(f.buf, p...)
	}
}

// storeFill puts a collected reply in the cache before the client has its
// ReadyForQuery, so that its next query finds it; with Redis that costs a
// miss one write, within the Redis call timeout. Only a primary's answer to
// a whole execution outside a transaction is stored.
func (b *backend) storeFill(f *cacheFill, failed bool, status byte) {
	rc := b.db.p.Cache
	switch {
	case f.tooBig:
		rc.TooBig(f.key)
	case f.bad || failed || status != 'I' || b.upstream != "primary":
	default:
		rc.Put(context.WithoutCancel(b.db.p.ctx), f.key, f.buf)
	}
}

// boundWrites returns the tables a Bind's statement may write: all of the
// database's when pgguard does not know the statement.
func (c *client) boundWrites(body []byte) cache.Targets {
	var text []byte
	if name := boundStmt(body); len(name) > 0 {
		if st := c.stmt(name); st != nil {
			text = st.parse
		}
	} else if c.unnamedSeen == 1 {
		text = c.unnamedNext
	} else if c.unnamedSeen == 0 {
		text = c.unnamed
	}
	if text == nil {
		return cache.Targets{All: true}
	}
	return c.p.Cache.Writes(queryText(text))
}

// takeWrites returns the tables the statements sent since the last sync
// point may write, for that sync point's request, and starts over.
func (cc *clientCache) takeWrites() cache.Targets {
	if cc.writes.Empty() {
		return cache.Targets{} // allocates nothing
	}
	return cc.writes.Take()
}

// unitWrites notes what request r wrote and returns what committed, for
// invalidation (mu held): at the end of a unit of work (status 'I') that
// committed, or that ran a statement that may have committed on its own
// before failing (a CALL or DO, whose writes are all tables); and, inside
// a transaction, at a COMMIT AND CHAIN (a COMMIT whose transaction goes
// on). A unit rolled back invalidates nothing.
func (b *backend) unitWrites(r *request, status byte) cache.Targets {
	if !r.writes.Empty() {
		b.writes.Add(r.writes)
	}
	if status != 'I' {
		chained := b.unitCommitted
		b.unitCommitted = false
		if !chained || b.writes.Empty() {
			return cache.Targets{}
		}
		return b.writes.Take() // what the new transaction writes counts at its own end
	}
	committed := b.unitCommitted || !b.unitUndone || b.writes.Targets().All
	b.unitCommitted, b.unitUndone = false, false
	if b.writes.Empty() || !committed {
		b.writes.Reset()
		return cache.Targets{}
	}
	return b.writes.Take()
}

// unsettledWrites returns the tables written by the unit under way and by
// every request sent, when the connection is lost: a COMMIT may have run
// without its answer arriving, so they are invalidated (mu held).
func (b *backend) unsettledWrites() cache.Targets {
	for _, r := range b.queue.outstanding() {
		b.writes.Add(r.writes)
	}
	return b.writes.Take()
}

// orphanGrace is how long after its CancelRequest an orphaned backend is
// taken to have ended: PostgreSQL acts on a cancel at once, in a lock wait
// too, and the backend then finds its socket closed.
const orphanGrace = time.Second

// settleOrphan deals with writes whose connection was lost while they ran:
// the backend may not know yet and commit later (a lock wait, a long
// UPDATE). Their tables are invalidated and kept from being stored
// (cache.Hold) while pgguard cancels the backend and gives it orphanGrace
// to end; then they are invalidated again. All of it is bounded: the cancel
// by its 5 s timeout, then the grace.
func (b *backend) settleOrphan(writes cache.Targets) {
	defer b.db.p.recoverPanic("settle", func() {})
	release := b.db.p.Cache.Hold(b.db.p.ctx, b.db.upstreamID, writes)
	defer release()
	hc := *b.hc
	if pc, err := pgconn.Construct(&hc); err == nil {
		ctx, done := context.WithTimeout(context.Background(), 5*time.Second)
		if err := pc.CancelRequest(ctx); err != nil {
			b.db.p.log.Warn("could not cancel a statement whose connection was lost; the tables it writes stay uncached until it is taken to have ended",
				"database", b.db.name, "server", b.id, "err", err)
		}
		done()
	}
	t := time.NewTimer(orphanGrace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.db.p.ctx.Done():
	}
}

// invalidate makes the cache forget what committed writes touched, before
// the client hears of the commit.
func (b *backend) invalidate(t cache.Targets) {
	if !t.Empty() {
		b.db.p.Cache.Invalidate(b.db.p.ctx, b.db.upstreamID, t)
	}
}
