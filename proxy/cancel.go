package proxy

import (
	"crypto/subtle"
	"encoding/binary"
)

// handleCancel forwards a CancelRequest (PostgreSQL docs 55.2.7) to the server
// the client is using at this moment; with no server linked there is nothing
// to cancel and it is ignored, as PostgreSQL ignores unknown keys. body is the
// packet after its code: process ID and secret key.
func (p *Proxy) handleCancel(body []byte) {
	if len(body) != 8 {
		return
	}
	pid := binary.BigEndian.Uint32(body[:4])
	secret := body[4:8]
	p.mu.Lock()
	c := p.clients[pid]
	p.mu.Unlock()
	if c == nil {
		return
	}
	var want [4]byte
	binary.BigEndian.PutUint32(want[:], c.secret)
	if subtle.ConstantTimeCompare(want[:], secret) != 1 {
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
