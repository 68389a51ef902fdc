package proxy

import "encoding/binary"

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
