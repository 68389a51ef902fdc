package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// A transaction-mode client's LISTEN, UNLISTEN and UNLISTEN * are answered
// by pgguard, as the server would answer them, and kept in the database's
// listener (listen.go) instead of pinning the client to a server. They
// follow the server's transactional rules (PostgreSQL docs, LISTEN): in a
// transaction block they are staged and take effect when it commits (the
// pump's unitDone calls settle), never if it rolls back; in an aborted one
// they fail with 25P02. Notifications reach a client between its
// transactions, as a server delivers them, in the order the server sent them.
//
// A client's stream of replies has one writer at a time at message
// boundaries: while a server may be answering it (from each send until the
// pump has flushed a ReadyForQuery that leaves it idle outside a
// transaction), notifications wait in the subscriber's buffer; then a
// writer goroutine delivers them. The buffer is capped at
// notify.client_buffer bytes: a client past it is disconnected (54000), so
// a client that stops reading holds no memory and slows nobody else.

// listenOp is one LISTEN (or UNLISTEN) statement; UNLISTEN * has channel "".
type listenOp struct {
	unlisten bool
	channel  string
}

// subscriber is one client's part in its database's listener.
type subscriber struct {
	c *client
	l *listener

	// LISTEN statements the client prepared, by name; pgguard answers for
	// them (client goroutine).
	stmts map[string]heldStmt

	// Guarded by l.mu.
	channels map[string]struct{} // committed subscriptions
	staged   []listenOp          // in the open transaction block, in order
	nchan    atomic.Int32        // len(channels), read without l.mu

	// Delivery, guarded by mu.
	mu          sync.Mutex
	pending     []byte // undelivered NotificationResponse/NoticeResponse messages
	pendingMsgs int    // notifications among them
	inflight    int    // bytes a writer is writing
	busy        bool   // a server may be answering the client: pending waits
	gen         uint64 // sends to a server so far (sending)
	writing     bool   // a writer goroutine runs
	cut         bool   // the client is being disconnected
}

// listenKeyword reports whether sql starts with LISTEN or UNLISTEN, the
// cheap test before a parse.
func listenKeyword(sql []byte) bool {
	i := 0
	for i < len(sql) && (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r') {
		i++
	}
	if i == len(sql) || sql[i]|0x20 != 'l' && sql[i]|0x20 != 'u' {
		return false
	}
	word := sql[i:]
	if len(word) > 8 {
		word = word[:8]
	}
	return len(word) >= 6 && bytes.EqualFold(word[:6], []byte("listen")) ||
		len(word) >= 8 && bytes.EqualFold(word, []byte("unlisten"))
}

// listenTexts caches parsed texts: a client LISTENs the same few.
var listenTexts = struct {
	sync.Mutex
	m map[string][]listenOp
}{m: map[string][]listenOp{}}

// listenOps returns the statements of the SQL text at the front of body
// (a Query's, or a Parse's after the name) when every one is a LISTEN or
// UNLISTEN; false for anything else (which goes to a server as before).
// Other texts cost a look at their first word.
func listenOps(body []byte) ([]listenOp, bool) {
	if !listenKeyword(body) {
		return nil, false
	}
	sql := queryText(body)
	listenTexts.Lock()
	ops, ok := listenTexts.m[string(sql)]
	listenTexts.Unlock()
	if ok {
		return ops, ops != nil
	}
	ops = parseListenOps(string(sql))
	listenTexts.Lock()
	if len(listenTexts.m) >= 1024 {
		clear(listenTexts.m)
	}
	listenTexts.m[string(sql)] = ops
	listenTexts.Unlock()
	return ops, ops != nil
}

func parseListenOps(sql string) []listenOp {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) == 0 {
		return nil // the server reports the syntax error
	}
	ops := make([]listenOp, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		switch n := raw.Stmt; {
		case n.GetListenStmt() != nil:
			ops = append(ops, listenOp{channel: n.GetListenStmt().Conditionname})
		case n.GetUnlistenStmt() != nil:
			ops = append(ops, listenOp{unlisten: true, channel: n.GetUnlistenStmt().Conditionname})
		default:
			return nil
		}
	}
	return ops
}

