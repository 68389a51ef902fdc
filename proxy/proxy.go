// Package proxy is pgguard's PostgreSQL wire-protocol front: it accepts client
// sessions, authenticates them, and relays their traffic over pooled server
// connections, in transaction or session pooling mode.
//
// Goroutines: one accept loop; one per client connection (reads the client,
// forwards to its server), except idle clients parked in the parker's epoll
// set (park.go), which wakes them; one pump per server connection (reads the server,
// forwards to the linked client, returns the server to the pool on
// ReadyForQuery 'I' in transaction mode); one janitor.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/querylog"
)

// adminDatabase is the database name of the admin console.
const adminDatabase = "pgguard"

// ConsoleFunc serves an admin console session on an authenticated connection
// after pgguard sent ReadyForQuery; it returns when the session ends.
type ConsoleFunc func(conn net.Conn, user string)

// Proxy is the pooling proxy. Create it with New, then Serve.
type Proxy struct {
	cfg     atomic.Pointer[config.Config]
	log     *slog.Logger
	metrics *metrics.Metrics
	tls     *tls.Config

	// Console, when set, serves sessions on the "pgguard" admin database.
	Console ConsoleFunc
	// QueryLog, when set, receives a record of every query (set before Serve).
	QueryLog *querylog.Logger
	// Limiter, when set, applies [[limits]] and the [budget] guard (set before Serve).
	Limiter *limiter.Limiter
	// Cache, when set, answers the queries [[cache]] rules choose and
	// learns of every write (set before Serve).
	Cache *cache.Cache
	// LookupHost, when set, resolves upstream host names instead of DNS
	// (set before Serve): tests and `pgguard demo -neon` point Neon-style
	// names (ep-x.us-east-2.aws.neon.tech) at a simulator, keeping the name
	// for TLS SNI and certificate checks.
	LookupHost func(ctx context.Context, host string) ([]string, error)

	// fleet, when set (WithFleet), holds the leases of fleet caps.
	fleet *fleet.Fleet

	ctx    context.Context // ends on Close: aborts waits and dials
	cancel context.CancelFunc

	mu       sync.Mutex
	dbs      map[string]*database
	clients  map[uint32]*client
	nextID   uint32
	ln       net.Listener
	drained  chan struct{} // closed when the last client leaves during a drain
	draining atomic.Bool
	paused   atomic.Bool
	roGen    atomic.Uint64 // bumped when the read-only switch flips: servers re-sync
	resumed  chan struct{} // closed by Resume; nil when not paused
	accepted atomic.Uint64 // connections accepted, for memRelease
	parks    atomic.Uint64 // clients parked, for memRelease
	gone     atomic.Uint64 // clients gone, for memRelease
	parker   parker

	bytesIn, bytesOut prometheus.Counter
	started           time.Time
	routes            proxyRoutes // read replica routing (replica.go)

	// cancelKeys indexes clients by BackendKeyData (backendkey.go); guarded by mu.
	cancelKeys map[uint64]*client
}

// New builds a proxy for cfg. Nothing connects upstream until a client asks.
func New(cfg *config.Config, log *slog.Logger, m *metrics.Metrics, opts ...Option) (*Proxy, error) {
	p := &Proxy{
		log:      log,
		metrics:  m,
		dbs:      make(map[string]*database),
		clients:  make(map[uint32]*client),
		bytesIn:  m.Bytes.WithLabelValues("client_to_server"),
		bytesOut: m.Bytes.WithLabelValues("server_to_client"),
		started:  time.Now(),
	}
	for _, o := range opts {
		o(p)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.parker.p = p
	p.cfg.Store(cfg)
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls_cert/tls_key: %w", err)
		}
		p.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	for name, dc := range cfg.Databases {
		db, err := newDatabase(p, name, dc)
		if err != nil {
			return nil, err
		}
		p.dbs[name] = db
	}
	p.setReadOnlyMetric(cfg.ReadOnly)
	m.Registry.MustRegister(&stateCollector{p: p})
	m.Registry.MustRegister(listenCollector{p: p})
	return p, nil
}

