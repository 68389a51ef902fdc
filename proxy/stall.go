package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/failover"
)

// Stalls: no client waits without bound on a server that stopped answering.
// A frozen server (every process stopped, the host's kernel still
// acknowledging, so TCP keepalive and TCP_USER_TIMEOUT never fire) sends
// nothing and closes nothing. Each janitor tick looks at what every server
// connection owes:
//
//   - a query cancelled for pool.query_timeout still running
//     pool.cancel_timeout after the cancel: the connection is closed and
//     its client told so (reason cancel_timeout);
//   - any request (a client's, a parameter sync, a reset) owed for longer
//     than pool.server_check_after (pgguard's own sync and reset, when that
//     is 0: pool.connect_timeout): a slow query or a frozen server? The
//     upstream is asked the one thing a frozen server cannot answer and a
//     slow one can, a new connection (no query), bounded by
//     pool.connect_timeout. If it answers (even with an error), nothing
//     is done; if not, every connection to it is closed, busy and idle,
//     their clients told (reason server_unresponsive), and the failure
//     counts toward failover.
//
// A switch to the fallback checks the primary at once the same way, so
// clients still waiting on it are answered within connect_timeout.

// stallWatch is a database's stall check state, per upstream.
type stallWatch struct {
	running [2]atomic.Bool  // a check of the upstream is under way
	lastOK  [2]atomic.Int64 // unix nanos of the last check it answered
}

// cancelDialTimeout bounds sending a CancelRequest: pool.cancel_timeout,
// or 10 s when that is off.
func cancelDialTimeout(pc config.Pool) time.Duration {
	if d := pc.CancelTimeout.Duration; d > 0 {
		return d
	}
	return 10 * time.Second
}

// upstreamOf returns b's upstream.
func (b *backend) upstreamOf() failover.Upstream {
	if b.upstream == failover.Fallback.String() {
		return failover.Fallback
	}
	return failover.Primary
}

// checkStalls is the janitor's look at db's server connections.
func (db *database) checkStalls(now time.Time) {
	pc := db.p.cfg.Load().Pool
	checkAfter, cancelTimeout := pc.ServerCheckAfter.Duration, pc.CancelTimeout.Duration
	ownAfter := checkAfter // pgguard's own sync and reset: always checked
	if ownAfter <= 0 {
		ownAfter = cancelDialTimeout(config.Pool{CancelTimeout: pc.ConnectTimeout})
	}
	var stalled [2]bool
	for _, b := range db.openBackends() {
		b.mu.Lock()
		h := b.queue.front()
		var owed, sinceCancel time.Duration
		after := checkAfter
		if h != nil {
			owed = now.Sub(h.start)
			if !h.forwarded() {
				after = ownAfter
			}
			if h.timedOut {
				sinceCancel = now.Sub(h.cancelAt)
			}
		}
		b.mu.Unlock()
		switch {
		case h == nil:
		case cancelTimeout > 0 && sinceCancel > cancelTimeout:
			db.p.log.Warn("a query cancelled for pool.query_timeout is still running past pool.cancel_timeout: closing its server connection",
				"database", db.name, "server", b.id, "upstream", b.upstream, "cancel_timeout", cancelTimeout)
			b.abandon(fmt.Sprintf("was closed: a query ran past pool.query_timeout = %s and the server did not end it within pool.cancel_timeout = %s of the cancel",
				pc.QueryTimeout.Duration, cancelTimeout), "cancel_timeout")
		case after > 0 && owed > after:
			stalled[b.upstreamOf()] = true
		}
	}
	why := fmt.Sprintf("it owed a reply for over pool.server_check_after = %s", checkAfter)
	if checkAfter <= 0 {
		why = fmt.Sprintf("it owed a reply to pgguard's own query for over %s (pool.connect_timeout; pool.server_check_after is off)", ownAfter)
	}
	for u, st := range stalled {
		last := time.Unix(0, db.stalls.lastOK[u].Load())
		if st && now.Sub(last) > ownAfter {
			db.checkUpstream(failover.Upstream(u), why)
		}
	}
}

// checkUpstream starts a check of u unless one is under way: does it
// accept a connection within pool.connect_timeout? If not, every
// connection to u is closed. why, a clause, says what prompted it, in the
// log and in what clients are told.
func (db *database) checkUpstream(u failover.Upstream, why string) {
	if !db.stalls.running[u].CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer db.stalls.running[u].Store(false)
		start := time.Now()
		ctx, cancel := context.WithTimeout(db.p.ctx, cancelDialTimeout(config.Pool{CancelTimeout: db.p.cfg.Load().Pool.ConnectTimeout}))
		err := db.probe(ctx, u) // bounded by pool.connect_timeout (10 s when that is 0)
		cancel()
		var pe *pgconn.PgError
		if err == nil || errors.As(err, &pe) || db.p.ctx.Err() != nil {
			db.stalls.lastOK[u].Store(time.Now().UnixNano()) // it answers: slow, not frozen
			return
		}
		pc := db.p.cfg.Load().Pool
		db.p.log.Warn("upstream does not answer: closing its server connections so no client waits on them",
			"database", db.name, "upstream", u, "host", db.hostOf(u.String()), "why", why,
			"check_took", time.Since(start).Round(time.Millisecond), "err", err)
		db.fo.Failure(u, err)
		msg := fmt.Sprintf("stopped answering: %s and %s did not accept a connection within pool.connect_timeout = %s",
			why, db.hostOf(u.String()), pc.ConnectTimeout.Duration)
		for _, b := range db.openBackends() {
			if b.upstreamOf() == u {
				b.abandon(msg, "server_unresponsive")
			}
		}
	}()
}

// abandon closes b under its client, which is told why (died, lost.go);
// reason labels pgguard_clients_closed_total when a client was linked.
func (b *backend) abandon(why, reason string) {
	b.mu.Lock()
	if b.abandoned == "" {
		b.abandoned = why
	}
	c := b.client
	b.dead.Store(true)
	b.mu.Unlock()
	if c != nil {
		b.db.p.metrics.ClientsReaped.WithLabelValues(reason).Inc()
	}
	b.conn.Close()
}

// switchedAway is called when the monitor switches from u: if u does not
// answer a connection, clients still waiting on it are answered now.
func (db *database) switchedAway(u failover.Upstream) {
	db.checkUpstream(u, fmt.Sprintf("pgguard switched database %q away from it", db.name))
}
