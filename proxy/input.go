package proxy

// A client's input: reading its socket (fill), framing its messages
// whatever the chunking (process), and deciding per message what happens
// to it: answered by pgguard (cache, LISTEN, refusals, read-only), passed
// to the server (send, link.go) or discarded after an error until the
// client's Sync.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/pgguard/pgguard/cache"
)

const readBufSize = 16 << 10

// readBufs holds arrays, not slices: putting one back then allocates nothing.
var readBufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

func getReadBuf() []byte { return readBufs.Get().(*[readBufSize]byte)[:] }

func putReadBuf(b []byte) {
	if cap(b) == readBufSize {
		readBufs.Put((*[readBufSize]byte)(b[:readBufSize]))
	}
}

// fill reads more client input into buf. On plain TCP it waits for input
// without holding a buffer: the borrowed one goes back while the socket is empty.
func (c *client) fill() error {
	if c.raw == nil {
		if c.buf == nil {
			c.buf = getReadBuf()
		}
		n, err := c.conn.Read(c.buf[c.w:])
		c.w += n
		if n > 0 {
			return nil
		}
		return err
	}
	if err := c.raw.Read(c.readFn); err != nil {
		return err
	}
	if c.rerr != nil {
		return c.rerr
	}
	return nil
}

// readRaw is the syscall.RawConn callback: it returns false to park the
// goroutine in the netpoller until the socket is readable.
func (c *client) readRaw(fd uintptr) bool {
	if c.buf == nil {
		c.buf = getReadBuf()
	}
	p := c.buf[c.w:]
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	switch {
	case e == syscall.EAGAIN:
		if c.w == 0 {
			putReadBuf(c.buf)
			c.buf = nil
		}
		return false
	case e == syscall.EINTR:
		return c.readRaw(fd)
	case e != 0:
		c.rerr = e
	case n == 0:
		c.rerr = errClientEOF
	default:
		c.w += int(n)
	}
	return true
}

var (
	errClientEOF   = errors.New("client closed the connection")
	errTerminate   = errors.New("client sent Terminate")
	errServerWrite = errors.New("write to server failed")
	errServerSync  = errors.New("could not apply the session's parameters on a server connection")
)

// isSyncPoint reports whether a client message closes a batch: the server
// answers it with ReadyForQuery (Query, Sync, FunctionCall) or ends a COPY.
func isSyncPoint(typ byte) bool {
	return typ == 'Q' || typ == 'S' || typ == 'F' || typ == 'c' || typ == 'f'
}

// inspectClient reports whether a client message must be whole before it is
// forwarded (pgguard reads it).
func inspectClient(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'C', 'X':
		return true
	}
	return false
}

