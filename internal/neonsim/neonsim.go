// Package neonsim is a Neon endpoint in front of a real PostgreSQL, as a
// client sees one, for tests, benchmarks and `pgguard demo -neon`.
//
// It behaves as Neon documents its proxy and computes:
//
//   - TLS is required; the endpoint is chosen by SNI
//     (ep-name.us-east-2.aws.neon.tech, "-pooler" stripped) or by
//     options=endpoint=ep-name, with certificates from a throwaway CA;
//     an unknown endpoint gets Neon's error text.
//   - Startup parameters are filtered as Neon's proxy filters them: user,
//     database, application_name, replication and options (without
//     endpoint= and project=) pass; everything else is dropped, and
//     client_encoding is UTF8.
//   - Each endpoint has a compute that is awake while any session is
//     active (a query running, or idle in a transaction block) and for
//     SuspendAfter after the last query ended or session started; open idle
//     sessions do not keep it awake. Then it suspends: every session gets
//     FATAL 57P01 and is closed.
//   - The first connection after a suspend waits ColdStart before its
//     startup is answered (later arrivals wait for the same wake).
//   - A compute admits MaxConnections sessions; the next gets 53300, as
//     PostgreSQL answers it.
//   - Switches for what the runbook names: compute time quota exceeded,
//     endpoint disabled, project suspended (XX000 with Neon's texts; the
//     compute is suspended at once), and refused connects.
//   - A Ledger per endpoint is the ground truth: awake intervals, CU-seconds,
//     wake-ups and who caused them, sessions opened, queries run.
//
// Time is real: tests scale it by giving seconds where Neon has minutes.
//
// The relay frames messages in both directions (it must see query
// boundaries to know when a session is active), so how the network chunks
// bytes changes nothing; everything else passes as bytes. Authentication is
// the real PostgreSQL's, relayed.
package neonsim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Neon's texts for the refusals the simulator answers with (SQLSTATE XX000,
// severity ERROR, as Neon's proxy sends them). MsgProjectSuspended is
// modeled: Neon documents no exact text for it, and clients (pgguard's
// failover classifier among them) match "project" and "suspended".
const (
	MsgQuotaExceeded    = "Your account or project has exceeded the compute time quota. Upgrade your plan to increase limits."
	MsgEndpointDisabled = "The endpoint has been disabled. Enable it using Neon API and retry."
	MsgProjectSuspended = "Your project has been suspended. Please contact Neon support."
	MsgEndpointNotFound = "The requested endpoint could not be found, or you don't have access to it. Please check the provided ID and try again."
	MsgNoEndpoint       = "Endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID (first part of the domain name) as a parameter: '?options=endpoint%3D<endpoint-id>'. See more at https://neon.tech/sni"
	MsgInsecure         = "connection is insecure (try using `sslmode=require`)"
	MsgNoCompute        = "Couldn't connect to compute node"
	// MsgTooManyClients is PostgreSQL's own (53300, FATAL).
	MsgTooManyClients = "sorry, too many clients already"
	// MsgTerminated is PostgreSQL's text for 57P01, which every session of a
	// suspending compute gets.
	MsgTerminated = "terminating connection due to administrator command"
)

// Options configures a Sim. Zero fields get the defaults noted.
type Options struct {
	// Upstream is host:port of the PostgreSQL every compute runs on
	// (required). Endpoints share it; each has its own compute state.
	Upstream string
	// Endpoints are the endpoint IDs that exist ("ep-quiet-sun-123456").
	// Default: one, "ep-sim-000001".
	Endpoints []string
	// Region is the domain's region: ID.Region.aws.neon.tech. Default
	// "us-east-2".
	Region string
	// SuspendAfter is Neon's scale-to-zero delay. Default 5m.
	SuspendAfter time.Duration
	// ColdStart is how long the first connection after a suspend waits
	// before its startup is answered. Default 0.
	ColdStart time.Duration
	// MaxConnections is each compute's max_connections (Neon: 104 at 0.25
	// CU). Default 104.
	MaxConnections int
	// ComputeUnits is each compute's size, for the ledger's CU-seconds.
	// Default 0.25.
	ComputeUnits float64
	// Listen is the address to listen on. Default "127.0.0.1:0".
	Listen string
	// OnChange, when set, is called (on its own goroutine) after a compute
	// wakes or suspends: for logs and the demo.
	OnChange func(endpoint string, awake bool, cause string)
}

