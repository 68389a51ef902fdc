// Command floorrelay is the cheapest transaction-pooling relay we know how to
// write on Linux, for `make bench` to measure the floor under pgguard and
// PgBouncer: one thread, one level-triggered epoll set, no TLS, no
// authentication of clients, no statistics, nothing decoded but message
// headers. It opens -pool server connections at start (pgconn does the
// upstream's authentication), answers each client's startup itself, and links
// a client to an idle server from its first byte until the server's
// ReadyForQuery with status 'I'. The socket pattern per round trip is the one
// any pooled round trip needs: read the client, write the server, read the
// server, write the client.
//
// It is a measuring instrument, not a pooler: session state, prepared
// statements, cancels and errors are ignored. pgbench -S -M simple is what it
// is built to carry.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6439", "address clients connect to")
	upstream := flag.String("upstream", "", "PostgreSQL URL of the server")
	poolSize := flag.Int("pool", 10, "server connections")
	flag.Parse()
	runtime.GOMAXPROCS(1)
	runtime.LockOSThread()
	r, err := newRelay(*listen, *upstream, *poolSize)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floorrelay:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	r.loop()
}

// side is one socket, client or server, and what the relay knows of it.
type side struct {
	fd      int
	client  bool
	peer    *side  // the linked side, or nil
	started bool   // a client past its startup packet
	sent    bool   // a client: bytes went to its server in this link
	drain   bool   // a server whose client left mid-request: back when idle
	in      []byte // a client's bytes read before its startup completed
	frame   framer
}

// framer follows message boundaries across reads: it never matters where a
// read ended.
type framer struct {
	hdr  [5]byte
	have int // header bytes collected
	left int // body bytes still to pass of the current message
}

// scan walks b and reports whether it ended with a whole ReadyForQuery of
// status 'I' (the server is free), and whether a Terminate began in it.
func (f *framer) scan(b []byte) (idle, terminate bool) {
	for len(b) > 0 {
		if f.left == 0 {
			n := copy(f.hdr[f.have:], b)
			f.have += n
			b = b[n:]
			idle = false
			if f.have < 5 {
				return
			}
			f.have = 0
			f.left = int(binary.BigEndian.Uint32(f.hdr[1:])) - 4
			terminate = terminate || f.hdr[0] == 'X'
			continue
		}
		n := min(f.left, len(b))
		if f.hdr[0] == 'Z' {
			idle = b[0] == 'I'
		}
		f.left -= n
		b = b[n:]
	}
	return
}

type relay struct {
	epfd    int
	lfd     int
	sides   map[int]*side
	idle    []*side // servers nobody holds
	waiting []*side // clients with bytes and no server
	params  [][]byte
	buf     []byte
}

func newRelay(listen, upstream string, poolSize int) (*relay, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	r := &relay{epfd: epfd, sides: map[int]*side{}, buf: make([]byte, 64<<10)}
	for range poolSize {
		c, err := pgconn.Connect(context.Background(), upstream)
		if err != nil {
			return nil, err
		}
		hc, err := c.Hijack()
		if err != nil {
			return nil, err
		}
		if r.params == nil {
			for k, v := range hc.ParameterStatuses {
				r.params = append(r.params, message('S', append(append(append([]byte(k), 0), v...), 0)))
			}
		}
		fd, err := detach(hc.Conn)
		if err != nil {
			return nil, err
		}
		s := &side{fd: fd}
		r.add(s)
		r.idle = append(r.idle, s)
	}
	addr, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return nil, err
	}
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	syscall.SetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Bind(lfd, sa); err != nil {
		return nil, err
	}
	if err := syscall.Listen(lfd, 4096); err != nil {
		return nil, err
	}
	r.lfd = lfd
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, lfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return nil, err
	}
	return r, nil
}

// detach takes a connection's descriptor out of Go's netpoller.
func detach(c net.Conn) (int, error) {
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		return 0, err
	}
	c.Close()
	fd := int(f.Fd())
	nfd, err := syscall.Dup(fd)
	f.Close()
	if err != nil {
		return 0, err
	}
	return nfd, syscall.SetNonblock(nfd, true)
}

func (r *relay) add(s *side) {
	r.sides[s.fd] = s
	syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, s.fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(s.fd)})
}

func (r *relay) loop() {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(r.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "floorrelay: epoll:", err)
			os.Exit(1)
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == r.lfd {
				r.accept()
				continue
			}
			if s := r.sides[fd]; s != nil {
				r.readable(s)
			}
		}
	}
}

