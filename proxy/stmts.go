package proxy

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"hash/maphash"
	"strconv"
)

// Named prepared statements under transaction pooling (what pgx, JDBC,
// asyncpg and pgbench -M prepared send). A client's statement names mean
// nothing on the next server it lands on, so pgguard:
//
//   - remembers each client's statements by name (client.stmts);
//   - prepares each distinct statement (query text + parameter types) on a
//     server once, under a name derived from its content, "pgg_<hash>", and
//     remembers per server which it holds (backend.stmts, an LRU bounded by
//     pool.max_prepared_statements that deallocates what it evicts);
//   - rewrites Parse/Bind/Describe/Close to the server name, prepares a
//     statement first when the server lacks it, and keeps the client from
//     seeing the replies it did not ask for.
//
// Replies are matched to requests without decoding the stream: ParseComplete
// ('1') and CloseComplete ('3') come only from Parse and Close, in order, so a
// FIFO of what to do with each ('forward' or 'swallow') per batch is enough.
// After an error the server skips to Sync and never answers the rest of the
// batch; its entries are dropped at the batch's ReadyForQuery.
//
// A client's Parse or Close of a name changes its statements at once, as a
// stmtOp the server may yet skip; a skipped one is undone. A later batch
// that names a statement while such an outcome is unknown waits for it
// (client.awaitStmtOps), as the server itself would have decided it first.

var stmtSeed = maphash.MakeSeed()

// stmt is one client-named prepared statement.
type stmt struct {
	base   uint64  // hash of query text, parameter types and search_path
	key    uint64  // its server key, from base when it was prepared (stale.go)
	sp     string  // the client's search_path then (as the SQL that sets it)
	name   string  // its name on servers, "pgg_<key>"
	parse  []byte  // the Parse body after the name: query\0, int16 count, OIDs
	effect *effect // what executing it does to session state, or nil
	// sql: prepared with SQL PREPARE, held by the server under the
	// client's own name (name); its messages go through unchanged.
	sql bool
}

func newStmt(base, key uint64, sp string, parse []byte) *stmt {
	parse = append([]byte(nil), parse...)
	return &stmt{base: base, key: key, sp: sp, name: serverStmtName(key), parse: parse, effect: statementEffect(queryText(parse))}
}

// stmtOp is a client's Parse or Close of a named statement, applied to
// client.stmts when sent; if the server skips it (an error earlier in its
// batch) or fails it, the pump marks it skipped and the client goroutine
// puts prev back.
type stmtOp struct {
	name    string
	prev    *stmt  // what name meant before; nil: nothing
	skipped bool   // set by the pump under the backend's mu
	settled bool   // ... as is this: the server answered (or skipped) it
	dup     string // for the Parse pgguard makes fail: the client's name
}

// stmtKey identifies a statement for sharing across clients on a server: its
// text and parameter types, and the client's search_path, which decides
// what the text's names mean.
func (c *client) stmtKey(parse []byte) (base uint64, sp string) {
	var h maphash.Hash
	h.SetSeed(stmtSeed)
	sp, _ = c.want.custom.get("search_path")
	h.WriteString(sp)
	h.WriteByte(0)
	h.Write(parse)
	return h.Sum64(), sp
}

func serverStmtName(key uint64) string {
	var b [20]byte
	return string(strconv.AppendUint(append(b[:0], "pgg_"...), key, 36))
}

// pendingReply says what to do with one expected ParseComplete/CloseComplete.
type pendingReply struct {
	typ     byte   // '1' or '3'
	swallow bool   // pgguard's own request: the client must not see the reply
	batch   uint64 // sync points sent before the request: the batch it belongs to
	key     uint64 // for a Parse: the statement it prepares, 0 for unnamed
	op      *stmtOp
}

// serverStmts is a server connection's prepared statements, most recently
// used at the front, each with the batch that prepared it. Guarded by the
// backend's mu.
type serverStmts struct {
	lru  list.List // of serverStmt
	byID map[uint64]*list.Element
	// doomed are statements found stale, to close in a later batch.
	doomed []serverStmt
}

