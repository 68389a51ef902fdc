package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unique"

	"github.com/pgguard/pgguard/limiter"
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
	// Who it is, from its login (startup.go, backendkey.go).
	p           *Proxy
	conn        net.Conn
	out         *sock           // writes to the client
	raw         syscall.RawConn // reads, for plain TCP; nil for TLS connections
	db          *database
	user        string
	app         string
	addr        string // remote address, for logs and SHOW CLIENTS
	lim         *limiter.Session
	connectedAt int64
	id          uint32 // pgguard's client ID (SHOW CLIENTS, KILL)
	secret      uint32 // BackendKeyData: secret key, and process ID (keyPID; backendkey.go)
	keyPID      uint32
	priority    int32

	// Its session parameters, which follow it from server to server
	// (session.go, paramsync.go). wantGen counts changes to want, so a
	// server synced for this client knows when it no longer is
	// (backend.needsSync); prof is want as one comparable value, as of
	// wantGen profGen (profile).
	want    sessionWant
	wantGen atomic.Uint32
	profGen uint32
	prof    unique.Handle[string]

	// Its prepared statements (stmts.go), owned by its goroutine: named
	// ones by client name (transaction mode), and Parse/Close messages
	// sent whose outcome may be unknown (see stmtOp; stmtOpState says
	// where they stand). The unnamed statement as of what it has sent (the
	// body of its Parse after the name, nil if none), its number and its
	// session effect: re-sent when a later Bind or Describe of "" lands on
	// another server. In stream order: the chunk being sent may parse the
	// next one (unnamedNext; unnamedSeen), which becomes the client's once
	// sent. stmtsDropped: the server ran the client's DISCARD ALL or
	// DEALLOCATE ALL; set by the pump, acted on before the next message.
	stmts             map[string]*stmt
	stmtOps           []*stmtOp
	unnamed           []byte
	unnamedGen        uint64
	unnamedEff        *effect
	unnamedNext       []byte
	unnamedNextEffect *effect
	stmtsDropped      atomic.Bool

	// Its link to a server (link.go, later.go). server changes only under
	// that backend's mu. pinned: it keeps its server for the rest of the
	// session (pinReason says why, set first). cancelQueued: a
	// CancelRequest came while it queued for a server. woken: the queued
	// send its goroutine did not stay to wait for needs it (Wake). rerun
	// is a send a failed replica never answered, to run again (rerun.go;
	// set by the pump). listen is its part in its database's listener
	// (listen_client.go), set when it first LISTENs in transaction mode.
	pinned       atomic.Bool
	cancelQueued atomic.Bool
	woken        atomic.Bool
	server       atomic.Pointer[backend]
	handoff      *handoff // a send queued for a server, once the client has queued
	pinReason    string
	rerun        atomic.Pointer[[]byte]
	listen       atomic.Pointer[subscriber]

	// Its input (input.go), owned by its goroutine.
	buf       []byte // pending input; nil when none
	w         int    // bytes in buf
	skip      int    // bytes still to forward of a message streamed without inspection
	readFn    func(fd uintptr) bool
	rerr      error
	zeroed    []byte          // scratch: a text with numbers zeroed (read-only guard, query log)
	queued    []pendingQuery  // sync points in the chunk being sent, for the query log
	batchText string          // statement of the extended-protocol batch under way
	batchArgs uint64          // hash of the batch's Bind messages, for the query log (see bindArgs)
	wait      time.Duration   // pool wait of the transaction about to start
	expect    []expectedReply // Parse/Close in the chunk being sent (fast path)
	obuf      []byte          // rewritten output (slow path)
	effects   []*effect       // session effects of the statements in the chunk

	// Its life: activity for the janitor, closing, parking (park.go:
	// parked while no goroutine serves it, parkReq while the janitor asks
	// it to park).
	lastActive atomic.Int64          // unix nanos of the last message from the client
	closing    atomic.Pointer[Error] // why pgguard is closing this client, if it is
	state      atomic.Int32
	leakWarned atomic.Bool
	parked     atomic.Bool
	parkReq    atomic.Bool

	// cached is the result cache's state (cached.go), allocated when the
	// client first runs with [[cache]] rules: an idle session of a pgguard
	// without rules does not carry it.
	cached *clientCache

	// The one-byte fields, together so that the struct fits the 704-byte
	// size class (TestClientSizeClass); each is its concern's, above.
	pooling     poolMode
	stmtOpState uint8
	unnamedSeen uint8 // 1 when the chunk being sent parses an unnamed statement last, 2 when a Query (which destroys it) comes last
	lastTyp     byte  // type of the last message started
	// discarding: a refused batch is being skipped up to its Sync, which
	// is answered with ReadyForQuery unless discardQuiet (the server answers).
	discarding   bool
	discardQuiet bool
	batchExec    bool // the batch under way executes something
	mayDefer     bool // the send under way is the last of its input, which it consumes whole (deferSend)
	toPrimary    bool // the send being run again goes to the primary
	inEpoll      bool // its socket is in the parker's epoll set
	// fallbackNoticed: the client was told its session is served by the
	// fallback (failover.fallback_notice).
	fallbackNoticed bool
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
