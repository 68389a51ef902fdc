package proxy

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/pool"
)

// database is one [databases.NAME] entry: its upstreams, the failover
// monitor choosing between them, and its pool of server connections.
//
// Failover (package failover decides, this file acts): new server
// connections go to fo.Active(). Dial results and the deaths of server
// connections in use feed the monitor; nothing else touches a healthy
// primary. The pool's Retire closes, on release, connections to the upstream
// not in use, so after a switch each transaction's next server comes from the
// new upstream and the old one's connections drain as their clients let go
// (a session-mode client keeps its server until it disconnects).
type database struct {
	name     string
	p        *Proxy
	primary  *pgconn.Config
	fallback *pgconn.Config // nil when the entry names no fallback
	// fallbackRO is fallback opened with default_transaction_read_only=on,
	// used while failover.fallback_read_only is on.
	fallbackRO *pgconn.Config
	fo         *failover.Monitor
	pool       *pool.Pool[*backend]
	// rs are the read replicas (replica.go); nil without. replicaOf is set
	// on a replica's own database instead: the primary's.
	rs        *replicaSet
	replicaOf *database
	// lease holds this database's share of its fleet cap (fleet.go); nil
	// without a fleet.
	lease *fleet.Leases

	// params are the ParameterStatus values of the newest server connection,
	// given to clients at login. Guarded by mu.
	mu     sync.Mutex
	params map[string]string
	// backends are the open server connections, for SHOW SERVERS (mu).
	backends map[*backend]struct{}
	// stmtKeys give statement texts their keys on servers (stale.go).
	stmtKeys stmtKeys
	// upstreamID is the primary's host, port and database name: the
	// result cache's generations are per upstream database, so every
	// [databases] name on it invalidates the others' entries.
	upstreamID string
	// stalls are the checks of upstreams owing replies (stall.go).
	stalls stallWatch
	// fbWrites accounts writes served by a writable fallback (fallbackwrites.go).
	fbWrites fallbackWrites
	// listen serves transaction-mode clients' LISTEN (listen.go).
	listen *listener

	// Pre-resolved metric children, so the hot path does no label lookups.
	queryDur [2]prometheus.Observer // by the upstream that answered (failover.Upstream)
	poolWait prometheus.Observer
	queries  prometheus.Counter
	servers  atomic.Int64 // open server connections, for SHOW POOLS and metrics
	// srvStates counts server connections by upstream (0 primary, 1
	// fallback) and state; transitions counts state changes (from, to).
	srvStates   [2][numServerStates]atomic.Int64
	transitions [numServerStates][numServerStates]atomic.Uint64
	xacts       atomic.Uint64
	queryCount  atomic.Uint64
	nextSrvID   atomic.Uint64
	fullLogged  atomic.Int64 // Unix ns of the last "upstream full" line (fleet.go)
}

// upstreamID names the database a connection config reaches.
func upstreamID(pc *pgconn.Config) string {
	return strings.ToLower(pc.Host) + ":" + strconv.Itoa(int(pc.Port)) + "/" + pc.Database
}

// fallbackReadOnlyParam makes writes on the fallback fail with 25006
// (PostgreSQL docs 20.11.1). It is given at connect, so RESET ALL and
// DISCARD ALL keep it.
const fallbackReadOnlyParam = "default_transaction_read_only"

