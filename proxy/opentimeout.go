package proxy

import (
	"time"

	"github.com/pgguard/pgguard/config"
)

// pool.query_timeout of an extended-protocol batch still open. PostgreSQL's
// statement_timeout, in the extended protocol, runs from the first
// query-related message (Parse, Bind, Describe, Execute) to the Sync
// (PostgreSQL docs 19.11, statement_timeout), so a Parse stuck on a lock
// and sent with Flush (a driver waiting for its ParseComplete before it
// sends more) is cancelled without a Sync. pgguard's request queue has an
// entry only per sync point, so a batch not yet synced is timed here, from
// the chunk that opened it: past pool.query_timeout the janitor sends a
// CancelRequest, once per batch. A server idle between the client's
// messages ignores it (PostgreSQL docs 55.2.7); a busy one fails the
// message under way with 57014, which the client hears as pgguard's
// query_timeout error, and skips to the client's Sync, as after
// statement_timeout. A client's Sync then starts its own timer (requests).

// openBatch is the extended-protocol batch under way on a server, while
// its client has sent messages after its last sync point (backend.open).
// Guarded by the backend's mu.
type openBatch struct {
	since     time.Time // when the chunk that opened it was sent
	cancelled bool      // a CancelRequest was sent for pool.query_timeout
}

// sent notes a chunk written to the server (prepareSend, mu held): was and
// now are whether a batch was open before and after it, synced whether it
// holds a sync point.
func (o *openBatch) sent(was, now, synced bool, at time.Time) {
	if !was || synced { // the batch before, if any, is synced: a new one starts
		*o = openBatch{}
		if now {
			o.since = at
		}
	}
}

// openSince is when c's batch on b opened, if one is open with nothing
// else outstanding (mu held); zero otherwise.
func (b *backend) openSince(c *client) time.Time {
	if b.client != c || !b.open || b.queue.len() > 0 || b.batch.cancelled {
		return time.Time{}
	}
	return b.batch.since
}

// cancelOpenBatch cancels c's open batch on its server once it has run
// past pool.query_timeout; it reports whether it did (the janitor).
func (p *Proxy) cancelOpenBatch(c *client, st linkState, now time.Time, pc config.Pool) bool {
	limit := pc.QueryTimeout.Duration
	if limit <= 0 || st.openSince.IsZero() || now.Sub(st.openSince) <= limit {
		return false
	}
	b := st.b
	b.mu.Lock()
	ok := b.openSince(c) == st.openSince
	if ok {
		b.batch.cancelled = true
	}
	b.mu.Unlock()
	if !ok {
		return false
	}
	p.metrics.Cancelled.WithLabelValues("query_timeout").Inc()
	p.log.Warn("cancelling an extended-protocol batch past pool.query_timeout before its Sync", "client", c.id, "application_name", c.app, "running", now.Sub(st.openSince).Round(time.Millisecond))
	go b.cancelFor(c)
	return true
}

// queryTimedOut reports whether a 57014 of the server ends work pgguard
// cancelled for pool.query_timeout (mu held): the request at the head (h),
// or the open batch, whose mark the error then settles.
func (b *backend) queryTimedOut(h *request) bool {
	if h != nil && h.timedOut {
		return true
	}
	if b.batch.cancelled {
		b.batch.cancelled = false
		return true
	}
	return false
}