// listenExchange is a LISTEN exchange at the front of a client's input: a
// Query of LISTEN statements, or an extended-protocol batch up to its Sync
// whose every message is about a LISTEN statement pgguard holds (Parse of
// one, Bind, Describe, Execute and Close of it and its unnamed portal).
type listenExchange struct {
	ops   []listenOp  // statements executed, in order
	defs  []listenDef // statements the batch defines or closes, in order
	reply []byte      // the server's replies, but for the final ReadyForQuery
	last  byte        // 'Q' or 'S'
	n     int         // bytes it spans
}

// listenDef is a named LISTEN statement a Parse defines (ops) or a Close
// closes (nil ops).
type listenDef struct {
	name string
	ops  []listenOp
}

// heldStmt is a LISTEN statement a client prepared, which pgguard holds
// (no server has it): its statements, and for the unnamed one the
// client's unnamedGen when it was parsed.
type heldStmt struct {
	ops []listenOp
	gen uint64
}

// scanListen looks for a LISTEN exchange at the front of data, whose first
// message is whole; ok false when there is none, more when one may be
// still arriving.
func (c *client) scanListen(data []byte) (ex listenExchange, ok, more bool) {
	if data[0] == 'Q' {
		n := 1 + int(binary.BigEndian.Uint32(data[1:]))
		ops, ok := listenOps(data[5:n])
		if !ok {
			return ex, false, false
		}
		for _, op := range ops {
			ex.reply = appendTag(ex.reply, op.tag())
		}
		return listenExchange{ops: ops, reply: ex.reply, last: 'Q', n: n}, true, false
	}
	var portal []listenOp // the unnamed portal's statement, once bound
	lookup := func(name []byte) []listenOp {
		for i := len(ex.defs) - 1; i >= 0; i-- {
			if ex.defs[i].name == string(name) {
				return ex.defs[i].ops
			}
		}
		return c.heldStmt(name)
	}
	for pos := 0; ; {
		if len(data)-pos < 5 {
			return ex, false, pos > 0
		}
		typ := data[pos]
		end := pos + 1 + int(binary.BigEndian.Uint32(data[pos+1:]))
		if end > len(data) {
			return ex, false, pos > 0 && end-pos <= 64<<10
		}
		body := data[pos+5 : end]
		pos = end
		switch typ {
		case 'P':
			name, rest, ok := cbytes(body)
			if !ok {
				return ex, false, false
			}
			ops, ok := listenOps(rest)
			if !ok || len(ops) != 1 {
				return ex, false, false
			}
			ex.defs = append(ex.defs, listenDef{string(name), ops})
			ex.reply = append(ex.reply, '1', 0, 0, 0, 4)
		case 'B':
			name, rest, ok := cbytes(body)
			stmt, _, ok2 := cbytes(rest)
			if !ok || !ok2 || len(name) > 0 {
				return ex, false, false
			}
			if portal = lookup(stmt); portal == nil {
				return ex, false, false
			}
			ex.reply = append(ex.reply, '2', 0, 0, 0, 4)
		case 'D', 'C':
			if len(body) < 2 {
				return ex, false, false
			}
			name, _, ok := cbytes(body[1:])
			switch {
			case !ok:
				return ex, false, false
			case body[0] == 'S' && lookup(name) != nil:
				if typ == 'C' {
					ex.defs = append(ex.defs, listenDef{name: string(name)})
				}
			case body[0] == 'P' && len(name) == 0 && portal != nil:
				if typ == 'C' {
					portal = nil
				}
			default:
				return ex, false, false
			}
			switch {
			case typ == 'C':
				ex.reply = append(ex.reply, '3', 0, 0, 0, 4)
			case body[0] == 'S':
				ex.reply = append(ex.reply, 't', 0, 0, 0, 6, 0, 0, 'n', 0, 0, 0, 4) // no parameters, no rows
			default:
				ex.reply = append(ex.reply, 'n', 0, 0, 0, 4)
			}
		case 'E':
			if len(body) < 1 || body[0] != 0 || portal == nil {
				return ex, false, false
			}
			ex.ops = append(ex.ops, portal...)
			ex.reply = appendTag(ex.reply, portal[0].tag())
		case 'S', 'H':
			// Flush: asyncpg prepares with Parse, Describe, Flush, then
			// binds and executes in a batch of its own.
			ex.last, ex.n = typ, end
			return ex, true, false
		default:
			return ex, false, false
		}
	}
}

