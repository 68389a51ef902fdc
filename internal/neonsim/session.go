package neonsim

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// session is one client connection through the simulator's proxy.
type session struct {
	sim       *Sim
	c         *compute
	client    net.Conn // TLS
	server    net.Conn // to the PostgreSQL under the compute
	app, user string
	arrived   time.Time // accepted

	busy bool // active as the compute counts it; guarded by c.mu

	// What the session owes and holds, and the server connection once
	// dialed; guarded by mu (both relay goroutines and terminate use it).
	mu     sync.Mutex
	expect int  // ReadyForQuery messages the server still owes
	open   bool // extended-protocol messages sent since the last Sync
	tx     byte // status of the last ReadyForQuery

	killed atomic.Bool // the compute suspended: tell the client 57P01
}

// handle serves one accepted connection: TLS, the startup, the endpoint's
// compute, then the relay until either side ends.
func (s *Sim) handle(raw net.Conn) {
	defer s.wg.Done()
	forget := func() {
		s.mu.Lock()
		delete(s.conns, raw)
		s.mu.Unlock()
	}
	defer forget()
	arrived := time.Now()
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	conn, sni, body, err := s.negotiate(raw)
	if err != nil || body == nil {
		raw.Close()
		return
	}
	if code := binary.BigEndian.Uint32(body); code == codeCancelRequest {
		s.forwardCancel(body)
		conn.Close()
		return
	}
	params, err := startupParams(body[4:])
	if err != nil {
		conn.Close()
		return
	}
	c, fwd, ref := s.route(sni, params)
	if ref != nil {
		conn.Write(ref.bytes())
		conn.Close()
		return
	}
	ss := &session{sim: s, c: c, client: conn, tx: 'I', expect: 1, arrived: arrived}
	for _, p := range fwd {
		switch p[0] {
		case "application_name":
			ss.app = p[1]
		case "user":
			ss.user = p[1]
		}
	}
	raw.SetDeadline(time.Time{})
	if ref := c.admit(ss, s.quit); ref != nil {
		conn.Write(ref.bytes())
		conn.Close()
		return
	}
	server, err := net.DialTimeout("tcp", s.opts.Upstream, 10*time.Second)
	if err == nil {
		_, err = server.Write(startupMessage(fwd))
	}
	if err != nil {
		if server != nil {
			server.Close()
		}
		c.leave(ss)
		conn.Write(errorResponse("ERROR", "XX000", MsgNoCompute))
		conn.Close()
		return
	}
	ss.mu.Lock()
	ss.server = server
	ss.mu.Unlock()
	if ss.killed.Load() { // suspended while dialing
		server.Close()
		conn.Write(errorResponse("FATAL", "57P01", MsgTerminated))
		conn.Close()
		return
	}
	forget()
	ss.relay()
	c.leave(ss)
}

// negotiate answers SSLRequest (and GSSENCRequest with 'N'), does the TLS
// handshake and reads the startup packet. It returns body nil when the
// client went away or was refused (already answered).
func (s *Sim) negotiate(raw net.Conn) (conn net.Conn, sni string, body []byte, err error) {
	for {
		body, err = readUntyped(raw)
		if err != nil {
			return nil, "", nil, err
		}
		switch binary.BigEndian.Uint32(body) {
		case codeGSSENCRequest:
			if _, err = raw.Write([]byte{'N'}); err != nil {
				return nil, "", nil, err
			}
			continue
		case codeSSLRequest:
		case codeCancelRequest:
			return raw, "", body, nil
		default: // a plain startup: Neon requires TLS
			raw.Write(errorResponse("ERROR", "XX000", MsgInsecure))
			return nil, "", nil, nil
		}
		break
	}
	if _, err = raw.Write([]byte{'S'}); err != nil {
		return nil, "", nil, err
	}
	tc := tls.Server(raw, s.tls)
	if err = tc.Handshake(); err != nil {
		return nil, "", nil, err
	}
	if body, err = readUntyped(tc); err != nil {
		return nil, "", nil, err
	}
	return tc, tc.ConnectionState().ServerName, body, nil
}

