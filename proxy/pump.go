package proxy

import (
	"sync/atomic"
	"time"
)

// The pump: one goroutine per server connection reads everything the
// server sends and relays it. Bytes are framed by serverReader across
// reads, so where the network splits a message never changes what happens
// to it: a message pgguard inspects (inspectServer) is acted on once it is
// whole, wherever its pieces arrived, and every other message is streamed
// on as its pieces come. What is forwarded from one read is gathered in
// output and written to the client once.

// serverReader is the pump's position in the server's byte stream between
// reads. Owned by the pump.
type serverReader struct {
	hdr    [5]byte // a header split across reads
	nhdr   int     // its bytes so far
	remain int     // body bytes still to come of the message under way
	hold   bool    // that message is inspected: assembled in msg, acted on when whole
	to     *client // else where its bytes go (nil: dropped)
	msg    []byte  // an inspected message assembled across reads, header included
	// bulkTo is where messages the pump does not inspect go: the linked
	// client, or nobody while pgguard's own request is answered. Set from
	// the request queue at each read and after each inspected message.
	bulkTo *client
	// fill collects the reply for the result cache (the head request's
	// miss), set with bulkTo.
	fill *cacheFill
	// quiet is a listening client this read left idle, as of quietGen of
	// its sends: its notifications may go out after the flush (noteQuiet).
	quiet    *subscriber
	quietGen uint64
}

// output gathers what one read forwards, so that a read passed on
// unchanged is written without a copy, and a changed one in one write.
// Owned by the pump.
type output struct {
	to     *client
	direct []byte // a run of the current read buffer
	buf    []byte // copies, once the run is broken
	// flushes counts writes to clients and last is the latest one's
	// client, so a replica's reply can be known not to have started (rerun.go).
	flushes atomic.Uint64
	last    atomic.Pointer[client]
	// hold keeps a re-runnable replica reply back across reads, up to
	// holdMax, until its ReadyForQuery (rerun.go).
	hold bool
}

// pass adds p, a piece of the current read buffer (not copied while the
// pieces are adjacent), for client to (nil: dropped).
func (o *output) pass(to *client, p []byte) {
	if len(p) == 0 {
		return
	}
	if to != o.to {
		o.flush()
		o.to = to
	}
	if to == nil {
		return
	}
	if len(o.buf) == 0 {
		if o.direct == nil {
			o.direct = p
			return
		}
		if n := len(o.direct); cap(o.direct) > n && &o.direct[:n+1][n] == &p[0] {
			o.direct = o.direct[:n+len(p)]
			return
		}
	}
	o.put(to, p)
}

// put adds a copy of p for client to.
func (o *output) put(to *client, p []byte) {
	if to != o.to {
		o.flush()
		o.to = to
	}
	if to == nil {
		return
	}
	if o.direct != nil {
		o.buf = append(o.buf, o.direct...)
		o.direct = nil
	}
	o.buf = append(o.buf, p...)
}

// flushed counts a write to o.to.
func (o *output) flushed() {
	o.flushes.Add(1)
	if o.last.Load() != o.to {
		o.last.Store(o.to)
	}
}

// flush writes what was gathered.
func (o *output) flush() {
	switch {
	case o.to == nil:
	case o.direct != nil:
		o.to.write(o.direct)
		o.flushed()
	case len(o.buf) > 0:
		o.to.write(o.buf)
		o.flushed()
	}
	o.direct = nil
	if cap(o.buf) > 64<<10 {
		o.buf = nil // a burst's buffer is not kept
	}
	o.buf = o.buf[:0]
}