// serverStmt is a statement a server holds (key, from the text's base,
// under search_path sp): prepared by batch as of its database's change seq
// (stale.go), last named by batch used.
type serverStmt struct {
	key, base, batch, used, seq uint64
	sp                          string
}

// batch returns the batch that prepared key and the change it was prepared
// as of, and marks it used by batch now.
func (s *serverStmts) batch(key, now uint64) (batch, seq uint64, ok bool) {
	if e, ok := s.byID[key]; ok {
		s.lru.MoveToFront(e)
		st := e.Value.(*serverStmt)
		st.used = now
		return st.batch, st.seq, true
	}
	return 0, 0, false
}

// add records st as prepared (and used) by batch, as of change seq.
func (s *serverStmts) add(st *stmt, batch, seq uint64) {
	v := serverStmt{key: st.key, base: st.base, batch: batch, used: batch, seq: seq, sp: st.sp}
	if e, ok := s.byID[st.key]; ok {
		*e.Value.(*serverStmt) = v
		s.lru.MoveToFront(e)
		return
	}
	if s.byID == nil {
		s.byID = make(map[uint64]*list.Element)
	}
	s.byID[st.key] = s.lru.PushFront(&v)
}

// doom forgets key, found stale, and queues it to be closed.
func (s *serverStmts) doom(key uint64) {
	if e, ok := s.byID[key]; ok {
		s.doomed = append(s.doomed, *e.Value.(*serverStmt))
		s.lru.Remove(e)
		delete(s.byID, key)
	}
}

// removeIf forgets key if batch prepared it last: a Parse the server skipped.
func (s *serverStmts) removeIf(key, batch uint64) {
	if e, ok := s.byID[key]; ok && e.Value.(*serverStmt).batch == batch {
		s.lru.Remove(e)
		delete(s.byID, key)
	}
}

// evict removes and returns the least recently used statement beyond max
// that no batch still unanswered names (answered: batches before it are):
// closing a statement closes the portals bound from it, which a batch in
// flight may yet execute. With every statement in use, none is evicted:
// the server holds more than max until a later batch trims it.
func (s *serverStmts) evict(max int, answered uint64) (uint64, bool) {
	if max <= 0 || s.lru.Len() <= max {
		return 0, false
	}
	for e := s.lru.Back(); e != nil; e = e.Prev() {
		if st := e.Value.(*serverStmt); st.used < answered {
			s.lru.Remove(e)
			delete(s.byID, st.key)
			return st.key, true
		}
	}
	return 0, false
}

// needsTrim reports whether the server holds statements to close: more
// than max, or some found stale.
func (s *serverStmts) needsTrim(max int) bool {
	return max > 0 && s.lru.Len() > max || len(s.doomed) > 0
}

func (s *serverStmts) clear() {
	s.lru.Init()
	s.byID = nil
	s.doomed = nil
}

// namedStmtMessage reports whether a client message refers to a named
// prepared statement and must be rewritten in transaction mode.
func namedStmtMessage(typ byte, body []byte) bool {
	switch typ {
	case 'P':
		return len(body) > 0 && body[0] != 0
	case 'B':
		i := bytes.IndexByte(body, 0) // portal name
		return i >= 0 && i+1 < len(body) && body[i+1] != 0
	case 'D', 'C':
		return len(body) > 1 && body[0] == 'S' && body[1] != 0
	}
	return false
}

// unnamedStmtMessage reports whether a Bind or a statement Describe refers
// to the unnamed statement.
func unnamedStmtMessage(typ byte, body []byte) bool {
	switch typ {
	case 'B':
		i := bytes.IndexByte(body, 0)
		return i >= 0 && i+1 < len(body) && body[i+1] == 0
	case 'D':
		return len(body) > 1 && body[0] == 'S' && body[1] == 0
	}
	return false
}