func newDatabase(p *Proxy, name string, dc *config.Database) (*database, error) {
	pc, err := pgconn.ParseConfig(dc.Primary)
	if err != nil {
		return nil, fmt.Errorf("databases.%s.primary: %w", name, err)
	}
	pc.DialFunc, pc.LookupFunc = p.dialServer, p.lookupHost
	db := &database{name: name, p: p, primary: pc, upstreamID: upstreamID(pc)}
	db.listen = newListener(db)
	if dc.Fallback != "" {
		fc, err := pgconn.ParseConfig(dc.Fallback)
		if err != nil {
			return nil, fmt.Errorf("databases.%s.fallback: %w", name, err)
		}
		fc.DialFunc, fc.LookupFunc = p.dialServer, p.lookupHost
		db.fallback = fc
		db.fallbackRO = fc.Copy()
		db.fallbackRO.RuntimeParams[fallbackReadOnlyParam] = "on"
	}
	for _, u := range []failover.Upstream{failover.Primary, failover.Fallback} {
		db.queryDur[u] = p.metrics.QueryDuration.WithLabelValues(name, u.String())
	}
	db.poolWait = p.metrics.PoolWait.WithLabelValues(name)
	db.queries = p.metrics.Queries.WithLabelValues(name, "")
	db.fo = failover.New(p.cfg.Load().Failover, db.fallback != nil, db.probe, p.log.With("database", name), nil)
	db.fo.OnSwitch = db.switched
	context.AfterFunc(p.ctx, db.fo.Close)
	db.setActiveMetric(failover.Primary)
	opts := pool.Options[*backend]{Dial: db.dial, Retire: db.retire}
	if p.fleet != nil && dc.FleetMaxConnections > 0 { // without a cap the pool works as ever
		db.lease = p.fleet.Leases(name, fmt.Sprintf("%s:%d", pc.Host, pc.Port))
		opts.Leases = db.lease
	}
	db.pool = pool.New(opts)
	if len(dc.Replicas) > 0 {
		if db.rs, err = newReplicaSet(p, db, dc); err != nil {
			return nil, err
		}
	}
	db.configure(p.cfg.Load())
	return db, nil
}

// configure applies the live-changeable pool and failover settings.
func (db *database) configure(cfg *config.Config) {
	size := cfg.PoolSize(db.name)
	db.pool.SetLimits(size, cfg.Pool.MaxOverflow, cfg.Pool.WaitTimeout.Duration,
		cfg.Pool.ServerIdleTimeout.Duration, jitter(cfg.Pool.ServerLifetime.Duration))
	db.p.metrics.PoolMax.WithLabelValues(db.name).Set(float64(size + cfg.Pool.MaxOverflow))
	db.fo.Configure(cfg.Failover)
	db.rs.configure(cfg)
}

// switched is the monitor's OnSwitch hook: metrics (the WARN line is the
// monitor's), and a check that the primary left behind still answers
// (stall.go). Retire does the draining.
func (db *database) switched(sw failover.Switch) {
	db.setActiveMetric(sw.To)
	db.p.metrics.Switches.WithLabelValues(db.name).Inc()
	if sw.To == failover.Fallback {
		db.switchedAway(failover.Primary)
	} else {
		db.failedBack()
	}
	db.listen.retire() // it listens on the upstream left behind
}

