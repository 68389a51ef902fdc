package proxy

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/pool"
	"github.com/pgguard/pgguard/route"
)

// A deferred send: a transaction-mode client whose send has to queue for a
// server does not stay to wait. The server's releasing goroutine writes the
// send (Take) and the server's pump relays the reply, so the client's
// goroutine is not woken for the hand-over only to find its socket empty;
// it goes back to reading its socket. It comes back for the send
// (resumeSend: the queued acquire's result, then the rest of send) before
// it handles anything else: when its input comes, when the result needs it
// (Wake: no Take, an error, a failed write), or at the wait's deadline.
// Only a send that consumed its input whole defers (client.mayDefer), so
// nothing waits behind it; the read buffer it lies in stays with the send
// (the goroutine reads into another meanwhile).

// errDeferred says a send queued without waiting (deferSend).
var errDeferred = errors.New("send deferred until a server is handed over")

// deferredSends and deferredWakes count sends deferred and Wakes, for tests.
var deferredSends, deferredWakes atomic.Uint64

// deferSend queues c's send (c.handoff, p set) for a server without
// waiting, and reports whether it did; else a server was free (or the pool
// refused) and is returned as AcquireFor would.
func (c *client) deferSend() (*backend, bool, error) {
	h := c.handoff
	h.sent0, h.late = h.p, true
	b, later, err := c.db.pool.AcquireLater(c.p.ctx, int(c.priority), c)
	if later == nil {
		h.sent0, h.late = nil, false
		return b, false, err
	}
	h.later = later
	deferredSends.Add(1)
	if d := later.Deadline(); !d.IsZero() {
		c.conn.SetReadDeadline(d)
		if c.woken.Load() {
			c.conn.SetReadDeadline(time.Unix(1, 0)) // a Wake came first: ours replaced its deadline
		}
	}
	return nil, true, nil
}

// Wake implements pool.LateTaker: the deferred send needs c's goroutine,
// whose read returns.
func (c *client) Wake() {
	deferredWakes.Add(1)
	c.woken.Store(true)
	c.conn.SetReadDeadline(time.Unix(1, 0))
}

// fallbackDue reports whether c is to be told, before its first reply
// from b, that the fallback serves it: its goroutine writes that notice
// before the send (noticeFallback), so Take leaves a deferred send to it.
func (c *client) fallbackDue(b *backend) bool {
	return !c.fallbackNoticed && b.upstreamOf() == failover.Fallback
}

// deferred reports whether a deferred send waits for c's goroutine.
func (c *client) deferred() bool { return c.handoff != nil && c.handoff.later != nil }

// resuming returns the queued acquire of a deferred send being resumed,
// and when it began; nil when none.
func (h *handoff) resuming() (*pool.Later[*backend], time.Time) {
	if h == nil || h.later == nil {
		return nil, time.Time{}
	}
	later := h.later
	h.later = nil
	return later, h.start
}

// resumeSend finishes a deferred send on c's goroutine, as process would
// have: a refusal is answered per sync point. Only the fields Take does
// not write are read before the acquire's result is in.
func (c *client) resumeSend() error {
	h := c.handoff
	syncs, buf := h.syncs, h.buf
	err := c.sendAttempts(h.sent0, h.lead, h.open, h.slow, h.ops, route.Chunk{}, false, true)
	c.sent()
	putReadBuf(buf)
	if c.woken.Swap(false) {
		c.conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || e.Fatal() {
			return err
		}
		c.refuse(e, syncs)
	}
	return nil
}

// wokenOnly reports whether a read ended by a deadline nobody else claims:
// a Wake, or a deferred send's wait deadline, that came after the send was
// resumed. The deadline is cleared; a park asked meanwhile is asked again.
func (c *client) wokenOnly(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.woken.Store(false)
	c.conn.SetReadDeadline(time.Time{})
	if c.parkReq.Load() {
		c.conn.SetReadDeadline(time.Unix(1, 0))
	}
	return true
}