// Serve accepts clients on ln until Shutdown or Close.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.janitor()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if p.draining.Load() || p.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go p.handle(conn)
	}
}

// handle runs login on its own goroutine, then serves the session on a fresh
// one, so an idle session keeps only a minimal stack.
func (p *Proxy) handle(conn net.Conn) {
	p.accepted.Add(1)
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(time.Minute)
	}
	c := p.login(conn)
	if c == nil {
		conn.Close()
		return
	}
	if c.db == nil {
		go p.serveConsole(c)
		return
	}
	go c.serve()
}

func (p *Proxy) serveConsole(c *client) {
	defer p.forget(c)
	defer c.conn.Close()
	if p.Console == nil {
		writeFatal(c.conn, fatalf(codeFeatureUnsupported, "the admin console is not enabled"))
		return
	}
	p.Console(c.conn, c.user)
}

// register gives c its ID and BackendKeyData and makes it visible.
func (p *Proxy) register(c *client) {
	p.mu.Lock()
	for {
		p.nextID++
		if p.nextID != 0 && p.clients[p.nextID] == nil {
			break
		}
	}
	c.id = p.nextID
	p.clients[c.id] = c
	p.keyClientLocked(c, c.id)
	p.mu.Unlock()
}

// forget removes a client that has gone.
func (p *Proxy) forget(c *client) {
	p.mu.Lock()
	if p.clients[c.id] == c {
		delete(p.clients, c.id)
		p.unkeyClientLocked(c)
		p.gone.Add(1)
	}
	if len(p.clients) == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
	p.mu.Unlock()
}

func (p *Proxy) clientCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.clients)
}

func (p *Proxy) client(id uint32) *client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clients[id]
}

func (p *Proxy) database(name string) *database {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dbs[name]
}

func (p *Proxy) databases() []*database {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*database, 0, len(p.dbs))
	for _, db := range p.dbs {
		out = append(out, db)
	}
	return out
}

func (p *Proxy) snapshotClients() []*client {
	return p.appendClients(nil)
}

// appendClients appends the clients to buf, for callers that reuse one.
func (p *Proxy) appendClients(buf []*client) []*client {
	p.mu.Lock()
	defer p.mu.Unlock()
	buf = slices.Grow(buf, len(p.clients))
	for _, c := range p.clients {
		buf = append(buf, c)
	}
	return buf
}

// Config returns the configuration in force.
func (p *Proxy) Config() *config.Config { return p.cfg.Load() }

// Reload applies a new configuration without dropping connections: pool
// sizes and timeouts, users, read-only and new databases take effect. Changes
// that need a restart are returned so the caller can report them.
func (p *Proxy) Reload(cfg *config.Config) (needsRestart []string, err error) {
	old := p.cfg.Load()
	_, needsRestart = config.Diff(old, cfg)
	p.cfg.Store(cfg)
	for name, dc := range cfg.Databases {
		if db := p.database(name); db != nil {
			db.configure(cfg)
			continue
		}
		db, err := newDatabase(p, name, dc)
		if err != nil {
			return needsRestart, err
		}
		p.mu.Lock()
		p.dbs[name] = db
		p.mu.Unlock()
	}
	if old.ReadOnly != cfg.ReadOnly {
		p.roGen.Add(1)
		p.setReadOnlyMetric(cfg.ReadOnly)
		p.log.Warn("read-only switch changed by reload", "read_only", cfg.ReadOnly)
	}
	return needsRestart, nil
}

func (p *Proxy) setReadOnlyMetric(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	p.metrics.ReadOnly.Set(v)
}

// appLabel bounds the application label's cardinality.
func appLabel(app string) string {
	if len(app) > 64 {
		return app[:64]
	}
	return app
}

