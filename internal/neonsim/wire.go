package neonsim

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// Protocol codes of the untyped first messages (PostgreSQL docs 55.7).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocol3         = 196608
)

// maxMessage caps one message's length; the simulator is a test tool, not
// a guard, so the cap only keeps a corrupt length from allocating gigabytes.
const maxMessage = 1 << 30

// maxStartup is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
const maxStartup = 10000

// readUntyped reads a length-prefixed message without a type byte (the
// startup phase) and returns its body after the length.
func readUntyped(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(h[:]))
	if n < 8 || n > maxStartup {
		return nil, fmt.Errorf("startup packet length %d", n)
	}
	body := make([]byte, n-4)
	_, err := io.ReadFull(r, body)
	return body, err
}

// frameReader reads whole typed messages (type byte, length, body) off a
// stream however it is chunked, into a buffer reused from one to the next.
type frameReader struct {
	r   *bufio.Reader
	buf []byte
}

// next returns the next message, header included; the slice is valid until
// the following call.
func (f *frameReader) next() ([]byte, error) {
	hdr, err := f.r.Peek(5)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > maxMessage {
		return nil, fmt.Errorf("message %q: length %d", hdr[0], n)
	}
	if cap(f.buf) < n+1 {
		f.buf = make([]byte, n+1)
	}
	m := f.buf[:n+1]
	if _, err := io.ReadFull(f.r, m); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return m, nil
}

// buffered reports whether more input is already read, so a flush can wait.
func (f *frameReader) buffered() bool { return f.r.Buffered() > 0 }

// startupParams parses a StartupMessage body after the protocol version:
// name\0value\0 pairs ending in \0, in order.
func startupParams(b []byte) ([][2]string, error) {
	var out [][2]string
	for len(b) > 0 && b[0] != 0 {
		k, rest, ok := cutNul(b)
		if !ok {
			return nil, errors.New("startup packet: unterminated name")
		}
		v, rest2, ok := cutNul(rest)
		if !ok {
			return nil, errors.New("startup packet: unterminated value")
		}
		out = append(out, [2]string{k, v})
		b = rest2
	}
	return out, nil
}

func cutNul(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// startupMessage encodes a protocol 3.0 StartupMessage.
func startupMessage(params [][2]string) []byte {
	b := make([]byte, 8, 256)
	binary.BigEndian.PutUint32(b[4:], protocol3)
	for _, p := range params {
		b = append(append(append(append(b, p[0]...), 0), p[1]...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// errorResponse encodes an ErrorResponse with severity sev ("ERROR",
// "FATAL"), SQLSTATE code and message (PostgreSQL docs 55.8).
func errorResponse(sev, code, msg string) []byte {
	b := []byte{'E', 0, 0, 0, 0}
	for _, f := range []struct {
		t byte
		v string
	}{{'S', sev}, {'V', sev}, {'C', code}, {'M', msg}} {
		b = append(append(append(b, f.t), f.v...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	return b
}

// refusal is an error the simulator answers a connection with, as Neon's
// proxy or a compute's postmaster would.
type refusal struct {
	sev, code, msg string
}

func (r *refusal) Error() string { return r.code + ": " + r.msg }

func (r *refusal) bytes() []byte { return errorResponse(r.sev, r.code, r.msg) }

// splitHostPort is net.SplitHostPort with the port as a number.
func splitHostPort(addr string) (string, uint16, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	return h, uint16(n), err
}