// heldStmt returns the LISTEN statement of c's named name pgguard holds,
// or nil. The unnamed one counts while the client has parsed no other.
func (c *client) heldStmt(name []byte) []listenOp {
	s := c.listen.Load()
	if s == nil {
		return nil
	}
	h, ok := s.stmts[string(name)]
	if !ok || len(name) == 0 && (c.unnamed != nil || h.gen != c.unnamedGen) {
		return nil
	}
	return h.ops
}

// mayListen reports whether a message of type typ at the start of a batch
// may begin a LISTEN exchange: a Query or Parse whose text starts with
// LISTEN or UNLISTEN, or any message of a client that holds LISTEN
// statements. It is all a statement that is not one costs.
func (c *client) mayListen(typ byte, body []byte) bool {
	switch typ {
	case 'Q':
		return listenKeyword(body)
	case 'P':
		i := bytes.IndexByte(body, 0)
		return i >= 0 && listenKeyword(body[i+1:])
	case 'B', 'D', 'C', 'E':
		return c.listen.Load() != nil
	}
	return false
}

func (op listenOp) tag() string {
	if op.unlisten {
		return "UNLISTEN"
	}
	return "LISTEN"
}

// listenStatement answers a LISTEN exchange at the front of data (a
// transaction-mode client, nothing unanswered before it) and returns the
// bytes it consumed: 0 when data does not start with one, or pgguard
// leaves it to a server (pinned clients that never used the listener,
// pipelined replies outstanding); -1 when one may be still arriving.
func (c *client) listenStatement(data []byte) int {
	// At a sync point, or after a Flush that ended a LISTEN exchange (a
	// client's Flush that reached a server keeps it linked, open).
	if !c.p.cfg.Load().Notify.Pooled || c.skip > 0 || !isSyncPoint(c.lastTyp) && c.lastTyp != 'H' {
		return 0
	}
	ex, ok, more := c.scanListen(data)
	if !ok {
		if more {
			return -1
		}
		return 0
	}
	if c.pinned.Load() && c.listen.Load() == nil {
		return 0 // it LISTENs on its own server, as in session mode
	}
	status, linked := byte('I'), false
	if b := c.server.Load(); b != nil {
		b.mu.Lock()
		if b.client == c {
			if b.queue.len() > 0 || b.open {
				b.mu.Unlock()
				return 0 // replies still coming: they go first, on its server
			}
			status, linked = b.txStatus, true
		}
		b.mu.Unlock()
	}
	if status == 'E' && ex.last == 'H' {
		return 0 // the server fails it and skips to the Sync, as it should
	}
	var e *Error
	if status == 'E' {
		e = errorf("25P02", "current transaction is aborted, commands ignored until end of transaction block")
	} else if err := c.db.listen.apply(c, ex.ops, status != 'I', linked && status != 'I'); err != nil {
		e = errorf(codeConnectionFailure, "could not LISTEN: %v", err)
		e.Cause = err
		c.p.log.Warn("LISTEN failed", "client", c.id, "database", c.db.name, "err", err)
	}
	var out []byte
	if e != nil {
		out = e.encode(out)
	} else {
		out = ex.reply
		if s := c.listen.Load(); s != nil && len(ex.defs) > 0 {
			s.define(ex.defs, c.unnamedGen)
			for _, d := range ex.defs {
				if d.name == "" {
					c.unnamed, c.unnamedEff = nil, nil // its unnamed statement is the LISTEN pgguard holds
				}
			}
		}
	}
	if ex.last != 'H' {
		out = append(out, 'Z', 0, 0, 0, 5, status)
	} else if e != nil {
		c.discarding = true // the rest of the batch is skipped to its Sync
	}
	c.write(out)
	c.lastTyp = ex.last
	if c.discarding {
		return c.discard(data, ex.n)
	}
	return ex.n
}

