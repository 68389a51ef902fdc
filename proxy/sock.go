package proxy

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

// sock is a connection the relay reads and writes. For plain TCP it issues
// read(2) and write(2) as raw system calls through syscall.RawConn: the socket
// is non-blocking, so no call blocks, and skipping the runtime's syscall
// bookkeeping spares the scheduler a P hand-off (and a thread wake-up) for
// every loopback write, which on a 2-core machine costs more than the write
// itself. The netpoller still parks the goroutine when a call would block.
// TLS connections go through net.Conn.
//
// Reads belong to one goroutine; writes are serialized by wmu.
type sock struct {
	conn net.Conn
	raw  syscall.RawConn // nil for TLS

	// Read state, owned by the reading goroutine.
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	werr    error
	writeFn func(uintptr) bool
}

func newSock(conn net.Conn) *sock {
	s := &sock{conn: conn}
	if sc, ok := conn.(syscall.Conn); ok && !isTLS(conn) {
		if raw, err := sc.SyscallConn(); err == nil {
			s.raw = raw
			s.readFn = s.rawRead
			s.writeFn = s.rawWrite
		}
	}
	return s
}

var errEOF = io.EOF

// Read reads into p, at least one byte, or returns an error.
func (s *sock) Read(p []byte) (int, error) {
	if s.raw == nil {
		return s.conn.Read(p)
	}
	s.rbuf, s.rn, s.rerr = p, 0, nil
	if err := s.raw.Read(s.readFn); err != nil {
		return 0, err
	}
	s.rbuf = nil
	return s.rn, s.rerr
}

func (s *sock) rawRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rbuf[0])), uintptr(len(s.rbuf)))
		switch e {
		case 0:
			if n == 0 {
				s.rerr = errEOF
			}
			s.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			s.rerr = e
			return true
		}
	}
}

// Write writes all of p.
func (s *sock) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.raw == nil {
		return s.conn.Write(p)
	}
	s.wbuf, s.werr = p, nil
	err := s.raw.Write(s.writeFn)
	n := len(p) - len(s.wbuf)
	s.wbuf = nil
	if err == nil {
		err = s.werr
	}
	return n, err
}

func (s *sock) rawWrite(fd uintptr) bool {
	for len(s.wbuf) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.wbuf[0])), uintptr(len(s.wbuf)))
		switch e {
		case 0:
			s.wbuf = s.wbuf[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werr = e
			return true
		}
	}
	return true
}

// Close closes the connection; blocked reads and writes return.
func (s *sock) Close() error { return s.conn.Close() }