func (o Options) withDefaults() Options {
	if len(o.Endpoints) == 0 {
		o.Endpoints = []string{"ep-sim-000001"}
	}
	if o.Region == "" {
		o.Region = "us-east-2"
	}
	if o.SuspendAfter <= 0 {
		o.SuspendAfter = 5 * time.Minute
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 104
	}
	if o.ComputeUnits <= 0 {
		o.ComputeUnits = 0.25
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	return o
}

// Sim is a simulated Neon region: a proxy listening for TLS connections and
// one compute per endpoint. Create it with Start; Close ends it.
type Sim struct {
	opts   Options
	domain string // "us-east-2.aws.neon.tech"
	ca     *testCA
	tls    *tls.Config
	caFile string
	dir    string

	computes map[string]*compute // by endpoint ID; fixed after Start

	mu      sync.Mutex
	ln      net.Listener // nil while refusing connects
	addr    string       // host:port, kept across Refuse
	closed  bool
	quit    chan struct{}         // closed by Close: sessions waiting for a wake give up
	conns   map[net.Conn]struct{} // accepted, not yet registered with a compute
	wg      sync.WaitGroup
	refused int // connects refused while refusing
}

// Start builds a Sim for opts and starts listening.
func Start(opts Options) (*Sim, error) {
	opts = opts.withDefaults()
	if opts.Upstream == "" {
		return nil, errors.New("neonsim: Options.Upstream is required")
	}
	s := &Sim{opts: opts, domain: opts.Region + ".aws.neon.tech", computes: map[string]*compute{}, quit: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	for _, id := range opts.Endpoints {
		s.computes[id] = newCompute(s, id)
	}
	ca, err := newTestCA(s.domain)
	if err != nil {
		return nil, fmt.Errorf("neonsim: test CA: %w", err)
	}
	s.ca = ca
	s.tls = &tls.Config{Certificates: []tls.Certificate{ca.cert}, MinVersion: tls.VersionTLS12}
	if s.dir, err = os.MkdirTemp("", "neonsim-"); err != nil {
		return nil, err
	}
	s.caFile = filepath.Join(s.dir, "ca.pem")
	if err := os.WriteFile(s.caFile, ca.caPEM, 0o600); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

// serve accepts on ln until it is closed.
func (s *Sim) serve(ln net.Listener) {
	s.ln = ln
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			go s.handle(c)
		}
	}()
}

// Close stops listening, closes every session and removes the CA file.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	for _, c := range s.computes {
		c.close()
	}
	s.wg.Wait()
	return os.RemoveAll(s.dir)
}

// Addr is the address the simulator listens on (127.0.0.1:port).
func (s *Sim) Addr() string { return s.addr }

// Port is the port of Addr.
func (s *Sim) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Host is endpoint's host name: "ep-x.us-east-2.aws.neon.tech". It resolves
// only through LookupHost.
func (s *Sim) Host(endpoint string) string { return endpoint + "." + s.domain }

// CAFile is the path of the test CA's certificate (PEM), for sslrootcert.
func (s *Sim) CAFile() string { return s.caFile }

// CAPool is a cert pool holding the test CA.
func (s *Sim) CAPool() *x509.CertPool { return s.ca.pool() }

// URL is a connection URL for endpoint as Neon's console gives one, with
// sslmode=verify-full against the test CA.
func (s *Sim) URL(endpoint, user, password, database string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password),
		Host: net.JoinHostPort(s.Host(endpoint), strconv.Itoa(s.Port())), Path: "/" + database,
		RawQuery: "sslmode=verify-full&sslrootcert=" + url.QueryEscape(s.caFile)}
	return u.String()
}

// LookupHost resolves the simulator's host names (anything under
// .aws.neon.tech) to 127.0.0.1 and everything else through DNS: a pgconn
// LookupFunc, and pgguard's Proxy.LookupHost in tests and the demo.
func (s *Sim) LookupHost(ctx context.Context, host string) ([]string, error) {
	if host == s.domain || strings.HasSuffix(host, ".aws.neon.tech") {
		h, _, _ := net.SplitHostPort(s.addr)
		return []string{h}, nil
	}
	return net.DefaultResolver.LookupHost(ctx, host)
}

// Refuse makes connects fail with "connection refused" (the listener is
// closed) while on; off listens again on the same address.
func (s *Sim) Refuse(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("neonsim: closed")
	}
	if on && s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	if !on && s.ln == nil {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return err
		}
		s.serve(ln)
	}
	return nil
}

// Endpoint returns endpoint's compute, for its switches and ledger; nil
// when there is no such endpoint.
func (s *Sim) Endpoint(id string) *Endpoint {
	if c := s.computes[id]; c != nil {
		return &Endpoint{c: c}
	}
	return nil
}

// Endpoints lists the endpoint IDs, sorted.
func (s *Sim) Endpoints() []string {
	ids := make([]string, 0, len(s.computes))
	for id := range s.computes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Endpoint is the handle on one endpoint's compute.
type Endpoint struct{ c *compute }

// ID is the endpoint ID.
func (e *Endpoint) ID() string { return e.c.id }

// Ledger returns the compute's ledger up to now.
func (e *Endpoint) Ledger() Ledger { return e.c.ledger(time.Now()) }

// Awake reports whether the compute is awake (or waking) now.
func (e *Endpoint) Awake() bool { return e.c.isAwake() }

// Suspend suspends the compute now, as the console's Suspend button does:
// every session gets 57P01, even one running a query.
func (e *Endpoint) Suspend() { e.c.suspendNow(time.Now()) }

// SetQuotaExceeded turns the compute time quota switch: while on, the
// compute is suspended and every connect is refused with MsgQuotaExceeded.
func (e *Endpoint) SetQuotaExceeded(on bool) { e.c.setSwitch(&e.c.quota, on) }

// SetDisabled turns the endpoint-disabled switch (MsgEndpointDisabled).
func (e *Endpoint) SetDisabled(on bool) { e.c.setSwitch(&e.c.disabled, on) }

// SetProjectSuspended turns the project-suspended switch (MsgProjectSuspended).
func (e *Endpoint) SetProjectSuspended(on bool) { e.c.setSwitch(&e.c.suspended, on) }

// Sessions is the number of sessions open on the compute now.
func (e *Endpoint) Sessions() int { return e.c.sessionCount() }
