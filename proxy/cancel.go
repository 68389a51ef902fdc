package proxy

import (
	"context"
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgconn"
)

// handleCancel forwards a CancelRequest (PostgreSQL docs 55.2.7) to the server
// the client is using at this moment; with no server linked there is nothing
// to cancel and it is ignored, as PostgreSQL ignores unknown keys. body is the
// packet after its code: process ID and secret key (backendkey.go). A
// session-mode client's request carries its server's real process ID and
// pgguard's secret; the server gets its own key.
func (p *Proxy) handleCancel(body []byte) {
	if len(body) != 8 {
		return
	}
	c := p.keyedClient(binary.BigEndian.Uint32(body[:4]), binary.BigEndian.Uint32(body[4:8]))
	if c == nil {
		return
	}
	if b := c.server.Load(); b != nil {
		b.cancelFor(c)
		return
	}
	if c.state.Load() == stateWaiting {
		// Queued for a server: the query has not run; it never will.
		c.cancelQueued.Store(true)
	}
}

// cancelFor sends a CancelRequest for what b runs for client c, and for
// nothing else: if b is no longer c's it does nothing, and b cannot go to
// another client until the request has been delivered (state cancelling).
// pgconn dials the same address, with TLS when the connection uses it.
func (b *backend) cancelFor(c *client) {
	b.mu.Lock()
	if b.client != c {
		b.mu.Unlock()
		return
	}
	b.cancels++
	b.mu.Unlock()

	hc := *b.hc
	if pc, err := pgconn.Construct(&hc); err == nil {
		ctx, done := context.WithTimeout(context.Background(), cancelDialTimeout(b.db.p.cfg.Load().Pool))
		if err := pc.CancelRequest(ctx); err != nil {
			b.db.p.log.Warn("cancel request failed", "database", b.db.name, "server", b.id, "err", err)
		}
		done()
	}

	b.mu.Lock()
	b.cancels--
	settled := b.cancels == 0 && b.state == srvCancelling
	b.mu.Unlock()
	if settled {
		b.enter(srvIdle)
	}
}
