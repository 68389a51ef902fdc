package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unique"
	"unsafe"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/pool"
	"github.com/pgguard/pgguard/route"
)

type poolMode uint8

const (
	poolTransaction poolMode = iota
	poolSession
)

// Client states, counted in metrics and shown by SHOW CLIENTS.
const (
	stateLogin   int32 = iota // before ReadyForQuery of the startup
	stateIdle                 // no server linked
	stateWaiting              // queued for a server
	stateActive               // linked to a server
)

var stateNames = [...]string{"login", "idle", "waiting", "active"}

// client is one application connection. Its goroutine reads the client and
// forwards to the linked server; the server's pump writes replies back.
// Memory matters here (thousands of idle sessions): the read buffer is
// borrowed from readBufs only while bytes are pending.
type client struct {
	p      *Proxy
	id     uint32 // pgguard's client ID (SHOW CLIENTS, KILL)
	secret uint32 // BackendKeyData: secret key, and process ID (keyPID; backendkey.go)
	keyPID uint32
	conn   net.Conn
	out    *sock           // writes to the client
	raw    syscall.RawConn // reads, for plain TCP; nil for TLS connections
	db     *database
	user   string
	app    string
	addr   string      // remote address, for logs and SHOW CLIENTS
	want   sessionWant // session parameters that follow the client from server to server
	// wantGen counts changes to want, so a server synced for this client
	// knows when it no longer is (backend.needsSync).
	wantGen atomic.Uint64
	// prof is want as one comparable value, as of wantGen profGen (profile).
	prof    unique.Handle[string]
	profGen uint64
	lim     *limiter.Session

	// Named prepared statements, by client name (transaction mode).
	// Owned by the client goroutine.
	stmts map[string]*stmt
	// Parse/Close messages sent whose outcome may be unknown (see stmtOp),
	// and where they stand: in the batch under way, or in one already sent.
	stmtOps     []*stmtOp
	stmtOpState uint8
	// stmtsDropped: the server ran the client's DISCARD ALL or DEALLOCATE
	// ALL; set by the pump, acted on before the next message.
	stmtsDropped atomic.Bool
	// The client's unnamed statement as of what it has sent (the body of
	// its Parse after the name, nil if none), its number and its session
	// effect: re-sent when a later Bind or Describe of "" lands on another
	// server. In stream order: the chunk being sent may parse the next
	// one (unnamedNext), which becomes the client's once sent.
	unnamed           []byte
	unnamedGen        uint64
	unnamedEff        *effect
	unnamedNext       []byte
	unnamedNextEffect *effect
	// unnamedSeen: 1 when the chunk being sent parses an unnamed statement
	// last, 2 when a Query (which destroys it) comes last.
	unnamedSeen uint8

	pooling  poolMode
	priority int32

	server atomic.Pointer[backend] // linked server; changed only under that backend's mu

	// Owned by the client goroutine.
	buf     []byte // pending input; nil when none
	w       int    // bytes in buf
	skip    int    // bytes still to forward of a message streamed without inspection
	lastTyp byte   // type of the last message started
	// discarding: a refused batch is being skipped up to its Sync, which is
	// answered with ReadyForQuery unless discardQuiet (the server answers).
	discarding   bool
	discardQuiet bool
	batchExec    bool            // the batch under way executes something
	zeroed       []byte          // scratch: a text with numbers zeroed (read-only guard, query log)
	queued       []pendingQuery  // sync points in the chunk being sent, for the query log
	batchText    string          // statement of the extended-protocol batch under way
	batchArgs    uint64          // hash of the batch's Bind messages, for the query log (see bindArgs)
	wait         time.Duration   // pool wait of the transaction about to start
	expect       []expectedReply // Parse/Close in the chunk being sent (fast path)
	obuf         []byte          // rewritten output (slow path)
	effects      []*effect       // session effects of the statements in the chunk
	pinned       atomic.Bool     // keeps its server for the rest of the session
	pinReason    string          // why, for SHOW CLIENTS; set before pinned
	handoff      *handoff        // a send queued for a server, once the client has queued
	readFn       func(fd uintptr) bool
	rerr         error

	lastActive   atomic.Int64 // unix nanos of the last message from the client
	connectedAt  int64
	closing      atomic.Pointer[Error] // why pgguard is closing this client, if it is
	state        atomic.Int32          // beside the 4-byte fields: the struct fits a smaller size class
	leakWarned   atomic.Bool
	cancelQueued atomic.Bool // a CancelRequest came while queued for a server
	// woken: the queued send c's goroutine did not stay to wait for needs
	// it (Wake; see deferSend).
	woken atomic.Bool

	// Parking (park.go): parked is set while no goroutine serves c;
	// parkReq while the janitor asks it to park; inEpoll (client
	// goroutine) once its socket is in the parker's epoll set.
	parked  atomic.Bool
	parkReq atomic.Bool
	inEpoll bool
	// fallbackNoticed: the client was told its session is served by the
	// fallback (failover.fallback_notice; client goroutine).
	fallbackNoticed bool

	// rerun is a send a failed replica never answered, to run again
	// (rerun.go); set by the pump, taken by the client goroutine.
	rerun atomic.Pointer[[]byte]
	// toPrimary: the send being run again goes to the primary (client goroutine).
	toPrimary bool
	// mayDefer: the send under way is the last of its input, which it
	// consumes whole, so c's goroutine need not stay to wait for a server
	// (deferSend; client goroutine).
	mayDefer bool
	// listen is the client's part in its database's listener
	// (listen_client.go), set when it first LISTENs in transaction mode.
	listen atomic.Pointer[subscriber]

	// cached is the result cache's state (cached.go), allocated when the
	// client first runs with [[cache]] rules: an idle session of a pgguard
	// without rules does not carry it.
	cached *clientCache
}