// process forwards every complete message in buf (and the available part of
// large messages pgguard need not read) to the server, acquiring one first.
func (c *client) process() error {
	testPanic("process")
	c.dropStmtsIfDropped()
	data := c.buf[:c.w]
	from, pos := 0, 0 // data[from:pos] is forwarded
	if c.skip > 0 {
		pos = min(c.skip, len(data))
		c.skip -= pos
		if c.discarding {
			from = pos
		}
	}
	if c.discarding && c.skip == 0 {
		pos = c.discard(data, pos)
		from = pos
	}
	lead := pos - from // bytes continuing a message streamed from the last read
	ch := chunk{transaction: c.pooling == poolTransaction}
	transaction := ch.transaction
	cfg := c.p.cfg.Load()
	maxMsg, readOnly := cfg.MaxMessageSize, cfg.ReadOnly || c.p.Limiter.Budget().Action() == "read_only"
	fallbackWhy, onFallback := c.db.fallbackReadOnly()
	readOnly = readOnly || onFallback
	ch.cached = c.p.Cache.Enabled()
	cached := ch.cached
	if cached && c.cached == nil {
		c.cached = new(clientCache)
	}
	for len(data)-pos >= 5 {
		typ := data[pos]
		n := int(binary.BigEndian.Uint32(data[pos+1:]))
		if n < 4 || n > maxMsg {
			return fatalf(codeProtocolViolation, "message of %d bytes is outside 4..max_message_size = %d; raise max_message_size if it is legitimate", n, maxMsg)
		}
		end := pos + 1 + n
		if end > len(data) {
			if inspectClient(typ) {
				break // wait for the whole message
			}
			c.skip = end - len(data)
			c.lastTyp = typ
			pos = len(data)
			break
		}
		body := data[pos+5 : end]
		if cached && from == pos && c.cached.missFill == nil && (typ == 'Q' || typ == 'P' || typ == 'B') {
			n, err := c.fromCache(data[pos:])
			if n < 0 {
				break // the rest of the execution is on its way
			}
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Fatal() {
					return err
				}
				c.refuse(e, 1)
			}
			if n > 0 { // answered from the cache, or refused
				pos += n
				from = pos
				continue
			}
		}
		if transaction && from == pos && c.mayListen(typ, body) {
			n := c.listenStatement(data[pos:]) // LISTEN, UNLISTEN (listen_client.go)
			if n < 0 {
				break // the rest of its batch is on its way
			}
			if n > 0 {
				pos += n
				from = pos
				continue
			}
		}
		if c.stmtOpState == stmtOpsBehind && namedStmtMessage(typ, body) || c.stmtOpState != stmtOpsNone && typ == 'Q' && stmtQuery(body) {
			// A statement name after a batch whose Parse or Close of one
			// may yet be skipped: send what came before and learn how it went.
			if err := c.send(data[from:pos], lead, ch.slow); err != nil {
				return err
			}
			from, lead = pos, 0
			ch.sent()
			c.learnStmtOps()
		}
		if readOnly {
			if v := c.p.guard(typ, body, c); v.Write {
				if err := c.send(data[from:pos], lead, ch.slow); err != nil {
					return err
				}
				from, lead = end, 0
				ch.sent()
				if err := c.refuseWrite(typ, v.Reason, fallbackWhy, body); err != nil {
					return err
				}
				c.lastTyp = typ
				pos = end
				if typ != 'Q' {
					pos = c.discard(data, pos)
					from = pos
				}
				continue
			}
		}
		if typ == 'X' {
			if err := c.send(data[from:pos], lead, ch.slow); err != nil {
				return err
			}
			return errTerminate
		}
		c.note(typ, body, &ch)
		c.lastTyp = typ
		pos = end
	}
	if queries := ch.queries; queries > 0 {
		c.db.queryCount.Add(uint64(queries))
		c.db.queries.Add(float64(queries))
		for i := 0; i < queries; i++ {
			c.lim.Observe()
		}
	}
	c.lastActive.Store(time.Now().UnixNano())
	c.mayDefer = pos == len(data) && c.skip == 0 && !c.discarding && transaction && c.raw != nil && c.db.rs == nil
	err := c.send(data[from:pos], lead, ch.slow)
	c.mayDefer = false
	switch {
	case err == errDeferred:
		// p stays where it is: the read buffer goes to the handoff.
		c.handoff.syncs, c.handoff.buf, c.buf, c.w = ch.syncs, c.buf, nil, 0
		return nil
	case err != nil:
		var e *Error
		if !errors.As(err, &e) || e.Fatal() {
			return err
		}
		c.refuse(e, ch.syncs)
	}
	c.keep(data[pos:])
	return nil
}

// chunk is what process notes of the messages it relays from one read,
// for send: since the last send, how many sync points and executions
// they hold, and whether statement names must be translated or the
// unnamed statement parsed again (slow: the rewriter, stmts.go).
type chunk struct {
	syncs, queries int
	slow           bool
	// transaction mode; the result cache has rules.
	transaction, cached bool
}

// sent starts the notes over after a send.
func (ch *chunk) sent() { ch.syncs, ch.slow = 0, false }

// note records what a message relayed to the server means for the
// client's bookkeeping: its statements (stmts.go), its session effects,
// the tables it may write (the result cache), its sync points for the
// query log and the limiter.
func (c *client) note(typ byte, body []byte, ch *chunk) {
	switch typ {
	case 'Q':
		c.noteSimpleQuery(body, ch)
	case 'P':
		c.noteParse(body, ch)
	case 'C':
		c.noteClose(body, ch)
	case 'B', 'D':
		c.noteBind(typ, body, ch)
	case 'E':
		ch.queries++
		c.batchExec = true
	case 'S', 'F':
		ch.syncs++
		c.stmtOpsSynced()
		if typ == 'F' && ch.cached {
			c.cached.writes.Add(cache.Targets{All: true}) // a function may write anything
		}
		c.syncPoint(pendingQuery{text: c.batchText, query: c.batchExec, extended: true, args: c.batchArgs})
		c.batchText, c.batchExec, c.batchArgs = "", false, 0
	}
}

