package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pgguard/pgguard/config"
)

// sockopt reads an int socket option of conn.
func sockopt(t *testing.T, conn net.Conn, level, opt int) int {
	t.Helper()
	raw, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestServerDialerSocketOptions: server sockets get the [pool]
// server_tcp_* settings, and 0 leaves keepalive off or the OS value alone.
func TestServerDialerSocketOptions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dial := func(pc config.Pool) net.Conn {
		conn, err := serverDialer(pc).DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	conn := dial(config.Default().Pool) // 15s, 5s, 3, 30s
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 5},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 30000},
	} {
		if got := sockopt(t, conn, o.level, o.opt); got != o.want {
			t.Errorf("defaults: %s = %d, want %d", o.name, got, o.want)
		}
	}

	var off config.Pool
	conn = dial(off)
	if got := sockopt(t, conn, unix.SOL_SOCKET, unix.SO_KEEPALIVE); got != 0 {
		t.Errorf("server_tcp_keepalive_idle = 0: SO_KEEPALIVE = %d, want 0", got)
	}
	if got := sockopt(t, conn, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); got != 0 {
		t.Errorf("server_tcp_user_timeout = 0: TCP_USER_TIMEOUT = %d, want 0 (OS default)", got)
	}

	// A Unix socket (a local fallback, say) dials with neither.
	dir := t.TempDir()
	uln, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	uc, err := serverDialer(config.Default().Pool).DialContext(context.Background(), "unix", dir+"/s")
	if err != nil {
		t.Fatalf("unix socket: %v", err)
	}
	uc.Close()
}