// Shutdown drains: it stops accepting, closes idle sessions with 57P01, lets
// running transactions finish until ctx ends, then closes the rest.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.draining.Store(true)
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
	}
	drained := make(chan struct{})
	if len(p.clients) == 0 {
		close(drained)
	} else {
		p.drained = drained
	}
	p.mu.Unlock()
	p.closeIdleForShutdown()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-drained:
			p.Close()
			return nil
		case <-t.C:
			p.closeIdleForShutdown()
		case <-ctx.Done():
			// At once: each may wait up to finalWriteTimeout on a client that does not read.
			var wg sync.WaitGroup
			for _, c := range p.snapshotClients() {
				wg.Go(func() {
					c.closeWith(fatalf(codeAdminShutdown, "terminating connection: pgguard is shutting down and shutdown_timeout passed"))
				})
			}
			wg.Wait()
			p.Close()
			return ctx.Err()
		}
	}
}

// closeIdleForShutdown closes the sessions that hold no transaction.
func (p *Proxy) closeIdleForShutdown() {
	for _, c := range p.snapshotClients() {
		if c.idleForShutdown() {
			p.metrics.ClientsReaped.WithLabelValues("shutdown").Inc()
			c.closeWith(fatalf(codeAdminShutdown, "terminating connection: pgguard is shutting down"))
		}
	}
}

// idleForShutdown reports whether c is between transactions.
func (c *client) idleForShutdown() bool {
	switch c.currentState() {
	case stateIdle, stateLogin:
		return true
	case stateActive:
		b := c.server.Load()
		if b == nil {
			return true
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.client == c && b.queue.len() == 0 && !b.open && b.txStatus == 'I'
	}
	return false
}

// Close stops everything at once: listener, clients, pools.
func (p *Proxy) Close() {
	p.draining.Store(true)
	p.cancel()
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
	}
	p.mu.Unlock()
	for _, c := range p.snapshotClients() {
		c.resume()
		c.conn.Close()
	}
	p.parker.stop()
	for _, db := range p.databases() {
		db.listen.close()
		db.pool.Close()
		db.eachReplica(func(r *database) { r.pool.Close() })
	}
}

// stateCollector reports client and server connection gauges at scrape time,
// so the hot path never touches a gauge.
type stateCollector struct{ p *Proxy }

var (
	clientsDesc     = prometheus.NewDesc("pgguard_client_connections", "Client connections by state (login, idle, waiting, active).", []string{"state"}, nil)
	serversDesc     = prometheus.NewDesc("pgguard_server_connections", "Server connections by database, upstream and state (opening, idle, active, syncing, resetting, cancelling, closing, listening).", []string{"database", "upstream", "state"}, nil)
	transitionsDesc = prometheus.NewDesc("pgguard_server_state_transitions_total", "Server connection state changes by database, from and to (from \"new\": a connection opened).", []string{"database", "from", "to"}, nil)
)

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clientsDesc
	ch <- serversDesc
	ch <- transitionsDesc
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	var counts [len(stateNames)]int
	for _, c := range s.p.snapshotClients() {
		counts[c.currentState()]++
	}
	for i, n := range counts {
		ch <- prometheus.MustNewConstMetric(clientsDesc, prometheus.GaugeValue, float64(n), stateNames[i])
	}
	for _, db := range s.p.databases() {
		st := db.pool.Stats()
		ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, float64(st.Opening), db.name, db.upstreamName(), "opening")
		ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, float64(st.Closing), db.name, db.upstreamName(), "closing")
		if upstream, ok := db.listen.connected(); ok { // the listening connection (listen.go), outside the pool
			ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, 1, db.name, upstream, "listening")
		}
		for u, upstream := range []string{"primary", "fallback"} {
			if u == 1 && db.fallback == nil {
				continue
			}
			for st := srvIdle; st < srvClosed; st++ {
				ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, float64(db.srvStates[u][st].Load()), db.name, upstream, st.String())
			}
		}
		db.collectReplicas(ch)
		for from := range db.transitions {
			for to := range db.transitions[from] {
				n := db.transitions[from][to].Load()
				if n == 0 {
					continue
				}
				fromName := serverState(from).String()
				if serverState(from) == srvClosed {
					fromName = "new"
				}
				ch <- prometheus.MustNewConstMetric(transitionsDesc, prometheus.CounterValue, float64(n), db.name, fromName, serverState(to).String())
			}
		}
	}
}