// forwardCancel passes a CancelRequest to the PostgreSQL under the
// computes (the key is the real backend's).
func (s *Sim) forwardCancel(body []byte) {
	c, err := net.DialTimeout("tcp", s.opts.Upstream, 5*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	msg := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(msg, uint32(4+len(body)))
	c.Write(append(msg, body...))
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(b[:]) // PostgreSQL closes when done
}

// route picks the endpoint from SNI or options=endpoint=..., as Neon's
// proxy does, and returns its compute and the startup parameters the
// compute gets.
func (s *Sim) route(sni string, params [][2]string) (*compute, [][2]string, *refusal) {
	fromSNI := ""
	if first, rest, ok := strings.Cut(sni, "."); ok && rest == s.domain {
		fromSNI = strings.TrimSuffix(first, "-pooler")
	}
	fromOpt := ""
	fwd := [][2]string{{"client_encoding", "UTF8"}}
	for _, p := range params {
		switch p[0] {
		case "user", "database", "application_name", "replication":
			fwd = append(fwd, p)
		case "options":
			var keep []string
			for _, o := range strings.Fields(p[1]) {
				if v, ok := strings.CutPrefix(o, "endpoint="); ok {
					fromOpt = v
				} else if v, ok := strings.CutPrefix(o, "project="); ok {
					fromOpt = v
				} else {
					keep = append(keep, o)
				}
			}
			if len(keep) > 0 {
				fwd = append(fwd, [2]string{"options", strings.Join(keep, " ")})
			}
		}
	}
	id := fromSNI
	switch {
	case fromSNI != "" && fromOpt != "" && fromSNI != fromOpt:
		return nil, nil, &refusal{"ERROR", "XX000", "Inconsistent project name inferred from SNI ('" + fromSNI + "') and project option ('" + fromOpt + "')."}
	case id == "":
		id = fromOpt
	}
	if id == "" {
		return nil, nil, &refusal{"ERROR", "XX000", MsgNoEndpoint}
	}
	c := s.computes[id]
	if c == nil {
		return nil, nil, &refusal{"ERROR", "XX000", MsgEndpointNotFound}
	}
	return c, fwd, nil
}

// terminate ends the session for a suspend: the server connection is
// closed, and the server-to-client relay sends 57P01 at the next message
// boundary and closes the client.
func (ss *session) terminate() {
	ss.killed.Store(true)
	ss.mu.Lock()
	srv := ss.server
	ss.mu.Unlock()
	if srv != nil { // else handle sees killed once it has dialed
		srv.Close()
	}
}

// relay copies both ways until either side ends, framing the messages
// so that the compute learns when the session is active.
func (ss *session) relay() {
	done := make(chan struct{})
	go func() {
		ss.serverToClient()
		// As PostgreSQL does: the backend leaves the compute's count
		// before its socket closes, so a client that saw the close may
		// count on the slot.
		ss.c.leave(ss)
		ss.client.Close()
		ss.server.Close()
		close(done)
	}()
	ss.clientToServer()
	ss.server.Close()
	<-done
}

// clientToServer forwards the client's messages, noting those that make
// the server work.
func (ss *session) clientToServer() {
	fr := frameReader{r: bufio.NewReaderSize(ss.client, 16<<10)}
	w := bufio.NewWriterSize(ss.server, 16<<10)
	for {
		m, err := fr.next()
		if err != nil {
			return
		}
		ss.sent(m[0])
		if _, err := w.Write(m); err != nil {
			return
		}
		if !fr.buffered() {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// serverToClient forwards the server's messages whole, so that a suspend
// can end the stream with 57P01 between two of them.
func (ss *session) serverToClient() {
	fr := frameReader{r: bufio.NewReaderSize(ss.server, 16<<10)}
	w := bufio.NewWriterSize(ss.client, 16<<10)
	for {
		m, err := fr.next()
		if err != nil {
			if ss.killed.Load() {
				w.Write(errorResponse("FATAL", "57P01", MsgTerminated))
			}
			w.Flush()
			return
		}
		if m[0] == 'Z' && len(m) >= 6 {
			ss.ready(m[5])
		}
		if _, err := w.Write(m); err != nil {
			return
		}
		if !fr.buffered() {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// sent updates what the session owes for a client message of type t
// (PostgreSQL docs 55.2: each Query, Sync and FunctionCall is answered by
// one ReadyForQuery; Parse, Bind, Execute, Describe, Close and Flush run
// work before the Sync that ends their batch).
func (ss *session) sent(t byte) {
	ss.mu.Lock()
	switch t {
	case 'Q', 'F':
		ss.expect++
	case 'S':
		ss.expect++
		ss.open = false
	case 'P', 'B', 'E', 'D', 'C', 'H':
		ss.open = true
	}
	busy := ss.busyLocked()
	ss.mu.Unlock()
	if t == 'Q' || t == 'E' {
		ss.c.query(t == 'Q')
	}
	ss.c.setBusy(ss, busy)
}

// ready records a ReadyForQuery with transaction status tx.
func (ss *session) ready(tx byte) {
	ss.mu.Lock()
	if ss.expect > 0 {
		ss.expect--
	}
	ss.tx = tx
	busy := ss.busyLocked()
	ss.mu.Unlock()
	ss.c.setBusy(ss, busy)
}

// busyLocked: a query runs, a batch is open, or a transaction block is.
func (ss *session) busyLocked() bool { return ss.expect > 0 || ss.open || ss.tx != 'I' }