// rewriter builds what is sent to a server for one chunk of client messages
// on the slow path (some name to translate). It runs on the client goroutine
// with the backend's mu held.
type rewriter struct {
	c     *client
	b     *backend
	out   []byte
	batch uint64 // batch id of the next message
	max   int    // pool.max_prepared_statements
	syncs int    // the client's sync points so far in the chunk
	// open: the last message was not a sync point (a batch is under way).
	open bool
	// unnamedHere: an unnamed Parse (or a Query, which destroys the
	// unnamed statement) came earlier in the chunk, so the server's
	// unnamed statement is the stream's, not to be re-parsed.
	unnamedHere bool
	// hidden are pgguard's own queries sent before client sync points
	// (see deallocate), for prepareSend to push requests for.
	hidden []hiddenQuery
}

// hiddenQuery is a query pgguard sends, swallowed, before the client's sync
// point number at of the chunk; op is the client's statement change that
// sync point's request settles.
type hiddenQuery struct {
	at int
	op *stmtOp
}

// chunk translates a run of client messages; the first lead bytes continue a
// message already under way.
func (w *rewriter) chunk(p []byte, lead int) {
	w.out = append(w.out, p[:lead]...)
	if lead == 0 { // at a message boundary: the server may hold too many from an earlier batch
		w.trim()
	} else {
		w.open = true
	}
	for pos := lead; pos < len(p); {
		if len(p)-pos < 5 {
			w.out = append(w.out, p[pos:]...)
			return
		}
		end := pos + 1 + int(binary.BigEndian.Uint32(p[pos+1:]))
		if end > len(p) {
			w.out = append(w.out, p[pos:]...) // the start of a message streamed on
			return
		}
		w.message(p[pos:end])
		pos = end
	}
}

// message appends the translation of one whole client message.
func (w *rewriter) message(msg []byte) {
	typ, body := msg[0], msg[5:]
	open := w.open
	w.open = !isSyncPoint(typ)
	switch typ {
	case 'P':
		name, rest, ok := cbytes(body)
		if !ok || len(name) == 0 {
			w.out = append(w.out, msg...)
			w.expect('1', false, 0, nil)
			w.unnamedHere = true
			return
		}
		if w.c.stmt(name) != nil {
			w.duplicate(string(name))
			return
		}
		base, sp := w.c.stmtKey(rest)
		st := newStmt(base, w.b.db.stmtKeys.key(base), sp, rest)
		op := w.c.changeStmt(string(name), st)
		if w.held(st.key) {
			// Already prepared here: answer the client's Parse with a
			// ParseComplete from a no-op Parse, closed at once. Not an empty
			// query: that one would pass in an aborted transaction.
			w.out = appendMsg(w.out, 'P', "pgg_noop\x00SELECT\x00\x00\x00")
			w.expect('1', false, 0, op)
			w.out = appendMsg(w.out, 'C', "Spgg_noop\x00")
			w.expect('3', true, 0, nil)
			return
		}
		w.prepare(st, false, op)
	case 'B':
		portal, rest, _ := cbytes(body)
		name, params, ok := cbytes(rest)
		if ok && len(name) == 0 {
			w.ensureUnnamed()
			w.out = append(w.out, msg...)
			return
		}
		st := w.c.stmt(name)
		if !ok || st == nil || st.sql {
			w.out = append(w.out, msg...) // the server reports the unknown name, or holds it
			return
		}
		srvName := w.ensure(st) // first: it may send a Parse
		out, at := beginMsg(w.out, 'B')
		out = append(append(out, portal...), 0)
		out = append(append(out, srvName...), 0)
		w.out = endMsg(append(out, params...), at)
	case 'D':
		if unnamedStmtMessage(typ, body) {
			w.ensureUnnamed()
			w.out = append(w.out, msg...)
			return
		}
		st := w.c.stmt(bytes.TrimSuffix(body[1:], []byte{0}))
		if st == nil || st.sql {
			w.out = append(w.out, msg...)
			return
		}
		srvName := w.ensure(st)
		w.out = appendMsgParts(w.out, 'D', "S", srvName, "\x00")
	case 'C':
		var op *stmtOp
		if body[0] == 'S' && len(body) > 1 && body[1] != 0 {
			// The statement may serve other clients on this server: keep it,
			// and let the server answer a Close of a name it does not have.
			name := bytes.TrimSuffix(body[1:], []byte{0})
			st := w.c.stmt(name)
			if st != nil {
				op = w.c.changeStmt(string(name), nil)
			}
			if st != nil && st.sql {
				w.out = append(w.out, msg...)
			} else {
				w.out = appendMsg(w.out, 'C', "Spgg_closed\x00")
			}
		} else {
			w.out = append(w.out, msg...)
		}
		w.expect('3', false, 0, op)
	case 'Q':
		w.unnamedHere = true
		if name := deallocName(body); !open && name != "" && w.c.stmt([]byte(name)) != nil {
			w.deallocate(name)
		} else {
			w.out = append(w.out, msg...)
		}
		w.synced()
	default:
		w.out = append(w.out, msg...)
		if typ == 'S' || typ == 'F' {
			w.synced()
		}
	}
}

