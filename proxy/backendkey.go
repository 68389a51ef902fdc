package proxy

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"maps"
	"time"
)

// BackendKeyData: what a client is told at login (PostgreSQL docs 55.2.2),
// a process ID and a secret key, which a driver reports as the session's
// backend PID and sends back in a CancelRequest.
//
// In session mode a client keeps one server for its whole session, so it
// is given that server at login (waiting for one up to pool.wait_timeout,
// as a direct connection waits for a backend) and its BackendKeyData
// carries the server's real process ID: pg_backend_pid(), the PID the
// driver reports, pg_stat_activity's pid and pg_terminate_backend agree,
// as on a direct connection. The secret key stays pgguard's own: a cancel
// comes to pgguard, which forwards it to the client's server with the
// server's real key, and the real key never leaves pgguard. The session's
// server is never replaced under it: when it ends (terminated, its
// upstream gone, a failback closing fallback sessions) the session ends
// too, and a reconnect gets a new server and its new PID, as a direct
// connection would.
//
// In transaction mode a client has no server of its own, so its process
// ID is pgguard's client ID (SHOW CLIENTS, KILL), as before.
//
// A cancel key is the pair (process ID, secret); pgguard keeps them in one
// index and draws the 32-bit secret from crypto/rand until the pair is
// unique: server PIDs of different upstreams, and client IDs, can
// coincide, the pairs cannot. Guessing a secret is as hard as against
// PostgreSQL itself (protocol 3.0 keys are 32 bits).

// cancelKey is a BackendKeyData as one map key.
func cancelKey(pid, secret uint32) uint64 { return uint64(pid)<<32 | uint64(secret) }

// keyClientLocked gives c a cancel key with process ID pid and a fresh
// secret, replacing the one it had (p.mu held).
func (p *Proxy) keyClientLocked(c *client, pid uint32) {
	if p.cancelKeys == nil {
		p.cancelKeys = make(map[uint64]*client)
	}
	if old := cancelKey(c.keyPID, c.secret); p.cancelKeys[old] == c {
		delete(p.cancelKeys, old)
	}
	for {
		var s [4]byte
		rand.Read(s[:])
		k := cancelKey(pid, binary.BigEndian.Uint32(s[:]))
		if p.cancelKeys[k] == nil {
			c.keyPID, c.secret = pid, uint32(k)
			p.cancelKeys[k] = c
			return
		}
	}
}

// unkeyClientLocked drops c's cancel key (p.mu held).
func (p *Proxy) unkeyClientLocked(c *client) {
	if k := cancelKey(c.keyPID, c.secret); p.cancelKeys[k] == c {
		delete(p.cancelKeys, k)
	}
}

// keyedClient returns the client whose BackendKeyData is (pid, secret).
func (p *Proxy) keyedClient(pid, secret uint32) *client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cancelKeys[cancelKey(pid, secret)]
}

// linkSession gives session-mode client c, registered and authenticated,
// its server for the session, and returns the server's ParameterStatus
// values for the client's login; c's cancel key then carries the server's
// process ID. A refusal (pool.wait_timeout, a [[limits]] rule's
// max_connections, no upstream) is FATAL, as a direct connection's
// refusal at login is; a client that hung up while it waited gets
// nothing. So is a worker's login while the worker kill switch is on
// (DISABLE_WORKERS): it could run nothing, and would hold a server.
func (c *client) linkSession() (map[string]string, error) {
	fatal := func(err error) error {
		var e *Error
		if errors.As(err, &e) {
			fe := *e
			fe.Severity = "FATAL"
			return &fe
		}
		return err
	}
	if err := c.lim.AdmitCached(); err != nil { // only the worker kill switch refuses
		return nil, fatal(c.p.clientError(err, c.db, true))
	}
	c.conn.SetDeadline(time.Time{}) // pool.wait_timeout bounds the wait, not pool.login_timeout
	b, err := c.acquire(nil, 0, false, false)
	if err != nil {
		return nil, fatal(err)
	}
	if d := c.p.cfg.Load().Pool.LoginTimeout.Duration; d > 0 {
		c.conn.SetDeadline(time.Now().Add(d)) // for the rest of the login
	}
	b.mu.Lock()
	params := maps.Clone(b.params)
	b.mu.Unlock()
	c.p.mu.Lock()
	c.p.keyClientLocked(c, b.hc.PID)
	c.p.mu.Unlock()
	return params, nil
}

// sessionServerGone is what a session-mode client's send returns when it
// finds its server gone (it ended as the client sent; the pump tells the
// client how, and closes it): the session is not moved to another server,
// whose process ID would not be the one the client was given.
func (c *client) sessionServerGone() error {
	if c.closing.Load() != nil {
		return errClientEOF // told already
	}
	return fatalf(codeConnectionFailure, "the server connection of this session for database %q ended; reconnect to continue", c.db.name)
}