// noteSimpleQuery notes a simple Query: a sync point and an execution.
func (c *client) noteSimpleQuery(body []byte, ch *chunk) {
	ch.syncs++
	ch.queries++
	text := queryText(body)
	e := statementEffect(text)
	c.addEffect(e)
	var op *stmtOp
	switch st := c.stmtOfQuery(e); {
	case st == nil:
	case ch.transaction && !st.sql:
		ch.slow = true // a statement the client prepared with Parse (rewriter.deallocate)
		c.stmtOpState = stmtOpsOpen
	default:
		op = c.sqlStmtOp(e, st)
	}
	c.stmtOpsSynced()
	c.unnamedSeen = 2
	if ch.cached {
		c.cached.writes.Add(c.p.Cache.Writes(text))
	}
	c.noteQuery(text, false)
	c.queued[len(c.queued)-1].op = op
}

// noteParse notes a Parse: the statement it makes, named or unnamed.
func (c *client) noteParse(body []byte, ch *chunk) {
	var op *stmtOp
	if name, rest, ok := cbytes(body); ok {
		// What it does to the session counts when it runs (Bind).
		c.batchText = c.intern(queryText(rest))
		if len(name) == 0 {
			c.unnamedNext = append(c.unnamedNext[:0], rest...)
			c.unnamedNextEffect = statementEffect(queryText(rest))
			c.unnamedSeen = 1
		}
		if ch.transaction && len(name) > 0 {
			ch.slow = true
			c.stmtOpState = stmtOpsOpen
		}
		if !ch.transaction && len(name) > 0 {
			op = c.parseSession(name, rest)
		}
	}
	c.expect = append(c.expect, expectedReply{'1', ch.syncs, op})
}

// noteClose notes a Close of a statement or portal.
func (c *client) noteClose(body []byte, ch *chunk) {
	var op *stmtOp
	named := namedStmtMessage('C', body)
	if ch.transaction && named {
		ch.slow = true
		c.stmtOpState = stmtOpsOpen
	}
	if !ch.transaction && named {
		if name, _, _ := cbytes(body[1:]); c.stmt(name) != nil {
			op = c.changeStmt(string(name), nil)
			c.stmtOpState = stmtOpsOpen
		}
	}
	c.expect = append(c.expect, expectedReply{'3', ch.syncs, op})
}

// noteBind notes a Bind or Describe: the statement it names, and for a
// Bind what running it does to the session and may write.
func (c *client) noteBind(typ byte, body []byte, ch *chunk) {
	ch.slow = ch.slow || (ch.transaction && (namedStmtMessage(typ, body) ||
		c.unnamedSeen == 0 && c.unnamed != nil && unnamedStmtMessage(typ, body)))
	if typ != 'B' {
		return
	}
	if ch.cached {
		c.cached.writes.Add(c.boundWrites(body))
	}
	if name := boundStmt(body); len(name) > 0 {
		if st := c.stmt(name); st != nil {
			c.batchText = c.intern(queryText(st.parse))
			c.addEffect(st.effect) // each run: a cached SET run again, say
		}
	} else {
		c.addEffect(c.unnamedEffect())
	}
	c.batchArgs = c.bindArgs(c.batchArgs, body)
}