// define records the LISTEN statements an exchange prepared or closed
// (client goroutine).
func (s *subscriber) define(defs []listenDef, unnamedGen uint64) {
	for _, d := range defs {
		if d.ops == nil {
			delete(s.stmts, d.name)
			continue
		}
		if s.stmts == nil {
			s.stmts = map[string]heldStmt{}
		}
		s.stmts[d.name] = heldStmt{ops: d.ops, gen: unnamedGen}
	}
}

// appendTag appends a CommandComplete.
func appendTag(dst []byte, tag string) []byte {
	dst, at := beginMsg(dst, 'C')
	dst = append(dst, tag...)
	return endMsg(append(dst, 0), at)
}

// apply carries out a client's LISTEN statements: at once outside a
// transaction block, staged inside one (inTx). It returns once every
// channel the client now listens to is LISTENed on the listening
// connection, so a notification committed after the client's reply
// reaches it. busy: a server is linked in a transaction (delivery waits
// for its end).
func (l *listener) apply(c *client, ops []listenOp, inTx, busy bool) error {
	l.mu.Lock()
	s := l.subs[c]
	if s == nil {
		s = &subscriber{c: c, l: l, channels: map[string]struct{}{}, busy: busy}
		l.subs[c] = s
		c.listen.Store(s)
	}
	var need []*channel
	for _, op := range ops {
		switch {
		case inTx:
			s.staged = append(s.staged, op)
			if !op.unlisten {
				ch := l.channelLocked(op.channel)
				ch.staged++
				need = append(need, ch)
			}
		case !op.unlisten:
			need = append(need, l.subscribeLocked(s, op.channel))
		default:
			l.unsubscribeLocked(s, op.channel)
		}
	}
	// A channel UNLISTENed later in the same statements is not waited for.
	need = slices.DeleteFunc(need, func(ch *channel) bool { return l.channels[ch.name] != ch })
	if len(need) == 0 {
		l.mu.Unlock()
		return nil
	}
	down := l.conn == nil
	if !down {
		l.listenLocked(need)
	}
	l.mu.Unlock()
	if down {
		if err := l.ensure(c.p.ctx); err != nil {
			l.undo(s, ops, inTx)
			return err
		}
	}
	ctx, cancel := context.WithTimeout(c.p.ctx, max(c.p.cfg.Load().Pool.ConnectTimeout.Duration, 10*time.Second))
	defer cancel()
	for _, ch := range need {
		l.mu.Lock()
		cmd := ch.listen
		l.mu.Unlock()
		if cmd == nil {
			l.undo(s, ops, inTx)
			return errors.New("the listening connection ended")
		}
		select {
		case <-cmd.done:
		case <-ctx.Done():
			l.undo(s, ops, inTx)
			return fmt.Errorf("no answer from the listening connection within %s", max(c.p.cfg.Load().Pool.ConnectTimeout.Duration, 10*time.Second))
		}
		if cmd.err != nil {
			l.undo(s, ops, inTx)
			return cmd.err
		}
	}
	return nil
}

// undo takes back the LISTENs of ops that could not be confirmed.
func (l *listener) undo(s *subscriber, ops []listenOp, inTx bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if inTx {
		s.staged = s.staged[:max(len(s.staged)-len(ops), 0)]
	}
	for _, op := range ops {
		if op.unlisten {
			continue
		}
		if ch := l.channels[op.channel]; ch != nil {
			if inTx {
				ch.staged--
				l.channelDroppedLocked(ch)
			} else {
				l.unsubscribeLocked(s, op.channel)
			}
		}
	}
}

// listenLocked LISTENs the channels of need not LISTENed yet, in one
// Query (mu held, connection up).
func (l *listener) listenLocked(need []*channel) {
	var names []string
	for _, ch := range need {
		if ch.listen == nil && !contains(names, ch.name) {
			names = append(names, ch.name)
		}
	}
	if len(names) == 0 {
		return
	}
	cmd := l.sendLocked(l.conn, listenSQL("LISTEN", names))
	for _, n := range names {
		l.channels[n].listen = cmd
	}
}