// synced counts a client sync point.
func (w *rewriter) synced() {
	w.batch++
	w.syncs++
}

// deallocate runs a client's SQL "DEALLOCATE name" of a statement it
// prepared with Parse, which has another name on the server (and may serve
// other clients there): a hidden query prepares a throwaway statement and
// the client's deallocates that instead, so that the client gets the
// server's own answer (DEALLOCATE, or the error of an aborted
// transaction) in stream order. The name is gone for the client unless
// the server fails its query. process sends it only outside an open
// extended-protocol batch, where a Query is never skipped.
func (w *rewriter) deallocate(name string) {
	w.hidden = append(w.hidden, hiddenQuery{at: w.syncs, op: w.c.changeStmt(name, nil)})
	w.out = appendQuery(w.out, "PREPARE pgg_dealloc AS SELECT")
	w.batch++
	w.out = appendQuery(w.out, "DEALLOCATE pgg_dealloc")
}

// duplicate answers a Parse of a name the client already has as PostgreSQL
// does, with 42P05 from the server, so the rest of the batch is skipped in
// stream order: pgguard parses "pgg_dup" twice, and the pump puts the
// client's name in the second Parse's error.
func (w *rewriter) duplicate(name string) {
	w.out = appendMsg(w.out, 'C', "Spgg_dup\x00")
	w.expect('3', true, 0, nil)
	for i := 0; i < 2; i++ {
		w.out = appendMsg(w.out, 'P', "pgg_dup\x00SELECT\x00\x00\x00")
	}
	w.expect('1', true, 0, nil)
	w.expect('1', false, 0, &stmtOp{dup: name})
}

// ensureUnnamed re-parses the client's unnamed statement, invisibly, when
// the server's unnamed statement is not the client's latest (it was parsed
// on another server, before a Sync released that one). One parsed earlier
// in the chunk is the server's already, in stream order.
func (w *rewriter) ensureUnnamed() {
	if w.unnamedHere || w.c.unnamed == nil || w.b.unnamedOwner == w.c && w.b.unnamedGen == w.c.unnamedGen {
		return
	}
	out, at := beginMsg(w.out, 'P')
	w.out = endMsg(append(append(out, 0), w.c.unnamed...), at)
	w.expect('1', true, 0, nil)
	w.b.unnamedOwner, w.b.unnamedGen = w.c, w.c.unnamedGen
}

// held reports whether the server surely holds key for the batch under way:
// prepared by a batch it has answered, or by this very batch (if that Parse
// is skipped, so is what follows it). A Parse in an earlier batch still in
// flight may yet be skipped. A copy known stale is not held; one whose
// error is replayed is closed in a later batch.
func (w *rewriter) held(key uint64) bool {
	batch, seq, ok := w.b.stmts.batch(key, w.batch)
	if !ok || batch >= w.b.queue.popped && batch != w.batch {
		return false
	}
	if replay, stale := w.b.db.stmtKeys.stale(key, seq); stale {
		if replay != nil {
			w.b.stmts.doom(key)
		}
		return false
	}
	return true
}

// ensure prepares st on the server first when it may lack it; the client
// never sees that ParseComplete. It returns the name to use on the server:
// for a statement whose result type changed, one that makes the server
// fail the message, for the pump to replay the stale error (stale.go).
func (w *rewriter) ensure(st *stmt) string {
	if w.held(st.key) {
		return st.name
	}
	if replay, _ := w.b.db.stmtKeys.stale(st.key, 0); replay != nil {
		return staleName(st.key)
	}
	w.prepare(st, true, nil)
	return st.name
}