// setActiveMetric sets pgguard_upstream_active: 1 for u, 0 for the other.
func (db *database) setActiveMetric(u failover.Upstream) {
	m := db.p.metrics.UpstreamActive
	if db.fallback == nil {
		m.WithLabelValues(db.name, failover.Primary.String()).Set(1)
		return
	}
	for _, v := range []failover.Upstream{failover.Primary, failover.Fallback} {
		g := m.WithLabelValues(db.name, v.String())
		if v == u {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

// retire is the pool's Retire hook: a connection to the upstream not in use
// is closed when released or found idle, instead of being reused.
func (db *database) retire(b *backend) bool {
	if db.replicaOf != nil {
		return false
	}
	return b.upstream != db.active().String() || db.overLeases()
}

// upstreamConfig returns the pgconn config for u.
func (db *database) upstreamConfig(u failover.Upstream) *pgconn.Config {
	if u == failover.Fallback && db.fallback != nil {
		if db.p.cfg.Load().Failover.FallbackReadOnly {
			return db.fallbackRO
		}
		return db.fallback
	}
	return db.primary
}

// connect opens and authenticates a connection to u within pool.connect_timeout.
func (db *database) connect(ctx context.Context, u failover.Upstream) (*pgconn.PgConn, error) {
	if d := db.p.cfg.Load().Pool.ConnectTimeout.Duration; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	return pgconn.ConnectConfig(ctx, db.upstreamConfig(u))
}

// probeApp is the application the budget model books failover probes to.
const probeApp = "pgguard (failover probe)"

// probe is the monitor's ProbeFunc: connect and close, never a query. It
// runs only while the primary (or a fallback in use) is considered down.
func (db *database) probe(ctx context.Context, u failover.Upstream) error {
	conn, err := db.connect(ctx, u)
	if err != nil {
		return err
	}
	if u == failover.Primary {
		db.p.Limiter.ObserveConnect(db.computeName(), probeApp, time.Now()) // it woke the compute
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn.Close(ctx)
	return nil
}

// linkedServerDied is called by the pump of a server connection that ended
// while linked to a client. Unless pgguard closed it (the monitor ignores
// net.ErrClosed), that is a failure of its upstream.
func (db *database) linkedServerDied(b *backend, err error) {
	u := failover.Primary
	if b.upstream == failover.Fallback.String() {
		u = failover.Fallback
	}
	db.fo.Lost(u, err)
}

// countState follows a server's change of state (backend.setStateLocked);
// a new connection comes from srvClosed.
func (db *database) countState(b *backend, from, to serverState) {
	u := 0
	if b.upstream == failover.Fallback.String() {
		u = 1
	}
	if from != srvClosed {
		db.srvStates[u][from].Add(-1)
	} else {
		db.servers.Add(1)
		db.mu.Lock()
		if db.backends == nil {
			db.backends = make(map[*backend]struct{})
		}
		db.backends[b] = struct{}{}
		db.mu.Unlock()
	}
	if to != srvClosed {
		db.srvStates[u][to].Add(1)
	} else {
		db.servers.Add(-1)
		db.mu.Lock()
		delete(db.backends, b)
		db.mu.Unlock()
	}
	db.transitions[from][to].Add(1)
}

// openBackends returns the open server connections.
func (db *database) openBackends() []*backend {
	db.mu.Lock()
	defer db.mu.Unlock()
	out := make([]*backend, 0, len(db.backends))
	for b := range db.backends {
		out = append(out, b)
	}
	return out
}

// retryPause spaces the attempts on the primary that one dial makes before
// failure_threshold is reached (see dial).
const retryPause = 100 * time.Millisecond

// jitter spreads server_lifetime by up to -10% so a fleet does not reconnect at once.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - time.Duration(time.Now().UnixNano()%int64(d/10+1))
}

// dial opens a server connection to the active upstream and reports the
// result to the monitor. With a fallback configured, a failed attempt on the
// primary is retried (after retryPause) until failure_threshold attempts
// have failed, and once that switches to the fallback, the fallback is
// dialed at once: the client waiting for this connection sees latency, not
// an error, when the primary goes down. Without a fallback an error is
// returned at once, as before.
func (db *database) dial(ctx context.Context) (*backend, error) {
	threshold := max(db.p.cfg.Load().Failover.FailureThreshold, 1)
	var err error
	for attempt := 1; attempt <= threshold+2; attempt++ {
		u := db.active()
		var b *backend
		if b, err = db.dialUpstream(ctx, u); err == nil {
			db.fo.Success(u)
			return b, nil
		}
		if ctx.Err() != nil { // pgguard is closing, or the client gave up waiting: says nothing of the upstream
			return nil, err
		}
		if full := db.upstreamFull(err); full != nil { // the client queues, the pool retries
			return nil, full
		}
		db.fo.Failure(u, err)
		switch {
		case db.fo.Active() != u:
			db.p.log.Info("dial failed; trying the other upstream", "database", db.name, "upstream", u, "err", err)
		case u == failover.Primary && db.fallback != nil && attempt < threshold:
			t := time.NewTimer(retryPause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, err
			}
		case db.fo.Refusing():
			return nil, fmt.Errorf("%w: %w", failover.ErrRefused, err)
		default:
			return nil, err
		}
	}
	return nil, err
}

// dialUpstream opens, authenticates and hijacks a server connection to u
// (pgconn does TLS with SNI and SCRAM, which is what Neon needs).
func (db *database) dialUpstream(ctx context.Context, u failover.Upstream) (*backend, error) {
	if d := db.p.cfg.Load().Pool.ConnectTimeout.Duration; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	dialed := time.Now() // the compute wakes when the connection arrives, not when it is ready
	conn, err := pgconn.ConnectConfig(ctx, db.upstreamConfig(u))
	if err != nil {
		return nil, err
	}
	if err := conn.SyncConn(ctx); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	hc, err := conn.Hijack()
	if err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	upstream := u.String()
	if db.replicaOf != nil {
		upstream = replicaUpstream
	}
	b := newBackend(db, hc, upstream)
	if u == failover.Primary { // a new session wakes the compute (a failed connect did not)
		b.act = db.p.Limiter.Connected(db.computeName(), "", dialed)
	}
	db.mu.Lock()
	db.params = maps.Clone(hc.ParameterStatuses)
	db.mu.Unlock()
	go b.pump()
	return b, nil
}

// startupParams returns the ParameterStatus values to give a client at login.
// The first login to a database opens a server connection to learn them; a
// client asked for it, so this wakes no compute nobody wanted.
func (db *database) startupParams(ctx context.Context) (map[string]string, error) {
	db.mu.Lock()
	params := db.params
	db.mu.Unlock()
	if params != nil {
		return params, nil
	}
	b, err := db.pool.Acquire(ctx, 0)
	if err != nil {
		return nil, err
	}
	db.pool.Release(b)
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.params, nil
}

// upstreamHost returns host:port of the upstream in use.
func (db *database) upstreamHost() string {
	if db == nil || db.primary == nil {
		return "?"
	}
	return db.hostOf(db.active().String())
}

// hostOf returns host:port of the upstream named "primary" or "fallback"
// (backend.upstream).
func (db *database) hostOf(upstream string) string {
	c := db.primary
	if upstream == failover.Fallback.String() && db.fallback != nil {
		c = db.fallback
	}
	return fmt.Sprintf("%s:%d", c.Host, c.Port)
}

// upstreamName returns "primary" or "fallback": the upstream in use.
func (db *database) upstreamName() string { return db.active().String() }

// active is the upstream new server connections go to: the failover
// monitor's choice, or the fallback while the Neon budget is used up and
// budget.on_exhausted = "fallback".
func (db *database) active() failover.Upstream {
	if db.fallback != nil && db.p.Limiter.Budget().Action() == "fallback" {
		return failover.Fallback
	}
	return db.fo.Active()
}

// fallbackReadOnly reports whether writes are refused because the database
// is served by its fallback with failover.fallback_read_only on, and the
// message to give. The server refuses them anyway (connections to the
// fallback are opened with default_transaction_read_only=on, so it answers
// 25006 "cannot execute INSERT in a read-only transaction"); a protocol-level
// guard can use this to refuse first, with a message saying why.
func (db *database) fallbackReadOnly() (string, bool) {
	if db.fallback == nil || db.active() != failover.Fallback || !db.p.cfg.Load().Failover.FallbackReadOnly {
		return "", false
	}
	return fmt.Sprintf("the primary upstream of database %q is down and its fallback %s serves it read-only "+
		"(failover.fallback_read_only = true): writes are refused until the primary is back", db.name, db.hostOf("fallback")), true
}

// upstreamsServing reports whether some database has an upstream that can
// serve, from recent real traffic (and, while an upstream is down, probes):
// false only when every database's active upstream failed
// failover.failure_threshold times in a row since its last success. That is
// the fallback failing too, or the primary failing with no fallback. With no
// databases it is true.
func (p *Proxy) upstreamsServing() bool {
	dbs := p.databases()
	for _, db := range dbs {
		if db.fo.Serving() {
			return true
		}
	}
	return len(dbs) == 0
}

func (db *database) nameOr() string {
	if db == nil {
		return ""
	}
	return db.name
}