func contains(s []string, v string) bool {
	for _, e := range s {
		if e == v {
			return true
		}
	}
	return false
}

// channelLocked returns the channel named name, creating it (mu held).
func (l *listener) channelLocked(name string) *channel {
	ch := l.channels[name]
	if ch == nil {
		ch = &channel{name: name, subs: map[*subscriber]struct{}{}}
		l.channels[name] = ch
	}
	return ch
}

// subscribeLocked makes s a subscriber of name (mu held).
func (l *listener) subscribeLocked(s *subscriber, name string) *channel {
	ch := l.channelLocked(name)
	ch.subs[s] = struct{}{}
	s.channels[name] = struct{}{}
	s.nchan.Store(int32(len(s.channels)))
	return ch
}

// unsubscribeLocked ends s's subscription to name, or to every channel
// for "" (UNLISTEN *) (mu held).
func (l *listener) unsubscribeLocked(s *subscriber, name string) {
	for n := range s.channels {
		if name != "" && n != name {
			continue
		}
		delete(s.channels, n)
		if ch := l.channels[n]; ch != nil {
			delete(ch.subs, s)
			l.channelDroppedLocked(ch)
		}
	}
	s.nchan.Store(int32(len(s.channels)))
}

// settle ends the transaction block of s's client: its staged statements
// take effect in order if it committed, else are forgotten. Called by the
// pump at the ReadyForQuery that ends the block, before the client reads it.
func (l *listener) settle(s *subscriber, committed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(s.staged) == 0 {
		return
	}
	var touched []*channel
	for _, op := range s.staged {
		switch {
		case !op.unlisten:
			ch := l.channels[op.channel]
			if ch == nil {
				continue
			}
			ch.staged--
			touched = append(touched, ch)
			if committed {
				l.subscribeLocked(s, op.channel)
			}
		case committed:
			l.unsubscribeLocked(s, op.channel)
		}
	}
	s.staged = s.staged[:0]
	for _, ch := range touched {
		if l.channels[ch.name] == ch {
			l.channelDroppedLocked(ch)
		}
	}
}

// leave forgets a client that disconnected.
func (l *listener) leave(s *subscriber) {
	l.mu.Lock()
	for _, op := range s.staged {
		if ch := l.channels[op.channel]; !op.unlisten && ch != nil {
			ch.staged--
			l.channelDroppedLocked(ch)
		}
	}
	s.staged = nil
	l.unsubscribeLocked(s, "")
	delete(l.subs, s.c)
	l.mu.Unlock()
	s.mu.Lock()
	s.cut, s.pending = true, nil
	s.mu.Unlock()
}

// enqueue adds messages (count notifications among them) to what s's
// client is to be sent; false when that would pass notify.client_buffer.
func (s *subscriber) enqueue(msg []byte, count int) bool {
	limit := s.c.p.cfg.Load().Notify.ClientBuffer
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		return true // leaving: its subscriptions go with it
	}
	if len(s.pending)+s.inflight+len(msg) > limit {
		return false
	}
	s.pending = append(s.pending, msg...)
	s.pendingMsgs += count
	s.startLocked()
	return true
}

// startLocked starts a writer when there is something to deliver and the
// client's stream is free (mu held).
func (s *subscriber) startLocked() {
	if !s.busy && !s.writing && !s.cut && len(s.pending) > 0 {
		s.writing = true
		go s.write()
	}
}

// overflow marks s cut for passing its buffer and returns how many
// notifications it drops (-1 if it was cut already).
func (s *subscriber) overflow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		return -1
	}
	n := s.pendingMsgs
	s.cut, s.pending, s.pendingMsgs = true, nil, 0
	return n
}