// prepare sends a Parse of st under its server name, evicting the least used
// statement when the server holds pool.max_prepared_statements already.
func (w *rewriter) prepare(st *stmt, swallow bool, op *stmtOp) {
	w.b.stmts.add(st, w.batch, w.b.db.stmtKeys.seq())
	w.trim()
	// Close the name first: whatever the server had under it (after a
	// DISCARD ALL pgguard could not follow, or a Parse in a batch still in
	// flight) cannot make the Parse fail.
	w.out = appendMsgParts(w.out, 'C', "S", st.name, "\x00")
	w.expect('3', true, 0, nil)
	out, at := beginMsg(w.out, 'P')
	out = append(append(out, st.name...), 0)
	w.out = endMsg(append(out, st.parse...), at)
	w.expect('1', swallow, st.key, op)
}

// trim closes the statements found stale on the server, and the least used
// it holds beyond pool.max_prepared_statements, of those no unanswered
// batch names.
func (w *rewriter) trim() {
	doomed := w.b.stmts.doomed[:0]
	for _, st := range w.b.stmts.doomed {
		if _, back := w.b.stmts.byID[st.key]; back {
			continue // prepared again since (it was no longer known stale)
		}
		if st.used >= w.b.queue.popped {
			doomed = append(doomed, st)
			continue
		}
		w.out = appendMsgParts(w.out, 'C', "S", serverStmtName(st.key), "\x00")
		w.expect('3', true, 0, nil)
	}
	w.b.stmts.doomed = doomed
	for {
		old, ok := w.b.stmts.evict(w.max, w.b.queue.popped)
		if !ok {
			return
		}
		w.out = appendMsgParts(w.out, 'C', "S", serverStmtName(old), "\x00")
		w.expect('3', true, 0, nil)
	}
}

func (w *rewriter) expect(typ byte, swallow bool, key uint64, op *stmtOp) {
	w.b.replies = append(w.b.replies, pendingReply{typ: typ, swallow: swallow, batch: w.batch, key: key, op: op})
}

// appendMsg appends a message with a string body.
func appendMsg(dst []byte, typ byte, body string) []byte {
	dst, at := beginMsg(dst, typ)
	return endMsg(append(dst, body...), at)
}

// appendMsgParts appends a message whose body is parts, concatenated.
func appendMsgParts(dst []byte, typ byte, parts ...string) []byte {
	dst, at := beginMsg(dst, typ)
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return endMsg(dst, at)
}

// reply handles a ParseComplete or CloseComplete from the server (pump
// goroutine, mu held) and reports whether the client must not see it.
func (b *backend) reply(typ byte) (swallow bool) {
	if len(b.replies) == 0 {
		return false
	}
	r := b.replies[0]
	n := copy(b.replies, b.replies[1:])
	b.replies[n] = pendingReply{}
	b.replies = b.replies[:n]
	if r.op != nil {
		r.op.settled = true
	}
	if r.typ != typ {
		b.db.p.log.Error("prepared statement bookkeeping out of step; closing server connection", "server", b.id, "want", string(r.typ), "got", string(typ))
		b.dead.Store(true)
		return false
	}
	return r.swallow
}

// batchDone drops the expectations of a batch the server finished: requests
// it skipped after an error never get a reply, a statement whose Parse was
// skipped is not prepared on the server, and the client's skipped Parse or
// Close is to be undone.
func (b *backend) batchDone() {
	i := 0
	for i < len(b.replies) && b.replies[i].batch < b.queue.popped {
		b.skipped(b.replies[i])
		i++
	}
	if i > 0 {
		n := copy(b.replies, b.replies[i:])
		clear(b.replies[n:])
		b.replies = b.replies[:n]
	}
}

// skipped records that the server never answered r (mu held).
func (b *backend) skipped(r pendingReply) {
	if r.typ == '1' && r.key != 0 {
		b.stmts.removeIf(r.key, r.batch)
	}
	if r.op != nil {
		r.op.skipped, r.op.settled = true, true
	}
}

