package proxy

// The link between a client and a server: taking one from the pool
// (acquire, with the pump's hand-over to a queued client: handoff, Take,
// and later.go's deferred send), writing the client's messages to it
// (send, prepareSend), and giving it back (giveBack, unlink).

import (
	"context"
	"crypto/tls"
	"syscall"
	"time"
	"unsafe"

	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/pool"
	"github.com/pgguard/pgguard/route"
)

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
	b.batch.sent(b.open, open, len(c.queued) > 0, now) // timeouts.go
	b.open = open
	return out, true
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
	openSince     time.Time // ... or mid extended-protocol batch, since (timeouts.go)
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

// link attaches b to c for a transaction (or a session). It fails when b died
// since it was taken from the pool.
func (b *backend) link(c *client) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead.Load() || b.state == srvClosed {
		return false
	}
	b.client = c
	b.open = false
	b.setStateLocked(srvLinked)
	c.server.Store(b)
	b.lastUsed.Store(time.Now().UnixNano())
	return true
}

// unlinkLocked detaches b's client (mu held).
func (b *backend) unlinkLocked() *client {
	c := b.client
	if c != nil {
		b.client = nil
		c.unlink()
	}
	return c
}

// drop closes b after the linked client c could not use it (a failed
// write or parameter sync).
func (b *backend) drop(c *client) {
	b.mu.Lock()
	if b.client == c {
		b.unlinkLocked()
	}
	b.mu.Unlock()
	b.enter(srvClosed)
}