// cutOff disconnects a client that left limit bytes of notifications unread.
func (s *subscriber) cutOff(limit int) {
	c := s.c
	c.p.log.Warn("disconnecting a client that does not read its notifications (past notify.client_buffer)",
		"client", c.id, "application_name", c.app, "client_buffer", limit)
	go c.closeWith(fatalf("54000",
		"terminating connection: more than notify.client_buffer = %d bytes of notifications were waiting for this client to read them; read notifications promptly, or raise notify.client_buffer", limit))
}

// writeChunk bounds one write of notifications.
const writeChunk = 32 << 10

// write is the writer goroutine: it delivers what is pending while the
// client's stream is free, deciding under the socket's write lock, so it
// never comes between the pieces of a server's reply.
func (s *subscriber) write() {
	defer s.c.p.recoverPanic("notification writer", func() {})
	for {
		var buf []byte
		_, err := s.c.out.writeFrom(func() []byte {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.busy || s.cut || len(s.pending) == 0 {
				s.writing = false
				return nil
			}
			// Whole messages, a bounded piece at a time: what the client
			// has not taken stays counted as undelivered.
			n := 0
			for n < len(s.pending) && n < writeChunk {
				if s.pending[n] == 'A' {
					s.pendingMsgs--
				}
				n += 1 + int(binary.BigEndian.Uint32(s.pending[n+1:]))
			}
			buf = s.pending[:n:n]
			s.pending = s.pending[n:]
			if len(s.pending) == 0 {
				s.pending, s.pendingMsgs = nil, 0
			}
			s.inflight = len(buf)
			return buf
		})
		if buf == nil {
			return
		}
		s.mu.Lock()
		s.inflight = 0
		if err != nil {
			s.writing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// sending notes that a server is about to answer s's client (its mu held
// by the caller's backend): delivery waits for the pump's quiet.
func (s *subscriber) sending() {
	s.mu.Lock()
	s.busy = true
	s.gen++
	s.mu.Unlock()
}

// sends returns how many sends s's client made.
func (s *subscriber) sends() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// quiet is called by the pump once it flushed a ReadyForQuery that left
// the client idle outside a transaction, as of gen sends: unless the
// client sent more since, pending notifications go out.
func (s *subscriber) quiet(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return
	}
	s.busy = false
	s.startLocked()
}

// Hooks the relay calls; each costs a nil check for clients that never
// used the listener.

// listenSending is called under b.mu as c's bytes are readied for b.
func (c *client) listenSending() {
	if s := c.listen.Load(); s != nil {
		s.sending()
	}
}

// listenSettle ends c's transaction block (b.mu held): committed or not.
func (c *client) listenSettle(committed bool) {
	if s := c.listen.Load(); s != nil {
		s.l.settle(s, committed)
	}
}

// listenDiscarded follows c's DISCARD ALL, which UNLISTENs everything
// (b.mu held; never in a transaction block).
func (c *client) listenDiscarded() {
	if s := c.listen.Load(); s != nil {
		s.l.mu.Lock()
		s.l.unsubscribeLocked(s, "")
		s.l.mu.Unlock()
	}
}

// leaveListener forgets c's subscriptions (disconnect).
func (c *client) leaveListener() {
	if s := c.listen.Load(); s != nil {
		s.l.leave(s)
	}
}

// listening reports whether c subscribes to a channel through pgguard: it
// waits for notifications, not idling (the reaper spares it).
func (c *client) listening() bool {
	s := c.listen.Load()
	return s != nil && s.nchan.Load() > 0
}

// noteQuiet records, at a ReadyForQuery of c's that leaves it idle
// outside a transaction (mu held), that its stream is free once the pump
// has flushed; quietFlushed acts on it after the flush.
func (b *backend) noteQuiet(c *client, status byte) {
	if c == nil || status != 'I' || b.queue.len() > 0 || b.open {
		return
	}
	if s := c.listen.Load(); s != nil {
		b.rd.quiet, b.rd.quietGen = s, s.sends()
	}
}

// quietFlushed is called by the pump after each flush.
func (b *backend) quietFlushed() {
	if s := b.rd.quiet; s != nil {
		b.rd.quiet = nil
		s.quiet(b.rd.quietGen)
	}
}