// duplicateError returns the error for the client in place of the server's
// 42P05 for "pgg_dup" (see rewriter.duplicate), or nil (mu held).
func (b *backend) duplicateError(code string) *Error {
	if code != codeDuplicatePstmt || len(b.replies) == 0 || b.replies[0].op == nil || b.replies[0].op.dup == "" {
		return nil
	}
	return errorf(codeDuplicatePstmt, "prepared statement %q already exists", b.replies[0].op.dup)
}

// stmtsDropped follows a DISCARD ALL or DEALLOCATE ALL the server ran
// (pump, mu held): it holds no prepared statements now, and neither does
// the client, which learns of it before its next message.
func (b *backend) stmtsDropped() {
	b.stmts.clear()
	if c := b.client; c != nil {
		c.stmtsDropped.Store(true)
	}
}

// changeStmt gives name the meaning st (nil: closed) when a Parse or Close
// is sent, and returns the operation, to be undone if the server skips it.
func (c *client) changeStmt(name string, st *stmt) *stmtOp {
	op := &stmtOp{name: name, prev: c.stmts[name]}
	if st == nil {
		delete(c.stmts, name)
	} else {
		c.setStmt(name, st)
	}
	c.stmtOps = append(c.stmtOps, op)
	return op
}

// awaitStmtOps waits until the linked server has answered every batch sent,
// so the outcome of the client's Parse and Close messages is known, and
// undoes those it skipped (latest first).
func (c *client) awaitStmtOps() {
	if b := c.server.Load(); b != nil {
		b.awaitAnswered(c)
	}
	for i := len(c.stmtOps) - 1; i >= 0; i-- {
		if op := c.stmtOps[i]; op.skipped {
			if op.prev == nil {
				delete(c.stmts, op.name)
			} else {
				c.stmts[op.name] = op.prev
			}
		}
	}
	clear(c.stmtOps)
	c.stmtOps = c.stmtOps[:0]
	c.stmtOpState = stmtOpsNone
	c.dropStmtsIfDropped()
}

// settleStmtOps is awaitStmtOps without the wait, for session mode, where
// the server is the client's for good and names are passed through: the
// operations the server has answered are kept or undone, the others stay
// pending (what they did stands for now, as the batch that sent them would
// have it).
func (c *client) settleStmtOps() {
	b := c.server.Load()
	if b == nil {
		c.awaitStmtOps()
		return
	}
	b.mu.Lock()
	keep := c.stmtOps[:0]
	for _, op := range c.stmtOps {
		switch {
		case !op.settled:
			keep = append(keep, op)
		case op.skipped && op.prev == nil:
			delete(c.stmts, op.name)
		case op.skipped:
			c.stmts[op.name] = op.prev
		}
	}
	b.mu.Unlock()
	clear(c.stmtOps[len(keep):])
	c.stmtOps = keep
	if len(keep) == 0 {
		c.stmtOpState = stmtOpsNone
	}
	c.dropStmtsIfDropped()
}

// undoStmtOps undoes the Parse and Close operations from index from on, latest
// first: they were never sent.
func (c *client) undoStmtOps(from int) {
	for i := len(c.stmtOps) - 1; i >= from; i-- {
		op := c.stmtOps[i]
		if op.prev == nil {
			delete(c.stmts, op.name)
		} else {
			c.stmts[op.name] = op.prev
		}
	}
	clear(c.stmtOps[from:])
	c.stmtOps = c.stmtOps[:from]
}

// dropStmtsIfDropped forgets the client's statements once the server ran
// its DISCARD ALL or DEALLOCATE ALL.
func (c *client) dropStmtsIfDropped() {
	if c.stmtsDropped.Load() {
		c.stmtsDropped.Store(false)
		c.stmts, c.stmtOps = nil, nil
	}
}

// boundStmt returns the statement name of a Bind body.
func boundStmt(body []byte) []byte {
	_, rest, _ := cbytes(body)
	name, _, _ := cbytes(rest)
	return name
}

