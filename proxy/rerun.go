package proxy

import (
	"errors"
	"os"
	"time"
)

// Re-running a replica's work on the primary. A send routed to a replica
// (a whole unit of work starting on a fresh link) is kept with its server
// until the reply starts. If the replica fails first, its connection closing
// or sending FATAL (a replica stopped, suspended, restarted), the client
// goroutine is woken (its read deadline set in the past, as parking does)
// and processes the same bytes again, as if the client had sent them once
// more, this time on the primary: the client sees latency, not an error.
// The same happens when the replica refuses the work as a write (25006) or
// cancels it for a recovery conflict (40001) outside a transaction block.
// The reply is held back until its ReadyForQuery (up to holdMax); once a
// byte of it has gone to the client, a failure is the client's to see, as
// with the primary.

// codeSerializationFailure is what a hot standby cancels a query with for
// a recovery conflict (PostgreSQL docs 27.4.2).
const codeSerializationFailure = "40001"

// armRerun keeps p as b's re-runnable send when ok, else forgets any.
func (b *backend) armRerun(c *client, p []byte, ok, auto bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !ok || len(p) > handoffMax || c.skip > 0 || b.client != c || !rerunnable(p) {
		b.rerun = b.rerun[:0:0]
		return
	}
	b.rerun = append(b.rerun[:0], p...)
	b.rerunMark = b.fwd.flushes.Load()
	b.rerunAuto = auto
}

// rerunnable reports whether processing p twice means what processing it
// once does: it prepares or closes no named statement (whose fate the
// client's statement bookkeeping already recorded). It must also be one
// unit (one sync point): a reply held back is then all of p's.
func rerunnable(p []byte) bool {
	syncs := 0
	for pos := 0; len(p)-pos >= 5; {
		typ := p[pos]
		if isSyncPoint(typ) {
			syncs++
		}
		end := pos + 5 + bodyLen(p[pos+1:])
		if end > len(p) {
			return false
		}
		body := p[pos+5 : end]
		pos = end
		switch typ {
		case 'P':
			if len(body) == 0 || body[0] != 0 {
				return false
			}
		case 'C':
			return false
		}
	}
	return syncs == 1
}

// rerunArmed reports whether b's client work can still be run again: it
// has a kept send and nothing of the reply went to the client (mu held,
// on the pump).
func (b *backend) rerunArmed() bool {
	// A flush since the send is the last client's reply finishing, unless
	// it went to this client.
	quiet := b.fwd.flushes.Load() == b.rerunMark || b.fwd.last.Load() != b.client
	return len(b.rerun) > 0 && b.client != nil && quiet
}

// shutdownNotice reports whether a replica's NoticeResponse announces its
// shutdown (PostgreSQL sends "terminating connection due to immediate
// shutdown command" as a WARNING, 57P01) while its client's work can still
// be run again: the notice is then not forwarded. On the pump.
func (b *backend) shutdownNotice(body []byte) bool {
	if _, code := errorFields(body); code != codeAdminShutdown {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dead.Store(true)
	return b.rerunArmed()
}

// holdMax bounds the reply a re-runnable replica unit holds back: past it
// the reply streams, and a failure is the client's to see.
const holdMax = 64 << 10

// flushRead ends a read's forwarding: it writes what was gathered, unless
// a re-runnable replica reply is being held back (copied out of the read
// buffer, which the next read reuses).
func (o *output) flushRead() {
	if o.hold && o.to != nil && len(o.buf)+len(o.direct) <= holdMax {
		if o.direct != nil {
			o.buf = append(o.buf, o.direct...)
			o.direct = nil
		}
		return
	}
	o.flush()
}

// replicaRefused decides on an ErrorResponse of a replica (mu held, on the
// pump): a statement it refuses as a write (25006) or cancels for a
// recovery conflict (40001), in work outside a transaction block whose reply
// has not started, is run again on the primary. The reply held so far is
// dropped and the error kept in r, in case it cannot be.
func (b *backend) replicaRefused(r *request, code string, msg []byte) bool {
	if b.db.replicaOf == nil || code != codeReadOnlyTx && code != codeSerializationFailure ||
		r == nil || r.kind != reqClient || !b.rerunAuto || !b.rerunArmed() {
		return false
	}
	b.fwd.direct, b.fwd.buf = nil, b.fwd.buf[:0]
	r.refused = appendMsg(nil, 'E', string(msg))
	return true
}

// takeRerun returns the send to run again after b died, if any (mu held).
func (b *backend) takeRerun(owed bool) []byte {
	if !owed || !b.rerunArmed() {
		return nil
	}
	p := b.rerun
	b.rerun = nil
	b.fwd.direct, b.fwd.buf, b.fwd.to = nil, b.fwd.buf[:0], nil // the held reply is dropped
	return p
}

// requestRerun hands p to c's goroutine, waking it from its read.
func (c *client) requestRerun(p []byte) {
	c.rerun.Store(&p)
	c.conn.SetReadDeadline(time.Unix(1, 0))
}

// rerunRequested reports whether err ended a read because a rerun waits.
func (c *client) rerunRequested(err error) bool {
	if c.rerun.Load() == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.conn.SetReadDeadline(time.Time{})
	return true
}

// runAgain puts the failed send back in front of the client's input and
// processes it.
func (c *client) runAgain() error {
	pp := c.rerun.Swap(nil)
	if pp == nil {
		return nil
	}
	p := *pp
	if c.buf == nil {
		c.buf = getReadBuf()
	}
	if len(p)+c.w > len(c.buf) {
		return fatalf(codeConnectionFailure, "a read replica of database %q failed before answering, and the statement could not be run again", c.db.name)
	}
	copy(c.buf[len(p):], c.buf[:c.w])
	copy(c.buf, p)
	c.w += len(p)
	c.toPrimary = true
	c.db.rs.m.reruns.Inc()
	return c.process()
}
