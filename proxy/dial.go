package proxy

import (
	"context"
	"net"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgguard/pgguard/config"
)

// Server sockets and a partitioned upstream. When the network between
// pgguard and its upstream drops packets without closing anything (a cloud
// network partition, a NAT that forgot the flow), nothing arrives to say the
// server is gone: the pump would wait for a reply forever. TCP keepalive
// probes a silent connection and TCP_USER_TIMEOUT bounds how long sent data
// or probes may go unacknowledged (tcp(7)); then the kernel fails the
// socket with ETIMEDOUT, the pump's read returns it, and backend.died treats
// it like any other death: the linked client gets 08006 and the failover
// monitor counts it (database.linkedServerDied). Probes are TCP segments
// only: no query, nothing that keeps a Neon compute awake.

// dialServer is the pgconn DialFunc of every upstream: it applies the
// [pool] server_tcp_* settings in force at each dial, so a reload applies
// to connections opened after it.
func (p *Proxy) dialServer(ctx context.Context, network, addr string) (net.Conn, error) {
	d := serverDialer(p.cfg.Load().Pool)
	return d.DialContext(ctx, network, addr)
}

// serverDialer returns a dialer that sets keepalive and TCP_USER_TIMEOUT on
// TCP sockets as pc says (Unix sockets get neither).
func serverDialer(pc config.Pool) *net.Dialer {
	d := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: pc.ServerTCPKeepaliveIdle.Duration > 0,
		Idle: pc.ServerTCPKeepaliveIdle.Duration, Interval: osDefault(pc.ServerTCPKeepaliveInterval.Duration),
		Count: osDefault(pc.ServerTCPKeepaliveCount)}}
	if !d.KeepAliveConfig.Enable {
		d.KeepAlive = -1
	}
	if t := pc.ServerTCPUserTimeout.Duration; t > 0 {
		ms := int(t / time.Millisecond)
		d.Control = func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d
}

// osDefault maps a setting's 0 ("the OS default") to net.KeepAliveConfig's
// -1 (leave the system value); its 0 would mean Go's own default.
func osDefault[T time.Duration | int](v T) T {
	if v == 0 {
		return -1
	}
	return v
}