// pump relays server output until the connection ends.
func (b *backend) pump() {
	defer close(b.ended)
	defer b.db.p.recoverPanic("server", func() { b.lostToPanic() })
	buf := make([]byte, 32<<10)
	for {
		n, err := b.in.Read(buf)
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

// relay handles one read's worth of server output.
func (b *backend) relay(data []byte) {
	testPanic("relay")
	rd := &b.rd
	b.mu.Lock()
	b.refreshBulk()
	b.mu.Unlock()
	for pos := 0; pos < len(data); {
		if rd.remain > 0 { // a body under way
			k := min(rd.remain, len(data)-pos)
			piece := data[pos : pos+k]
			pos += k
			rd.remain -= k
			if !rd.hold {
				b.fwd.pass(rd.to, piece)
				if rd.fill != nil {
					rd.fill.add(piece)
				}
				continue
			}
			rd.msg = append(rd.msg, piece...)
			if rd.remain == 0 {
				b.message(rd.msg, false)
			}
			continue
		}
		if rd.nhdr > 0 || len(data)-pos < 5 { // a header split across reads
			k := copy(rd.hdr[rd.nhdr:], data[pos:])
			rd.nhdr += k
			pos += k
			if rd.nhdr == 5 {
				rd.nhdr = 0
				b.begin(rd.hdr[:], nil, false)
			}
			continue
		}
		end := pos + 5 + bodyLen(data[pos+1:])
		if end <= len(data) {
			b.message(data[pos:end], true)
			pos = end
			continue
		}
		b.begin(data[pos:pos+5], data[pos+5:], true)
		pos = len(data)
	}
	b.fwd.flushRead()
	b.quietFlushed()
}

// begin starts a message whose body did not arrive whole: hdr is its
// header, have the part of the body that did; inRead says both are in the
// current read buffer.
func (b *backend) begin(hdr, have []byte, inRead bool) {
	rd := &b.rd
	rd.remain = bodyLen(hdr[1:]) - len(have)
	rd.hold = inspectServer(hdr[0])
	if rd.hold {
		rd.msg = append(append(rd.msg[:0], hdr...), have...)
		if rd.remain == 0 {
			b.message(rd.msg, false)
		}
		return
	}
	rd.to = rd.bulkTo
	if f := rd.fill; f != nil {
		f.begin(hdr[0], 5+bodyLen(hdr[1:]))
		f.add(hdr)
		f.add(have)
	}
	if inRead {
		b.fwd.pass(rd.to, hdr)
	} else {
		b.fwd.put(rd.to, hdr)
	}
	b.fwd.pass(rd.to, have)
}

// message handles one whole message; inRead says it lies in the current
// read buffer (else it was assembled and must be copied if forwarded).
func (b *backend) message(msg []byte, inRead bool) {
	typ := msg[0]
	var to *client
	var repl *Error
	switch {
	case typ == 'Z':
		b.readyForQuery(msg, inRead)
		return
	case typ == 'N' && b.db.replicaOf != nil && b.shutdownNotice(msg[5:]):
		return // the replica is going: the client's work is run again (rerun.go)
	case inspectServer(typ):
		b.mu.Lock()
		to, repl = b.inspect(typ, msg[5:])
		b.refreshBulk()
		b.mu.Unlock()
	default:
		to = b.rd.bulkTo
	}
	if f := b.rd.fill; f != nil {
		f.begin(typ, len(msg))
		f.add(msg)
	}
	switch {
	case repl != nil:
		b.fwd.put(to, repl.encode(nil))
	case inRead:
		b.fwd.pass(to, msg)
	default:
		b.fwd.put(to, msg)
	}
}

// refreshBulk sets where uninspected messages go, and whether the result
// cache collects them, from the queue's head (mu held).
func (b *backend) refreshBulk() {
	h := b.queue.front()
	b.rd.fill = nil
	b.fwd.hold = h != nil && h.kind == reqClient && len(b.rerun) > 0
	if h != nil && !h.forwarded() {
		b.rd.bulkTo = nil
		switch {
		case h.probe != nil:
			b.rd.fill = &h.probe.fill
		case h.kind == reqLearn:
			b.rd.fill = h.fill // its rows are pgguard's to read
		}
		return
	}
	if h != nil {
		b.rd.fill = h.fill
	}
	b.rd.bulkTo = b.client
}

// inspect acts on an ErrorResponse, ParameterStatus, CommandComplete,
// ParseComplete or CloseComplete (mu held) and returns the client it goes
// to (nil: swallowed) and, when pgguard caused the error, the one the
// client must see instead.
func (b *backend) inspect(typ byte, body []byte) (*client, *Error) {
	h := b.queue.front()
	// The client's replies: to a request of its, or to a batch it has not
	// synced yet (Flush), or sent unasked (notices, notifications).
	forwarded := h == nil || h.forwarded()
	switch typ {
	case 'S':
		name, value, ok := parameterStatus(body)
		if !ok {
			break
		}
		b.params[name] = value
		if c := b.client; c != nil && forwarded && reportedParams[name] {
			inStep := b.profile == c.profile()
			c.want.reported.set(name, value) // the client SET it: b and c agree
			c.wantGen.Add(1)
			if inStep {
				b.profile = c.profile()
			}
		}
		if !forwarded && h.announce {
			return b.client, nil // a sync that restores startup values: the client hears of them
		}
	case '1', '3':
		if forwarded && b.reply(typ) {
			return nil, nil // pgguard's own Parse or Close
		}
	case 'C':
		if forwarded {
			b.commandComplete(h, body)
		}
	case 'E':
		to, repl := b.serverError(h, body)
		b.noteFatal(to, repl) // lost.go
		return to, repl
	}
	if !forwarded {
		return nil, nil
	}
	return b.client, nil
}

// serverError acts on an ErrorResponse (mu held): a FATAL one means the
// server is closing; a failed sync or reset makes the server unusable; a
// client's error aborts its unit of work and may be one pgguard caused.
func (b *backend) serverError(h *request, body []byte) (*client, *Error) {
	sev, code := errorFields(body)
	if sev == "FATAL" || sev == "PANIC" || code == codeAdminShutdown {
		b.dead.Store(true)
		b.serverEnded = true
		if b.rerunArmed() {
			return nil, nil // the replica is going: the client's work is run again (rerun.go)
		}
	}
	if h != nil {
		h.failed = true
		switch h.kind {
		case reqParamSync:
			b.syncBad = true
			b.db.p.log.Warn("could not apply a client's session parameters on a server connection; closing it",
				"server", b.id, "sqlstate", code, "error", errorMessage(body))
			return nil, nil
		case reqReset:
			b.resetBad = true
			return nil, nil
		case reqHidden:
			return nil, nil // in an aborted transaction, the client's own query fails alike
		case reqLearn:
			return nil, nil // the client is pinned instead (learned)
		case reqClient:
			if h.sqlstate == "" {
				h.sqlstate, h.errMsg = code, errorMessage(body)
			}
		}
	}
	if b.client == nil {
		return nil, nil
	}
	if b.replicaRefused(h, code, body) {
		return nil, nil // run again on the primary (rerun.go)
	}
	b.unitAborted, b.unitUndone = true, true
	if e := b.duplicateError(code); e != nil {
		return b.client, e // the client's name for the statement that exists
	}
	if e := b.staleReplay(code, body); e != nil {
		if h != nil && h.kind == reqClient && h.sqlstate == code {
			h.sqlstate, h.errMsg = e.Code, e.Message
		}
		return b.client, e // a stale statement the server does not hold
	}
	if staleStatementError(code, body) {
		b.staleStatements(body)
	}
	if code == codeQueryCanceled && b.queryTimedOut(h) { // timeouts.go
		return b.client, errorf(codeQueryCanceled, "canceling statement: it ran longer than pool.query_timeout = %s; raise pool.query_timeout or speed the query up",
			b.db.p.cfg.Load().Pool.QueryTimeout.Duration)
	}
	return b.client, nil
}

// readyForQuery ends the request at the queue's head: it settles the
// server's state, forwards the message if the request was the client's,
// and returns the server to the pool when a transaction-mode client's
// transaction is over (after the client's bytes are written).
//
// The request leaves the queue only once everything it owes the client is
// done: its commit invalidated, its miss stored and, when it is the last
// one outstanding, its ReadyForQuery written. Until then the client is not
// idle (client.idleSession) and keeps this server, so nothing it sent
// later, a hit or a query on another server, is answered before it,
// however long Redis takes.
func (b *backend) readyForQuery(msg []byte, inRead bool) {
	status := byte('I')
	if len(msg) == 6 {
		status = msg[5]
	}
	now := time.Now()
	b.mu.Lock()
	h := b.queue.front()
	if h == nil {
		b.mu.Unlock()
		b.db.p.log.Error("server sent a ReadyForQuery nobody asked for; closing the connection", "database", b.db.name, "server", b.id)
		b.dead.Store(true)
		b.conn.Close()
		return
	}
	inval := b.unitWrites(h, status)
	fill, failed, last := h.fill, h.failed, b.queue.len() == 1
	if h.kind != reqClient {
		fill = nil // a learn query's reply is read below
	}
	b.settling = last
	var to *client
	// Read replicas (replica.go, rerun.go): the end of a unit that may
	// have written waits for its commit position (hold); a unit a replica
	// refused runs again on the primary (again), or its error goes first.
	var refused []byte
	var probe *probe
	hold, again := false, false
	switch h.kind {
	case reqClient:
		to = b.client
		c := b.client
		unitEnds := c != nil && last && !b.open && status == 'I'
		ends := unitEnds && c.pooling == poolTransaction && !c.pinned.Load() // ... and the server goes back
		switch {
		case h.refused != nil && ends:
			again, to = true, nil
		case h.refused != nil:
			refused = h.refused
		case unitEnds && b.wantsPosition():
			hold, to = true, nil
		}
		if last && !again && len(b.rerun) > 0 {
			b.rerun = b.rerun[:0] // answered: the reply goes out
		}
	case reqProbe:
		if probe = h.probe; probe.held != nil {
			to, msg, inRead = probe.client, probe.held, false
		}
	}
	b.mu.Unlock()
	b.invalidate(inval) // before the client hears of the commit
	if fill != nil {
		b.storeFill(fill, failed, status) // before the client can ask again
	}
	if probe != nil && probe.held != nil {
		b.positionLearned(probe) // before the client hears of the commit
	}
	if refused != nil {
		b.fwd.put(to, refused)
	}
	if inRead {
		b.fwd.pass(to, msg)
	} else {
		b.fwd.put(to, msg)
	}
	if last && to != nil {
		b.fwd.flush() // the client has every reply before it may count as idle
		testPanic("replied")
	}

	b.mu.Lock()
	r := b.queue.pop()
	b.settling = false
	b.txStatus = status
	b.act.Ready(now, b.queue.len() > 0, status != 'I')
	b.batchDone()
	if next := b.queue.front(); next != nil && next.start.Before(now) {
		next.start = now // pipelined: the next one starts when this one ends
	}
	next := numServerStates // none
	position := false       // positionQuery is to be written
	var late *client        // a held ReadyForQuery goes to it after all
	var againFor *client
	var againSend []byte
	switch r.kind {
	case reqParamSync:
		b.unitAborted = false // the sync's own errors are not the client's
		if b.state == srvSyncing {
			b.setStateLocked(srvLinked)
		}
	case reqHidden:
	case reqReset:
		if b.queue.len() == 0 {
			next = srvIdle
			if b.resetBad || status != 'I' {
				next = srvClosed
			}
		}
	case reqClient:
		if r.op != nil {
			r.op.skipped, r.op.settled = r.failed, true
		}
		if status == 'I' {
			b.unitDone()
		}
		c := b.client
		ends := c != nil && b.queue.len() == 0 && !b.open && status == 'I' && c.pooling == poolTransaction && !c.pinned.Load()
		if again {
			b.learnDue = false // refused by a replica: rolled back, nothing changed
		}
		switch {
		case ends && b.learnDue:
			// Learn the session first (learn.go); a ReadyForQuery held for
			// the commit position waits for that too.
			var held []byte
			if hold {
				held = append([]byte(nil), msg...)
			}
			b.startLearn(held)
		case ends:
			b.unlinkLocked()
			next = srvIdle
			switch {
			case again:
				againFor, againSend = c, b.rerun
				b.rerun = nil
			case hold:
				if position = b.holdForPosition(c, msg, false); position {
					next = numServerStates
				} else {
					late = c
				}
			}
		case hold && !again && b.queue.len() == 0 && !b.open && c != nil:
			// A client that keeps its server (session mode, pinned): the
			// position is asked on it, in its session.
			if !b.holdForPosition(c, msg, true) {
				late = c
			}
		case hold || again:
			late = c // the client sent more meanwhile: it keeps its server and has its reply now
		}
	case reqLearn:
		b.learned(r.fill, r.failed)
		c := b.client
		switch {
		case r.held == nil:
			next = b.release(status)
		case c != nil && !c.pinned.Load() && b.queue.len() == 0 && !b.open:
			b.unlinkLocked()
			next = srvIdle
			msg = r.held
			if position = b.holdForPosition(c, msg, false); position {
				next = numServerStates
			} else {
				late = c
			}
		default:
			late, msg = c, r.held
		}
	case reqProbe:
		if r.probe.held != nil && !r.probe.linked {
			next = srvIdle
			if status != 'I' || r.failed {
				next = srvClosed
			}
		}
	}
	b.noteQuiet(to, status)
	b.signalAnswered()
	b.refreshBulk()
	b.mu.Unlock()
	if late != nil {
		if again {
			b.fwd.put(late, r.refused)
		}
		b.fwd.put(late, msg)
		b.fwd.flush()
	}
	if next != numServerStates {
		// Back in the pool as soon as the client has its reply: the query
		// it sends next finds this server idle (a sequential client keeps
		// its server, and its parameters), or still linked to it.
		if r.kind == reqClient || r.kind == reqLearn || r.kind == reqProbe && r.probe.held != nil {
			b.db.xacts.Add(1)
		}
		b.enter(next)
	}
	if againFor != nil {
		againFor.requestRerun(againSend) // b is back in the pool
	}
	if position {
		if _, err := b.out.Write(positionQuery); err != nil {
			b.conn.Close() // the pump's read fails: died gives the client its ReadyForQuery
		}
	}
	if r.kind == reqClient && r.query {
		b.report(r.inflightQuery, status, now)
	}
}

// release unlinks a transaction-mode client whose unit of work is over
// and returns srvIdle, the server's next state; or, when the unit may have
// changed session state its text does not show, asks the server first
// (learn.go), keeping the link until the answer. Else numServerStates:
// the server stays linked (mu held).
func (b *backend) release(status byte) serverState {
	c := b.client
	if c == nil || b.queue.len() > 0 || b.open || status != 'I' || c.pooling != poolTransaction || c.pinned.Load() {
		return numServerStates
	}
	if b.learnDue {
		b.startLearn(nil)
		return numServerStates
	}
	b.unlinkLocked()
	return srvIdle
}

// parameterStatus splits a ParameterStatus body.
func parameterStatus(body []byte) (name, value string, ok bool) {
	name, rest, ok := cstring(body)
	if !ok {
		return "", "", false
	}
	value, _, ok = cstring(rest)
	return name, value, ok
}

// lostToPanic closes a server connection whose pump panicked, and its
// client, which cannot know what it missed.
func (b *backend) lostToPanic() {
	b.mu.Lock()
	c := b.unlinkLocked()
	b.queue.clear()
	b.signalAnswered()
	b.mu.Unlock()
	if c != nil {
		c.closeWith(internalError())
	}
	b.enter(srvClosed)
	b.conn.Close()
}