const readBufSize = 16 << 10

// readBufs holds arrays, not slices: putting one back then allocates nothing.
var readBufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

func getReadBuf() []byte { return readBufs.Get().(*[readBufSize]byte)[:] }

func putReadBuf(b []byte) {
	if cap(b) == readBufSize {
		readBufs.Put((*[readBufSize]byte)(b[:readBufSize]))
	}
}

// serve runs the client's message loop after login until it disconnects.
func (c *client) serve() {
	defer c.p.recoverPanic("client", func() {
		c.closeWith(internalError())
		c.disconnect(nil)
	})
	for {
		err := c.fill()
		if c.deferred() {
			if err := c.resumeSend(); err != nil {
				c.disconnect(err)
				return
			}
		}
		if err != nil {
			if c.rerunRequested(err) {
				if err := c.runAgain(); err != nil {
					c.disconnect(err)
					return
				}
				continue
			}
			if c.parkRequested(err) {
				if c.canPark() && c.p.parker.park(c) {
					return
				}
				continue
			}
			if c.wokenOnly(err) {
				continue
			}
			c.disconnect(err)
			return
		}
		if err := c.process(); err != nil {
			c.disconnect(err)
			return
		}
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
	syncs, queries := 0, 0
	slow := false
	transaction := c.pooling == poolTransaction
	cfg := c.p.cfg.Load()
	maxMsg, readOnly := cfg.MaxMessageSize, cfg.ReadOnly || c.p.Limiter.Budget().Action() == "read_only"
	fallbackWhy, onFallback := c.db.fallbackReadOnly()
	readOnly = readOnly || onFallback
	rc := c.p.Cache
	cached := rc.Enabled()
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
			if err := c.send(data[from:pos], lead, slow); err != nil {
				return err
			}
			from, syncs, lead, slow = pos, 0, 0, false
			c.learnStmtOps()
		}
		if readOnly {
			if v := c.p.guard(typ, body, c); v.Write {
				if err := c.send(data[from:pos], lead, slow); err != nil {
					return err
				}
				from, syncs, lead, slow = end, 0, 0, false
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
		switch typ {
		case 'X':
			if err := c.send(data[from:pos], lead, slow); err != nil {
				return err
			}
			return errTerminate
		case 'Q':
			syncs++
			queries++
			e := statementEffect(queryText(body))
			c.addEffect(e)
			var op *stmtOp
			switch st := c.stmtOfQuery(e); {
			case st == nil:
			case transaction && !st.sql:
				slow = true // a statement the client prepared with Parse (rewriter.deallocate)
				c.stmtOpState = stmtOpsOpen
			default:
				op = c.sqlStmtOp(e, st)
			}
			c.stmtOpsSynced()
			c.unnamedSeen = 2
			if cached {
				c.cached.writes.Add(rc.Writes(queryText(body)))
			}
			c.noteQuery(queryText(body), false)
			c.queued[len(c.queued)-1].op = op
		case 'P':
			var op *stmtOp
			if name, rest, ok := cbytes(body); ok {
				// What it does to the session counts when it runs (Bind).
				c.batchText = c.intern(queryText(rest))
				if len(name) == 0 {
					c.unnamedNext = append(c.unnamedNext[:0], rest...)
					c.unnamedNextEffect = statementEffect(queryText(rest))
					c.unnamedSeen = 1
				}
				if transaction && len(name) > 0 {
					slow = true
					c.stmtOpState = stmtOpsOpen
				}
				if !transaction && len(name) > 0 {
					op = c.parseSession(name, rest)
				}
			}
			c.expect = append(c.expect, expectedReply{'1', syncs, op})
		case 'C':
			var op *stmtOp
			if transaction && namedStmtMessage(typ, body) {
				slow = true
				c.stmtOpState = stmtOpsOpen
			}
			if !transaction && namedStmtMessage(typ, body) {
				if name, _, _ := cbytes(body[1:]); c.stmt(name) != nil {
					op = c.changeStmt(string(name), nil)
					c.stmtOpState = stmtOpsOpen
				}
			}
			c.expect = append(c.expect, expectedReply{'3', syncs, op})
		case 'B', 'D':
			slow = slow || (transaction && (namedStmtMessage(typ, body) ||
				c.unnamedSeen == 0 && c.unnamed != nil && unnamedStmtMessage(typ, body)))
			if typ == 'B' && cached {
				c.cached.writes.Add(c.boundWrites(body))
			}
			if typ == 'B' {
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
		case 'E':
			queries++
			c.batchExec = true
		case 'S', 'F':
			syncs++
			c.stmtOpsSynced()
			if typ == 'F' && cached {
				c.cached.writes.Add(cache.Targets{All: true}) // a function may write anything
			}
			c.syncPoint(pendingQuery{text: c.batchText, query: c.batchExec, extended: true, args: c.batchArgs})
			c.batchText, c.batchExec, c.batchArgs = "", false, 0
		}
		c.lastTyp = typ
		pos = end
	}
	if queries > 0 {
		c.db.queryCount.Add(uint64(queries))
		c.db.queries.Add(float64(queries))
		for i := 0; i < queries; i++ {
			c.lim.Observe()
		}
	}
	c.lastActive.Store(time.Now().UnixNano())
	c.mayDefer = pos == len(data) && c.skip == 0 && !c.discarding && transaction && c.raw != nil && c.db.rs == nil
	err := c.send(data[from:pos], lead, slow)
	c.mayDefer = false
	switch {
	case err == errDeferred:
		// p stays where it is: the read buffer goes to the handoff.
		c.handoff.syncs, c.handoff.buf, c.buf, c.w = syncs, c.buf, nil, 0
		return nil
	case err != nil:
		var e *Error
		if !errors.As(err, &e) || e.Fatal() {
			return err
		}
		c.refuse(e, syncs)
	}
	c.keep(data[pos:])
	return nil
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

// send forwards p to the linked server, acquiring and linking one when there
// is none, and bringing its session parameters in line first. A server that
// fails the first write of a fresh link, or that sync, is replaced. lead is
// how many leading bytes continue a message from the last read; slow asks
// for prepared statement names to be translated. Each sync point in p has
// its entry in c.queued.
func (c *client) send(p []byte, lead int, slow bool) error {
	if len(p) == 0 {
		c.sent()
		return nil
	}
	c.db.listen.beforeQuery() // a listening connection the upstream closed comes back first
	c.awaitSettled()
	open := c.skip > 0 || !isSyncPoint(c.lastTyp)
	ops := len(c.stmtOps)
	var work route.Chunk // what p means for routing (replica.go)
	unitStart := false   // ... and whether it starts a unit on a replica server still linked
	if c.db.rs != nil {
		work = c.classifySend(p, lead, open)
		unitStart = c.leaveReplica(work)
	}
	err := c.sendAttempts(p, lead, open, slow, ops, work, unitStart, false)
	if err == errDeferred {
		c.handoff.ops = ops
		return err // c.sent() once resumed
	}
	c.sent()
	return err
}

// sendAttempts is send's part from the admission on: it takes a server
// when c has none and writes p, trying another server when a fresh one
// fails at once. resumed: c's goroutine comes back for a send acquire
// deferred (resumeSend), whose admission is done and whose server, if
// one was handed over, is the queued acquire's.
func (c *client) sendAttempts(p []byte, lead int, open, slow bool, ops int, work route.Chunk, unitStart, resumed bool) error {
	for attempt := 0; ; attempt++ {
		b := c.server.Load()
		fresh := b == nil || resumed && attempt == 0
		if fresh && c.pooling == poolSession {
			return c.sessionServerGone() // its server, linked at login, is the session's (backendkey.go)
		}
		if attempt == 0 && !resumed && (fresh && c.pooling == poolTransaction || c.pooling == poolSession && len(c.queued) > 0) {
			// A new transaction (transaction mode) or query (session mode,
			// where one inside a transaction block is let finish it).
			inTx := false
			if c.pooling == poolSession && !fresh {
				st := c.linkState()
				inTx = st.running || st.inTransaction
			}
			if err := c.lim.AdmitQuery(c.p.ctx, inTx); err != nil {
				return c.p.clientError(err, c.db, false)
			}
		}
		var out []byte
		var werr error
		wrote := 0 // bytes that reached the socket before a write error
		if fresh {
			var err error
			if b, err = c.acquireFor(work, p, lead, open, slow); err != nil {
				return err
			}
			if h := c.handoff; h != nil {
				if h.sent {
					out, werr, wrote = h.p, h.err, h.wrote
				}
				*h = handoff{} // drop the references to the read buffer
			}
		}
		if work.MayWrite() && b.db.rs != nil {
			b.wrote.Store(true) // before the server can answer
		}
		if fresh && !c.fallbackNoticed && b.upstreamOf() == failover.Fallback {
			c.noticeFallback()
		}
		if out == nil {
			if !b.syncParams(c) {
				b.drop(c)
				if c.closing.Load() != nil {
					return errClientEOF // the server died under the sync and the client was told (serverLost)
				}
				if fresh && attempt < 2 {
					continue
				}
				return c.p.clientError(errServerSync, c.db, !fresh)
			}
			var ok bool
			if out, ok = b.prepareSend(c, p, lead, open, slow); !ok {
				continue // the transaction ended and the server went back: take another
			}
			if b.db.replicaOf != nil {
				b.armRerun(c, p, (fresh || unitStart) && lead == 0 && !open, work.OutsideTransaction())
			}
			wrote, werr = b.out.Write(out)
		}
		if werr != nil {
			b.drop(c)
			if fresh && attempt < 2 && wrote == 0 {
				// Nothing reached the server: the statements this send
				// named mean what they meant before it.
				c.undoStmtOps(ops)
				continue
			}
			if wrote > 0 { // some of it may have run: never sent again, never called rolled back
				return lostError(c.db, c.db.hostOf(b.upstream), "failed while this session's statements were sent", lostUnknown)
			}
			return c.p.clientError(errServerWrite, c.db, true)
		}
		c.p.bytesIn.Add(float64(len(out)))
		c.sentUnnamed()
		return nil
	}
}

// awaitSettled waits while c's server finishes c's last request (its reply
// is out; the pump has yet to invalidate, store, release) or learns c's
// session: until then the server still looks linked and busy, and what c
// sends now would skip what a new unit gets (the limiter's admission, the
// parameter sync, routing).
func (c *client) awaitSettled() {
	b := c.server.Load()
	if b == nil {
		return
	}
	b.mu.Lock()
	wait := b.client == c && (b.settling || b.queue.learning())
	b.mu.Unlock()
	if wait {
		b.awaitAnswered(c)
	}
}

// unnamedEffect is the session effect of the unnamed statement a Bind of ""
// at this point of the chunk runs.
func (c *client) unnamedEffect() *effect {
	switch c.unnamedSeen {
	case 0:
		return c.unnamedEff
	case 1:
		return c.unnamedNextEffect
	}
	return nil // a Query destroyed it
}

// sentUnnamed makes the unnamed statement a chunk just sent leaves on its
// server the client's.
func (c *client) sentUnnamed() {
	switch c.unnamedSeen {
	case 1:
		c.unnamed, c.unnamedNext = c.unnamedNext, c.unnamed[:0]
		c.unnamedEff = c.unnamedNextEffect
		c.unnamedGen++
	case 2:
		c.unnamed, c.unnamedEff = nil, nil
	}
}

// sent clears what process collected for one send.
func (c *client) sent() {
	c.unnamedSeen = 0
	if c.cached != nil {
		c.cached.missFill = nil // its sync point went, or never will
	}
	c.expect = c.expect[:0]
	clear(c.queued)
	c.queued = c.queued[:0]
	clear(c.effects)
	c.effects = c.effects[:0]
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

// applyEffects applies the session effects of the statements being sent to
// client c and its server b (b.mu held).
func (c *client) applyEffects(b *backend) {
	for _, e := range c.effects {
		if e.pin != "" {
			c.pin(e.pin)
		}
		if e.learn != "" && c.pooling == poolTransaction && !c.pinned.Load() {
			// Its server is asked what the session holds once the unit ends (learn.go).
			b.learnDue = true
			b.learnNames = append(b.learnNames, e.names...)
		}
		// Takes effect if its transaction commits (see backend.unitDone).
		b.staged = append(b.staged, e.params...)
		b.schemaStaged = b.schemaStaged || e.schema
	}
}

// handoff is a send waiting for a server. The pump that releases one to the
// client links it and writes the send at once (pool.Taker), instead of the
// server sitting idle until the client's goroutine is scheduled, which is
// most of a transaction pool's hand-over cost when clients queue.
type handoff struct {
	p          []byte
	lead       int
	open, slow bool
	start      time.Time // when the client began to wait
	sent       bool      // Take wrote it (p is then what was written)
	err        error     // ... and the write failed
	wrote      int       // ... after writing this many bytes
	waited     bool      // Take was called: the client queued for its server
	// A send whose goroutine did not stay to wait (deferSend): the queued
	// acquire, the send as process made it (Take replaces p), the read
	// buffer it lies in, kept until then, and what resumeSend needs to
	// finish the send.
	later *pool.Later[*backend]
	late  bool // set before it queued: Take wakes c's goroutine if its write fails
	sent0 []byte
	buf   []byte
	ops   int // c.stmtOps before the send
	syncs int // its sync points, answered with errors if it is refused
}

// handoffMax bounds what a releasing pump writes for a queued client: more
// could fill the server's socket while the pump is not reading replies.
const handoffMax = 8 << 10

// Take implements pool.Taker on the releasing pump's goroutine, while c's
// goroutine is parked in acquire. It sends only a small transaction-mode
// send (h.p set) of a client still there. A server that needs its
// parameters synced first is left to c's goroutine, which can wait for the sync.
func (c *client) Take(b *backend) bool {
	h := c.handoff
	h.waited = true
	if h.p == nil || c.cancelQueued.Load() || c.gaveUp(h.start) || h.late && c.fallbackDue(b) || !b.link(c) {
		return false // c's goroutine deals with it
	}
	b.mu.Lock()
	ready := b.inSync(c)
	b.mu.Unlock()
	if !ready {
		return false
	}
	out, ok := b.prepareSend(c, h.p, h.lead, h.open, h.slow)
	if !ok {
		return false // b died: c's goroutine finds it unlinked
	}
	h.wrote, h.err = b.out.Write(out)
	h.p, h.sent = out, true
	c.state.Store(stateIdle) // linked: the server says active
	if h.err != nil && h.late {
		c.Wake() // the send failed: c's goroutine sees to it
	}
	return true
}

// linked records a link made after waiting since start.
func (c *client) linked(start time.Time) {
	c.wait = time.Since(start)
	c.db.poolWait.Observe(c.wait.Seconds())
}

// acquire takes a server from the pool and links it to c. In transaction
// mode a small send (p and the rest) may be written by the pump that hands
// the server over (see handoff); when it is the last of c's input, c's
// goroutine does not stay to wait for that (errDeferred, later.go), and
// comes back to acquire for the result (resumeSend).
func (c *client) acquire(p []byte, lead int, open, slow bool) (*backend, error) {
	later, start := c.handoff.resuming()
	if later == nil {
		c.setState(stateWaiting)
		if err := c.p.waitResumed(); err != nil {
			c.setState(stateIdle)
			return nil, c.p.clientError(pool.ErrClosed, c.db, true)
		}
		start = time.Now()
		if err := c.acquireSlot(); err != nil {
			c.setState(stateIdle)
			return nil, c.p.clientError(err, c.db, false)
		}
		if c.handoff == nil {
			c.handoff = new(handoff)
		}
		*c.handoff = handoff{start: start}
		if c.pooling == poolTransaction && len(p) <= handoffMax {
			*c.handoff = handoff{p: p, lead: lead, open: open, slow: slow, start: start}
		}
	}
	deferred := false
	defer func() {
		if !deferred {
			c.setState(stateIdle) // linked: the server says active
		}
	}()
	for {
		var b *backend
		var taken bool
		var err error
		switch {
		case later != nil:
			b, taken, err = later.Wait()
			later = nil
		case c.mayDefer && c.handoff.p != nil:
			if b, deferred, err = c.deferSend(); deferred {
				return nil, errDeferred
			}
		default:
			b, taken, err = c.db.pool.AcquireFor(c.p.ctx, int(c.priority), c)
		}
		if taken {
			if c.cancelQueued.Swap(false) {
				go b.cancelFor(c) // it came as Take sent the query: cancel it there
			}
			return b, nil
		}
		if err != nil {
			c.lim.ReleaseConn()
			return nil, c.p.clientError(err, c.db, c.pooling == poolSession)
		}
		if c.cancelQueued.Swap(false) {
			c.giveBack(b)
			return nil, errorf(codeQueryCanceled, "canceling statement due to user request (while it waited for a server connection)")
		}
		if (c.handoff.waited || b.created.After(start)) && c.gaveUp(start) {
			// It queued, or waited for a dial, and left meanwhile: what it
			// sent is not run (a client that gave up may retry it elsewhere).
			c.giveBack(b)
			c.p.log.Debug("client hung up while waiting for a server; its statement was not run", "client", c.id, "application_name", c.app)
			return nil, errClientEOF
		}
		if b.link(c) {
			c.linked(start)
			return b, nil
		}
		b.enter(srvClosed) // died between the pool and us
	}
}

// giveBack returns a server c was handed but will not use, with its
// limiter slot; Take may have linked it already (leaving a parameter sync
// to c's goroutine).
func (c *client) giveBack(b *backend) {
	b.mu.Lock()
	if b.client == c {
		b.unlinkLocked() // gives the limiter slot back
	} else {
		c.lim.ReleaseConn()
	}
	b.mu.Unlock()
	b.enter(srvIdle)
}

// hangUpCheckAfter is how long a client waits for a server before its
// hand-over checks that it is still there (hungUp): a client gives up after
// waiting a while, and the hand-overs of a busy pool, far shorter, are
// spared a system call each.
const hangUpCheckAfter = 5 * time.Millisecond

// gaveUp reports whether the client, waiting since start, hung up.
func (c *client) gaveUp(start time.Time) bool {
	return time.Since(start) >= hangUpCheckAfter && c.hungUp()
}

// hungUp reports whether the client closed its end: a peek at its socket,
// which consumes nothing, finds end-of-file or a reset. Input waiting to be
// read (say its next message) does not count. Only a client that waited for
// a server asks, so the hot path makes no extra system call.
func (c *client) hungUp() bool {
	raw := c.raw
	if raw == nil { // TLS: peek below it
		conn := c.conn
		if tc, ok := conn.(*tls.Conn); ok {
			conn = tc.NetConn()
		}
		sc, ok := conn.(syscall.Conn)
		if !ok {
			return false
		}
		var err error
		if raw, err = sc.SyscallConn(); err != nil {
			return true
		}
	}
	gone := false
	err := raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		gone = e == 0 && n == 0 || e == syscall.ECONNRESET
	})
	return gone || err != nil
}

// linkState is what the janitor needs to know about c's server.
type linkState struct {
	b             *backend
	running       bool      // a query is in flight
	since         time.Time // when it was sent
	inTransaction bool      // idle inside a transaction block
	openSince     time.Time // ... or mid extended-protocol batch, since (opentimeout.go)
}

func (c *client) linkState() linkState {
	b := c.server.Load()
	if b == nil {
		return linkState{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client != c {
		return linkState{}
	}
	st := linkState{b: b}
	if h := b.queue.front(); h != nil {
		st.running, st.since = true, h.start
	} else {
		st.inTransaction = b.txStatus != 'I' || b.open
		st.openSince = b.openSince(c)
	}
	return st
}

// acquireSlot takes a max_connections slot of the client's [[limits]] rules,
// waiting up to pool.wait_timeout.
func (c *client) acquireSlot() error {
	if !c.lim.CapsConnections() {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.p.ctx, c.p.cfg.Load().Pool.WaitTimeout.Duration)
	defer cancel()
	return c.lim.AcquireConn(ctx)
}

// unlink ends c's link to its server (the backend's mu held): the limiter
// slot goes back first, so the client goroutine can only take a new one
// after seeing the link gone.
func (c *client) unlink() {
	c.lim.ReleaseConn()
	c.server.Store(nil)
}

// setState records what c's goroutine is doing; only that goroutine calls
// it (and Take, which ends a wait the goroutine may not have stayed for).
func (c *client) setState(s int32) { c.state.Store(s) }

// currentState is c's state for metrics, the janitor and SHOW CLIENTS: a
// client with a server linked is active (the pump unlinks it when its
// transaction ends, without touching c's state).
func (c *client) currentState() int32 {
	s := c.state.Load()
	if s == stateIdle && c.server.Load() != nil {
		return stateActive
	}
	return s
}

// write sends bytes to the client. Errors surface on the client goroutine's
// next read, which then cleans up.
func (c *client) write(p []byte) {
	c.out.Write(p)
}

// finalWriteTimeout bounds what pgguard writes to a client it is closing
// (the error saying why): a client that stopped reading must not hold up
// KILL, the janitor, shutdown or a pump for longer.
const finalWriteTimeout = time.Second

// sendError writes an ErrorResponse, plus ReadyForQuery for a non-fatal one,
// to a client about to be closed. Its write, and one under way (a pump's,
// holding the socket), give up after finalWriteTimeout.
func (c *client) sendError(e *Error) {
	c.conn.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	buf := e.encode(nil)
	if !e.Fatal() {
		buf = append(buf, 'Z', 0, 0, 0, 5, 'I')
	}
	c.write(buf)
	c.p.metrics.ClientRefusals.WithLabelValues(e.Code).Inc()
}

// serverLost is called by the pump when the linked server died, with what
// the client is told (lost.go). Its transaction, if any, is gone with it,
// so the session ends, as with a crashed server.
func (c *client) serverLost(b *backend, err error, lost *Error) {
	lost.Cause = err
	if !c.closing.CompareAndSwap(nil, lost) { // also stops a send under way from trying another server
		lost = c.closing.Load()
	}
	e := lost
	c.sendError(e)
	c.conn.Close()
}

// lingerClose lets a client still writing a message pgguard refused finish
// the write and read the error, instead of seeing a connection reset: it
// half-closes and discards input for a moment.
func (c *client) lingerClose() {
	if tc, ok := c.conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(c.conn, 1<<30)) // bounded by the deadline
}

// closeWith ends the session with a FATAL error (reaper, shutdown, KILL).
func (c *client) closeWith(e *Error) {
	if !c.closing.CompareAndSwap(nil, e) {
		return
	}
	c.sendError(e)
	c.resume() // a parked client needs its goroutine to leave
	c.conn.Close()
}

// disconnect ends the session: the server, if any, is reset and returned, or
// closed when it cannot be made clean.
func (c *client) disconnect(cause error) {
	var e *Error
	if errors.As(cause, &e) && c.closing.Load() == nil {
		c.sendError(e)
		if e.Code == codeProtocolViolation {
			c.lingerClose()
		}
	}
	if b := c.server.Load(); b != nil {
		b.reset(c, c.pooling == poolSession || c.pinned.Load())
	}
	c.leaveListener()
	if c.buf != nil {
		putReadBuf(c.buf)
		c.buf = nil
	}
	c.conn.Close()
	c.p.forget(c)
}
