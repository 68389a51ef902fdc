package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/auth"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/limiter"
)

// Startup packet codes (PostgreSQL docs 55.7, StartupMessage, SSLRequest,
// GSSENCRequest, CancelRequest).
const (
	protocol30     = 3 << 16
	sslRequest     = 80877103
	gssencRequest  = 80877104
	cancelRequest  = 80877102
	maxStartupSize = 10000 // PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH)
)

// login runs the startup phase on a new connection: encryption negotiation,
// the StartupMessage, authentication and the initial ParameterStatus set. It
// returns a ready client, or nil when the connection was a cancel request or
// was refused (the refusal has been sent).
func (p *Proxy) login(conn net.Conn) *client {
	cfg := p.cfg.Load()
	if d := cfg.Pool.LoginTimeout.Duration; d > 0 {
		conn.SetDeadline(time.Now().Add(d))
	}
	var params map[string]string
	for params == nil {
		code, body, err := readStartup(conn)
		if err != nil {
			p.log.Debug("bad startup packet", "client", conn.RemoteAddr(), "err", err)
			return nil
		}
		switch {
		case code == sslRequest:
			if p.tls == nil || isTLS(conn) {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil
			}
			tc := tls.Server(conn, p.tls)
			if err := tc.Handshake(); err != nil {
				p.log.Debug("client TLS handshake failed", "client", conn.RemoteAddr(), "err", err)
				return nil
			}
			conn = tc
		case code == gssencRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil
			}
		case code == cancelRequest:
			p.handleCancel(body)
			return nil
		case code>>16 == 3:
			params, err = parseStartup(body)
			if err != nil {
				writeFatal(conn, fatalf(codeProtocolViolation, "invalid startup packet: %v", err))
				return nil
			}
			if err := negotiateVersion(conn, code, params); err != nil {
				return nil
			}
		default:
			writeFatal(conn, fatalf(codeFeatureUnsupported, "unsupported frontend protocol %d.%d: pgguard speaks 3.0", code>>16, code&0xffff))
			return nil
		}
	}
	return p.authenticate(conn, params)
}

