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
// Writes are serialized by wmu. Reads are a sockReader's (a server's: a
// client's goroutine reads its socket itself), so that the thousands of
// idle clients carry only what writing needs.
type sock struct {
	conn net.Conn
	raw  syscall.RawConn // nil for TLS

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
			s.writeFn = s.rawWrite
		}
	}
	return s
}

// sockReader reads a sock; owned by one reading goroutine.
type sockReader struct {
	s      *sock
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool
}

func (r *sockReader) init(s *sock) {
	r.s = s
	r.readFn = r.rawRead
}

var errEOF = io.EOF

// Read reads into p, at least one byte, or returns an error.
func (r *sockReader) Read(p []byte) (int, error) {
	if r.s.raw == nil {
		return r.s.conn.Read(p)
	}
	r.rbuf, r.rn, r.rerr = p, 0, nil
	if err := r.s.raw.Read(r.readFn); err != nil {
		return 0, err
	}
	r.rbuf = nil
	return r.rn, r.rerr
}

func (r *sockReader) rawRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rbuf[0])), uintptr(len(r.rbuf)))
		switch e {
		case 0:
			if n == 0 {
				r.rerr = errEOF
			}
			r.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.rerr = e
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
	return s.writeLocked(p)
}

// writeFrom writes what next returns, asked under the write lock: a writer
// that must not come between another's messages decides there.
func (s *sock) writeFrom(next func() []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	p := next()
	if len(p) == 0 {
		return 0, nil
	}
	return s.writeLocked(p)
}

func (s *sock) writeLocked(p []byte) (int, error) {
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
