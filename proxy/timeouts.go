package proxy

// Timeouts, in one place: the janitor's tick reaps idle clients
// (client_idle_timeout, idle_transaction_timeout), cancels queries past
// query_timeout (also an extended-protocol batch not yet synced), warns of
// leaks (leak_warn_after), sweeps the pools and checks for stalled
// servers (stall.go: the bounded waits for a server that stops answering).

import (
	"time"

	"github.com/pgguard/pgguard/config"
)

// janitor closes idle clients past client_idle_timeout, sweeps the pools
// and returns memory to the OS after a burst of logins.
func (p *Proxy) janitor() {
	t := time.NewTicker(time.Second / 4)
	defer t.Stop()
	var mem memRelease
	var clients []*client // reused: a fleet of idle sessions makes no garbage
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			clients = p.appendClients(clients[:0])
			p.reapIdleClients(now, clients)
			p.closeRetiredSessions(clients)
			clear(clients)
			mem.tick(now, p.accepted.Load()+p.parks.Load()+p.gone.Load())
			for _, db := range p.databases() {
				db.pool.Sweep(now)
				db.checkStalls(now)
				db.eachReplica(func(r *database) { r.pool.Sweep(now) })
			}
		}
	}
}

func (p *Proxy) reapIdleClients(now time.Time, clients []*client) {
	pc := p.cfg.Load().Pool
	for _, c := range clients {
		if c.db == nil {
			continue
		}
		idle := now.Sub(time.Unix(0, c.lastActive.Load()))
		st := c.linkState()
		switch {
		case st.running:
			if d := now.Sub(st.since); pc.QueryTimeout.Duration > 0 && d > pc.QueryTimeout.Duration && st.b.markTimedOut(c) {
				p.metrics.Cancelled.WithLabelValues("query_timeout").Inc() // the session goes on: not a closed client
				p.log.Warn("cancelling a query past pool.query_timeout", "client", c.id, "application_name", c.app, "running", d.Round(time.Millisecond))
				go st.b.cancelFor(c)
			}
		case p.cancelOpenBatch(c, st, now, pc): // pool.query_timeout before a Sync (below)
		case st.inTransaction:
			if limit := pc.IdleTransactionTimeout.Duration; limit > 0 && idle > limit {
				p.metrics.ClientsReaped.WithLabelValues("idle_transaction_timeout").Inc()
				c.closeWith(fatalf(codeIdleInTransaction,
					"terminating connection due to idle-in-transaction timeout: idle for %s inside a transaction, over pool.idle_transaction_timeout = %s; the transaction was rolled back",
					idle.Round(time.Millisecond), limit))
				continue
			}
			p.warnLeak(c, idle, pc.LeakWarnAfter.Duration, "idle in a transaction")
		case st.b != nil: // session mode (or pinned): holds a server while idle
			p.warnLeak(c, idle, pc.LeakWarnAfter.Duration, "holding a server connection while idle")
			fallthrough
		default:
			if limit := pc.ClientIdleTimeout.Duration; limit > 0 && idle > limit && c.currentState() != stateWaiting && !c.listening() {
				p.metrics.ClientsReaped.WithLabelValues("client_idle_timeout").Inc()
				c.closeWith(fatalf(codeIdleSession,
					"terminating connection due to idle-session timeout: idle for %s, over pool.client_idle_timeout = %s", idle.Round(time.Millisecond), limit))
			} else if st.b == nil && idle > parkAfter && c.currentState() == stateIdle {
				c.askPark()
			}
		}
	}
}

// warnLeak logs once per session that passes leak_warn_after while holding
// a server connection idle: the runbook's connection leak, found for you.
func (p *Proxy) warnLeak(c *client, idle, after time.Duration, what string) {
	if after <= 0 || idle <= after || c.leakWarned.Swap(true) {
		return
	}
	p.metrics.LeakWarnings.WithLabelValues(appLabel(c.app)).Inc()
	p.log.Warn("possible connection leak: session "+what+" past pool.leak_warn_after",
		"client", c.id, "application_name", c.app, "addr", c.addr, "idle", idle.Round(time.Second), "leak_warn_after", after)
}

// markTimedOut flags the running query of c as cancelled for
// pool.query_timeout; false if it already is, or c no longer runs one on b.
func (b *backend) markTimedOut(c *client) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.queue.front()
	if b.client != c || h == nil || h.kind != reqClient || h.timedOut {
		return false
	}
	h.timedOut, h.cancelAt = true, time.Now()
	return true
}

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