// queryText returns the SQL of a Query or Parse body (up to its NUL).
func queryText(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// addEffect records e, if any. One that drops prepared statements makes a
// later batch naming one wait for it, like a Parse or Close.
func (c *client) addEffect(e *effect) {
	if e == nil {
		return
	}
	c.effects = append(c.effects, e)
	if e.dropsStmts {
		c.stmtOpState = stmtOpsOpen
	}
}

// refuseWrite refuses a Query, Parse or Bind that would write while the
// read-only switch is on (SQLSTATE 25006). With a server linked, replies may
// still be on their way, so the server raises the error in stream order (and
// aborts the transaction, as PostgreSQL would); otherwise pgguard answers.
// A refused extended-protocol message makes the rest of its batch skipped.
func (c *client) refuseWrite(typ byte, reason, fallbackWhy string, body []byte) error {
	e := readOnlyError(reason)
	if fallbackWhy != "" {
		e.Message, e.Hint = "cannot execute "+reason+": "+fallbackWhy, ""
	}
	c.p.metrics.ClientRefusals.WithLabelValues(codeReadOnlyTx).Inc()
	open := c.skip > 0 || !isSyncPoint(c.lastTyp)
	if c.server.Load() == nil && !open {
		buf := e.encode(nil)
		if typ == 'Q' {
			buf = append(buf, 'Z', 0, 0, 0, 5, 'I')
		} else {
			c.discarding = true
		}
		c.write(buf)
		return nil
	}
	var q []byte
	if open || typ != 'Q' {
		// End the batch first (the server may be skipping to Sync after an
		// error); the client must not see that ReadyForQuery.
		q = append(q, 'S', 0, 0, 0, 4)
		c.syncPoint(pendingQuery{quiet: true})
	}
	q = appendQuery(q, raiseSQL(e))
	if typ == 'Q' {
		c.noteQuery(queryText(body), false)
	} else {
		c.syncPoint(pendingQuery{text: c.batchText, query: true, extended: true})
		c.discarding, c.discardQuiet = true, true
	}
	last := c.lastTyp
	c.lastTyp = 'Q'
	err := c.send(q, 0, false)
	c.lastTyp = last
	return err
}

// refuse answers the messages just dropped with an error per batch and a
// ReadyForQuery per sync point; a batch still open is discarded up to its
// Sync (PostgreSQL docs 55.2.3: after an error the server skips to Sync).
func (c *client) refuse(e *Error, syncs int) {
	open := c.skip > 0 || !isSyncPoint(c.lastTyp)
	status := byte('I')
	if b := c.server.Load(); b != nil {
		// Session mode: the server's transaction goes on, untouched.
		b.mu.Lock()
		status = b.txStatus
		b.mu.Unlock()
	}
	var buf []byte
	for i := 0; i < syncs; i++ {
		buf = e.encode(buf)
		buf = append(buf, 'Z', 0, 0, 0, 5, status)
	}
	if open {
		buf = e.encode(buf)
		c.discarding = true
	}
	c.write(buf)
	c.p.metrics.ClientRefusals.WithLabelValues(e.Code).Inc()
}

// discard drops the messages of a refused batch up to and including its
// Sync, answered with ReadyForQuery; it returns where forwarding resumes.
func (c *client) discard(data []byte, pos int) int {
	for len(data)-pos >= 5 {
		typ := data[pos]
		end := pos + 1 + int(binary.BigEndian.Uint32(data[pos+1:]))
		if end > len(data) {
			if typ == 'S' || typ == 'X' {
				return pos
			}
			c.skip = end - len(data)
			c.lastTyp = typ
			return len(data)
		}
		if typ == 'X' {
			return pos
		}
		pos = end
		if typ == 'S' {
			c.discarding = false
			c.lastTyp = typ
			if !c.discardQuiet {
				c.write([]byte{'Z', 0, 0, 0, 5, 'I'})
			}
			c.discardQuiet = false
			return pos
		}
	}
	return pos
}

// keep moves an incomplete message to the front of buf; with nothing left,
// the buffer goes back. A message larger than buf grows it only once its
// bytes fill it, doubling up to the declared size: memory follows what
// arrived, not what a header claims.
func (c *client) keep(rest []byte) {
	c.w = len(rest)
	if len(rest) == 0 {
		putReadBuf(c.buf)
		c.buf = nil
		return
	}
	need := len(rest)
	if len(rest) >= 5 {
		need = 1 + int(binary.BigEndian.Uint32(rest[1:]))
	}
	if len(rest) == cap(c.buf) {
		// Full: its first message is not whole, or is held back with the
		// rest of a cacheable execution (fromCache).
		size := 2 * cap(c.buf)
		if need > cap(c.buf) {
			size = min(need, size)
		}
		nb := make([]byte, size)
		copy(nb, rest)
		putReadBuf(c.buf)
		c.buf = nb
		return
	}
	if &rest[0] != &c.buf[0] { // already in front: no copy per read of a large message
		copy(c.buf, rest)
	}
	c.buf = c.buf[:cap(c.buf)]
}