func (r *relay) accept() {
	for {
		fd, _, err := syscall.Accept4(r.lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		r.add(&side{fd: fd, client: true})
	}
}

func (r *relay) readable(s *side) {
	if s.client && s.peer == nil {
		// Unlinked: read only what the startup needs, or take a server.
		if !s.started {
			r.startup(s)
			return
		}
		if len(r.idle) == 0 {
			for _, w := range r.waiting {
				if w == s {
					return // level-triggered: it stays readable until served
				}
			}
			r.waiting = append(r.waiting, s)
			syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, s.fd, nil)
			return
		}
		r.link(s, r.idle[len(r.idle)-1])
		r.idle = r.idle[:len(r.idle)-1]
	}
	n, err := syscall.Read(s.fd, r.buf)
	if err == syscall.EAGAIN {
		return
	}
	if n <= 0 {
		r.close(s)
		return
	}
	b := r.buf[:n]
	idle, terminate := s.frame.scan(b)
	if s.client && terminate {
		r.close(s)
		return
	}
	if s.peer == nil {
		switch {
		case s.client:
		case s.drain && idle:
			s.drain = false
			r.idle = append(r.idle, s)
			r.serveWaiting()
		case !s.drain:
			r.close(s) // a server speaking unasked: gone or broken
		}
		return
	}
	writeAll(s.peer.fd, b)
	s.sent = s.client
	if !s.client && idle {
		c := s.peer
		s.peer, c.peer = nil, nil
		r.idle = append(r.idle, s)
		r.serveWaiting()
	}
}

func (r *relay) link(c, srv *side) { c.peer, srv.peer, c.sent = srv, c, false }

// serveWaiting hands the idle servers to queued clients, oldest first.
func (r *relay) serveWaiting() {
	for len(r.waiting) > 0 && len(r.idle) > 0 {
		c := r.waiting[0]
		r.waiting = r.waiting[1:]
		srv := r.idle[len(r.idle)-1]
		r.idle = r.idle[:len(r.idle)-1]
		r.link(c, srv)
		syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, c.fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(c.fd)})
	}
}

// startup answers SSLRequest with 'N' and a StartupMessage with
// AuthenticationOk, the server's parameters and ReadyForQuery.
func (r *relay) startup(s *side) {
	n, err := syscall.Read(s.fd, r.buf)
	if err == syscall.EAGAIN {
		return
	}
	if n <= 0 {
		r.close(s)
		return
	}
	s.in = append(s.in, r.buf[:n]...)
	for len(s.in) >= 8 {
		size := int(binary.BigEndian.Uint32(s.in))
		if len(s.in) < size {
			return
		}
		code := binary.BigEndian.Uint32(s.in[4:])
		s.in = s.in[size:]
		switch code {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest
			writeAll(s.fd, []byte{'N'})
		case 196608: // protocol 3.0
			out := message('R', []byte{0, 0, 0, 0})
			for _, p := range r.params {
				out = append(out, p...)
			}
			out = append(out, message('K', make([]byte, 8))...)
			out = append(out, message('Z', []byte{'I'})...)
			writeAll(s.fd, out)
			s.started = true
			if len(s.in) > 0 {
				// A pipelined first query: rare for pgbench, unsupported here.
				r.close(s)
			}
			s.in = nil
			return
		default:
			r.close(s)
			return
		}
	}
}

func (r *relay) close(s *side) {
	syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, s.fd, nil)
	syscall.Close(s.fd)
	delete(r.sides, s.fd)
	if s.client {
		if srv := s.peer; srv != nil {
			// The server finishes what it was sent, then serves others.
			srv.peer = nil
			if s.sent {
				srv.drain = true
			} else {
				r.idle = append(r.idle, srv)
				defer r.serveWaiting()
			}
		}
		for i, w := range r.waiting {
			if w == s {
				r.waiting = append(r.waiting[:i], r.waiting[i+1:]...)
				break
			}
		}
		return
	}
	if c := s.peer; c != nil {
		c.peer = nil
		r.close(c)
	}
	for i, w := range r.idle {
		if w == s {
			r.idle = append(r.idle[:i], r.idle[i+1:]...)
			break
		}
	}
}

func message(typ byte, body []byte) []byte {
	m := make([]byte, 5, 5+len(body))
	m[0] = typ
	binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
	return append(m, body...)
}

// writeAll writes b to a nonblocking socket, waiting for room when the
// socket's buffer is full (rare with pgbench's small replies).
func writeAll(fd int, b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EAGAIN {
			pfd := []pollFd{{fd: int32(fd), events: 0x4}} // POLLOUT
			poll(pfd)
			continue
		}
		if err != nil {
			return
		}
		b = b[n:]
	}
}

type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

func poll(fds []pollFd) {
	syscall.Syscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 1000)
}