// expectedReply is a ParseComplete ('1') or CloseComplete ('3') a chunk's
// message will produce, and how many sync points precede it in the chunk.
type expectedReply struct {
	typ   byte
	syncs int
	op    *stmtOp // session mode: the named Parse or Close it settles
}

// Where a client's Parse/Close messages of named statements stand.
const (
	stmtOpsNone   = iota
	stmtOpsOpen   // in the batch under way: later messages of it see their effect
	stmtOpsBehind // in a batch sent before: the server may yet skip them
)

// learnStmtOps learns the outcome of the Parse and Close messages of named
// statements sent in batches before: in transaction mode it waits for the
// server's answers; in session mode it takes what the server answered so
// far, without waiting.
func (c *client) learnStmtOps() {
	if c.pooling == poolTransaction {
		c.awaitStmtOps()
	} else {
		c.settleStmtOps()
	}
}

// stmtOpsSynced notes a sync point: a batch with Parse/Close messages ends.
func (c *client) stmtOpsSynced() {
	if c.stmtOpState == stmtOpsOpen {
		c.stmtOpState = stmtOpsBehind
	}
}

// setStmt and friends keep the client's named prepared statements.
func (c *client) setStmt(name string, st *stmt) {
	if c.stmts == nil {
		c.stmts = make(map[string]*stmt)
	}
	c.stmts[name] = st
}

// sessionStmtsMax bounds the statements a session-mode client is remembered
// to have prepared. Past it one is forgotten: the guard then lets a Bind of
// it through, and the server's default_transaction_read_only refuses a write.
const sessionStmtsMax = 1000

// parseSession follows a session-mode client's Parse of a named statement
// (the body after the name) for the read-only guard, which judges a Bind by
// its statement's text. The server refuses a name it holds (42P05), so that
// Parse changes nothing; otherwise the name means the new text unless the
// server fails or skips the Parse (the returned op, settled by its
// ParseComplete or its batch's end).
func (c *client) parseSession(name, parse []byte) *stmtOp {
	if c.stmt(name) != nil {
		return nil
	}
	if len(c.stmts) >= sessionStmtsMax {
		for k := range c.stmts {
			delete(c.stmts, k)
			break
		}
	}
	c.stmtOpState = stmtOpsOpen
	return c.changeStmt(string(name), &stmt{parse: append([]byte(nil), parse...), effect: statementEffect(queryText(parse))})
}

// stmtOfQuery returns the statement a SQL PREPARE or DEALLOCATE name (e)
// acts on: the new one for a PREPARE of a name the client does not hold,
// the one it holds for a DEALLOCATE; else nil.
func (c *client) stmtOfQuery(e *effect) *stmt {
	switch {
	case e == nil:
	case e.prepare != "" && c.stmts[e.prepare] == nil:
		return &stmt{sql: true, name: e.prepare, parse: e.prepareParse, effect: statementEffect(queryText(e.prepareParse))}
	case e.dealloc != "":
		return c.stmts[e.dealloc]
	}
	return nil
}

// sqlStmtOp enters a SQL PREPARE (st) or DEALLOCATE name in the client's
// statements, in every pool mode, to be undone if the server fails the
// Query (the request carries the op). A statement prepared with SQL is
// held by the server under the client's own name (transaction mode pins
// the client), so a later protocol Parse of that name gets the server's
// 42P05 and a Bind, Describe or Close of it goes through unchanged.
func (c *client) sqlStmtOp(e *effect, st *stmt) *stmtOp {
	c.stmtOpState = stmtOpsOpen
	if e.prepare != "" {
		return c.changeStmt(e.prepare, st)
	}
	return c.changeStmt(e.dealloc, nil)
}

// stmtQuery reports whether a Query body is one SQL PREPARE or DEALLOCATE
// name, whose outcome the statement table follows.
func stmtQuery(body []byte) bool {
	e := statementEffect(queryText(body))
	return e != nil && (e.prepare != "" || e.dealloc != "")
}

// stmt looks a statement up by a name still in the read buffer (no copy).
func (c *client) stmt(name []byte) *stmt { return c.stmts[string(name)] }