// authenticate checks the user, the database and the password, then sends the
// session's opening messages.
func (p *Proxy) authenticate(conn net.Conn, params map[string]string) *client {
	cfg := p.cfg.Load()
	user := params["user"]
	if user == "" {
		writeFatal(conn, fatalf(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet"))
		return nil
	}
	dbname := params["database"]
	if dbname == "" {
		dbname = user
	}
	admin := dbname == adminDatabase
	var db *database
	if !admin {
		if db = p.database(dbname); db == nil {
			writeFatal(conn, fatalf(codeUnknownDatabase, "database %q does not exist in pgguard; add a [databases.%s] entry to the config", dbname, dbname))
			return nil
		}
	}
	if n := p.clientCount(); n >= cfg.Pool.MaxClientConn {
		writeFatal(conn, fatalf(codeTooManyConnections, "too many client connections: pool.max_client_conn = %d reached; raise it or close idle sessions", cfg.Pool.MaxClientConn))
		p.metrics.ClientRefusals.WithLabelValues(codeTooManyConnections).Inc()
		return nil
	}

	u, known := cfg.User(user)
	secret := u.Password
	if !known {
		secret = randomSecret() // run the exchange anyway: don't reveal which users exist
	}
	if err := auth.Authenticate(conn, auth.Method(cfg.AuthMethod), user, secret); err != nil || (admin && !cfg.IsAdmin(user)) {
		if err == nil || errors.Is(err, auth.ErrPasswordMismatch) {
			if admin && err == nil {
				writeFatal(conn, fatalf(codeInvalidAuthSpec, "user %q may not use the admin console; add it to admin.users", user))
			} else {
				writeFatal(conn, fatalf(codeInvalidPassword, "password authentication failed for user %q", user))
				p.metrics.ClientRefusals.WithLabelValues(codeInvalidPassword).Inc()
			}
		} else {
			p.log.Debug("client authentication failed", "client", conn.RemoteAddr(), "user", user, "err", err)
			writeFatal(conn, fatalf(codeProtocolViolation, "authentication failed: %v", err))
		}
		return nil
	}

	c := &client{
		p:           p,
		conn:        conn,
		db:          db,
		user:        user,
		app:         params["application_name"],
		want:        newSessionWant(params),
		connectedAt: time.Now().UnixNano(),
	}
	c.addr = conn.RemoteAddr().String()
	if !admin {
		ap, _ := netip.ParseAddrPort(c.addr)
		c.lim = p.Limiter.Match(limiter.Client{Database: dbname, User: user, Application: c.app, Addr: ap.Addr().Unmap()})
		c.priority = int32(max(min(c.lim.Priority(), math.MaxInt32), math.MinInt32)) // beyond, order is moot
	}
	c.out = newSock(conn)
	c.raw = c.out.raw
	c.readFn = c.readRaw
	c.lastTyp = 'S' // at a sync point: nothing sent yet
	c.pooling = poolTransaction
	if cfg.Pool.Mode == "session" {
		c.pooling = poolSession
	}
	c.lastActive.Store(c.connectedAt)

	var status map[string]string
	if admin {
		status = adminParams
	} else if c.pooling == poolSession {
		// The session's server, from login: its process ID is the client's (backendkey.go).
		p.register(c)
		var err error
		if status, err = c.linkSession(); err != nil {
			var e *Error
			if errors.As(err, &e) {
				p.log.Warn("login failed: no server connection", "database", db.name, "user", user, "err", e.Cause)
				writeFatal(conn, e)
			}
			p.forget(c)
			return nil
		}
	} else {
		ctx, cancel := context.WithTimeout(p.ctx, cfg.Pool.ConnectTimeout.Duration+cfg.Pool.WaitTimeout.Duration+time.Second)
		var err error
		status, err = db.startupParams(ctx)
		cancel()
		if err != nil {
			e := p.clientError(err, db, true)
			p.log.Warn("login failed: no server connection", "database", db.name, "user", user, "err", e.Cause)
			writeFatal(conn, e)
			return nil
		}
	}
	if c.id == 0 {
		p.register(c)
	}
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for _, k := range slices.Sorted(maps.Keys(status)) {
		v := status[k]
		if cv, ok := c.want.reported.get(k); ok {
			v = cv // applied on each server before the client's first statement there
		}
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
	}
	key := make([]byte, 4)
	binary.BigEndian.PutUint32(key, c.secret)
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: c.keyPID, SecretKey: key}).Encode(buf)
	buf = append(buf, 'Z', 0, 0, 0, 5, 'I')
	if _, err := conn.Write(buf); err != nil {
		if b := c.server.Load(); b != nil {
			b.reset(c, true)
		}
		p.forget(c)
		return nil
	}
	if b := c.server.Load(); b != nil && b.upstreamOf() == failover.Fallback {
		c.noticeFallback() // its session is served by the fallback, from the start
	}
	conn.SetDeadline(time.Time{})
	c.state.Store(stateIdle)
	return c
}

// adminParams are what the admin console reports at login.
var adminParams = map[string]string{
	"server_version":              "15.0 (pgguard)",
	"server_encoding":             "UTF8",
	"client_encoding":             "UTF8",
	"DateStyle":                   "ISO, MDY",
	"integer_datetimes":           "on",
	"standard_conforming_strings": "on",
	"TimeZone":                    "UTC",
}

// readStartup reads one length-prefixed startup-phase packet.
func readStartup(r io.Reader) (code uint32, body []byte, err error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 8 || n > maxStartupSize {
		return 0, nil, fmt.Errorf("startup packet length %d outside 8..%d", n, maxStartupSize)
	}
	body = make([]byte, n-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint32(hdr[4:]), body, nil
}

// parseStartup decodes a StartupMessage's name/value pairs.
func parseStartup(body []byte) (map[string]string, error) {
	params := make(map[string]string)
	for len(body) > 0 && body[0] != 0 {
		k, rest, ok := cstring(body)
		if !ok {
			return nil, errors.New("unterminated parameter name")
		}
		v, rest, ok := cstring(rest)
		if !ok {
			return nil, errors.New("unterminated parameter value")
		}
		params[k] = v
		body = rest
	}
	return params, nil
}

// negotiateVersion sends NegotiateProtocolVersion when the client asked for a
// newer 3.x minor version or for protocol options (_pq_.*) we don't support
// (PostgreSQL docs 55.2.1); the session then continues in 3.0.
func negotiateVersion(conn net.Conn, code uint32, params map[string]string) error {
	var unknown []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			unknown = append(unknown, k)
			delete(params, k)
		}
	}
	if code == protocol30 && len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	msg := &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}
	buf, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = conn.Write(buf)
	return err
}

func writeFatal(conn net.Conn, e *Error) {
	conn.Write(e.encode(nil))
}

func isTLS(conn net.Conn) bool {
	_, ok := conn.(*tls.Conn)
	return ok
}

func randomSecret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
