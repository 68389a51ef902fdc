package faultnet

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"
)

// Conn is one relayed connection: the accepted side (the client) and the
// side the relay dialed (the target).
type Conn struct {
	r      *Relay
	id     uint64       // accept order
	client *net.TCPConn // set before serve starts

	trig trigger // a reset armed by ResetAfter

	mu     sync.Mutex
	server *net.TCPConn // nil until dialed
	done   bool         // both sides closed or reset
}

// ID is the connection's place in accept order, from 0.
func (c *Conn) ID() uint64 { return c.id }

// Peer is the address of the side that connected to the relay.
func (c *Conn) Peer() net.Addr { return c.client.RemoteAddr() }

// Upstream is the relay's own address on its connection to the target (what
// the target sees as the client's address, as in pg_stat_activity's
// client_port), or nil before that connection is made.
func (c *Conn) Upstream() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server == nil {
		return nil
	}
	return c.server.LocalAddr()
}

// ResetAfter arms a reset of this connection once it has forwarded n more
// bytes in dir (Up or Down), as Relay.ResetAfter does for any connection.
func (c *Conn) ResetAfter(dir Direction, n int64) { c.trig.arm(dir, n) }

// Reset cuts the connection now: both sides get a TCP RST.
func (c *Conn) Reset() {
	c.shut(true, true)
}

// resetAfterSent resets the connection once dst's peer has the bytes
// written to dst (a reset drops what the kernel has not sent yet), waiting
// at most a second for a peer that does not read.
func (c *Conn) resetAfterSent(dst *net.TCPConn) {
	for deadline := time.Now().Add(time.Second); unsent(dst) > 0 && time.Now().Before(deadline); {
		if !c.r.sleep(time.Millisecond) {
			break
		}
	}
	c.Reset()
}

// close closes both sides with a FIN.
func (c *Conn) close() { c.shut(false, false) }

// shut closes both sides once, with a RST when rst is set, counting it
// in Stats.Resets when counted is set.
func (c *Conn) shut(rst, counted bool) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	if counted {
		c.r.resets.Add(1)
	}
	cl, sv := c.client, c.server
	c.mu.Unlock()
	for _, s := range []*net.TCPConn{cl, sv} {
		if s == nil {
			continue
		}
		if rst {
			s.SetLinger(0) // close sends RST and drops unsent bytes
		}
		s.Close()
	}
}

// serve dials the target and relays both directions until both end.
func (c *Conn) serve() {
	defer c.r.wg.Done()
	defer c.r.forget(c)
	ctx, cancel := context.WithTimeout(c.r.ctx, c.r.opts.DialTimeout)
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.r.opts.Target)
	cancel()
	if err != nil {
		c.r.dialFailed.Add(1)
		c.shut(true, false)
		return
	}
	c.mu.Lock()
	if c.done { // reset or closed while dialing
		c.mu.Unlock()
		nc.Close()
		return
	}
	c.server = nc.(*net.TCPConn)
	c.mu.Unlock()

	down := make(chan struct{})
	c.r.wg.Add(1)
	go func() {
		defer c.r.wg.Done()
		defer close(down)
		c.pipe(Down, c.server, c.client)
	}()
	c.pipe(Up, c.client, c.server)
	<-down
	c.close()
}

// pipe copies src to dst, shaped as dir says, until src ends (passed on as
// a half-close), either side fails, or the relay resets the connection.
func (c *Conn) pipe(dir Direction, src, dst *net.TCPConn) {
	rng := rand.New(rand.NewPCG(c.r.opts.Seed, c.id<<1|uint64(dir)))
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c.r.reads[dir].Add(1)
			if !c.forward(dir, dst, buf[:n], rng) {
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			dst.CloseWrite() // the other direction goes on
			return
		default:
			// A reset from one side is passed on as a reset; anything
			// else (the relay closing) closes both.
			c.shut(errors.Is(err, syscall.ECONNRESET), false)
			return
		}
	}
}

// forward writes p to dst in pieces, with the pauses, stalls and resets of
// dir's shape; false means the connection is finished.
func (c *Conn) forward(dir Direction, dst *net.TCPConn, p []byte, rng *rand.Rand) bool {
	r := c.r
	s := r.shapes[dir].Load()
	cut := -1 // bytes of p to forward before a random reset
	if s.ResetChance > 0 && rng.Float64() < s.ResetChance {
		cut = rng.IntN(len(p))
	}
	for len(p) > 0 {
		if !r.waitStall(dir) {
			return false
		}
		k := len(p)
		if s.MaxPiece > 0 {
			k = min(k, 1+rng.IntN(s.MaxPiece))
		}
		reset := false
		if cut >= 0 {
			if cut <= k {
				k, reset = cut, true
			} else {
				cut -= k
			}
		}
		// The connection's trigger first: if the relay's then cuts k
		// shorter, this connection is reset anyway.
		for _, t := range []*trigger{&c.trig, &r.trig} {
			if k2, fire := t.take(dir, k); fire {
				k, reset = k2, true
			}
		}
		if k > 0 {
			if _, err := dst.Write(p[:k]); err != nil {
				c.shut(false, false)
				return false
			}
			r.pieces[dir].Add(1)
			r.bytes[dir].Add(int64(k))
		}
		if reset {
			c.resetAfterSent(dst)
			return false
		}
		p = p[k:]
		if s.PauseChance > 0 && s.Pause > 0 && rng.Float64() < s.PauseChance {
			r.pauses[dir].Add(1)
			if !r.sleep(time.Duration(1 + rng.Int64N(int64(s.Pause)))) {
				return false
			}
		}
		if s.StallChance > 0 && s.Stall > 0 && rng.Float64() < s.StallChance {
			r.pauses[dir].Add(1)
			if !r.sleep(s.Stall) {
				return false
			}
		}
	}
	return true
}
