package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/internal/redislink"
	"github.com/pgguard/pgguard/pool"
	"github.com/pgguard/pgguard/route"
)

// Read replicas (package route decides, this file acts).
//
// Each replica is a database of its own: its pool, dial (TLS and SNI by
// pgconn, as for the primary), failover monitor (its health) and server
// states, with replicaOf pointing at the primary's database. In
// transaction mode, when a client needs a server, acquireFor classifies
// what it sends and asks route.Decide for the primary or a replica.
//
// Read-your-writes: a transaction that may have written on the primary
// ends with pgguard asking the same server for its WAL write position
// before the server goes back to the pool, the client's ReadyForQuery held
// back until the answer (one round trip, plus a Redis write for the user
// and application scopes); a read of the same scope goes to a replica only
// when the replica's replay position, measured on the connection the read
// will use, is at least that far.

// replicaSet is a primary database's replicas and the router's knowledge.
type replicaSet struct {
	list      []*replica
	positions *route.Positions
	next      atomic.Uint32 // round robin
	// primaryLSN is the newest primary position learned (for lag).
	primaryLSN atomic.Uint64
	m          replicaMetrics
}

// replica is one read replica.
type replica struct {
	db          *database
	replayed    atomic.Uint64 // newest replay position measured
	received    atomic.Uint64 // newest receive position measured
	measured    atomic.Int64  // unix nanos of that measurement
	lagging     atomic.Bool   // the last measurement was past replica.max_lag_bytes
	lag         atomic.Int64  // bytes behind at the last measurement
	lagMillis   atomic.Int64  // age of its last replayed commit then, while behind
	behindSince atomic.Int64  // unix nanos of the first measurement that found WAL left to replay, since caught up
}

// replicaUpstream is the upstream label of replica connections.
const replicaUpstream = "replica"

// routeClassifier classifies client SQL for routing; bounded cache.
var routeClassifier = route.NewClassifier(16384)

// positionsTTL is how long a scope's write position is remembered.
const positionsTTL = 5 * time.Minute

// remeasureAfter is how old a replica's measured position may get before a
// read routed to it measures it again.
const remeasureAfter = time.Second

func newReplicaSet(p *Proxy, primary *database, dc *config.Database) (*replicaSet, error) {
	rs := &replicaSet{m: newReplicaMetrics(p, primary.name)}
	rs.positions = &route.Positions{TTL: positionsTTL, Link: p.routes.link}
	for i, u := range dc.Replicas {
		pc, err := pgconn.ParseConfig(u)
		if err != nil {
			return nil, fmt.Errorf("databases.%s.replicas[%d]: %w", primary.name, i, err)
		}
		pc.DialFunc = p.dialServer
		db := &database{name: primary.name, p: p, primary: pc, replicaOf: primary}
		d := p.metrics.QueryDuration.WithLabelValues(primary.name, replicaUpstream)
		db.queryDur = [2]prometheus.Observer{d, d} // its backends count as failover.Primary of their own database
		db.poolWait = p.metrics.PoolWait.WithLabelValues(primary.name)
		db.queries = p.metrics.Queries.WithLabelValues(primary.name, "")
		db.fo = failover.New(p.cfg.Load().Failover, false, db.probe, p.log.With("database", primary.name, "replica", i), nil)
		context.AfterFunc(p.ctx, db.fo.Close)
		db.pool = pool.New(pool.Options[*backend]{Dial: db.dial, Retire: db.retire})
		rs.list = append(rs.list, &replica{db: db})
	}
	rs.configure(p.cfg.Load())
	return rs, nil
}

// configure applies the live-changeable replica settings.
func (rs *replicaSet) configure(cfg *config.Config) {
	if rs == nil {
		return
	}
	pc := cfg.Pool
	for _, r := range rs.list {
		r.db.pool.SetLimits(cfg.Replica.PoolSize, 0, max(cfg.Replica.RYWWait.Duration, time.Second),
			pc.ServerIdleTimeout.Duration, jitter(pc.ServerLifetime.Duration))
		r.db.fo.Configure(cfg.Failover)
	}
}

// each calls f on the database's replicas' databases.
func (db *database) eachReplica(f func(*database)) {
	if db.rs == nil {
		return
	}
	for _, r := range db.rs.list {
		f(r.db)
	}
}

// classifySend judges the messages of a send (p, whole messages unless
// lead or open say otherwise) for routing and read-your-writes.
func (c *client) classifySend(p []byte, lead int, open bool) route.Chunk {
	var ch route.Chunk
	if lead > 0 || open || c.skip > 0 {
		ch.Unsure()
		return ch
	}
	ro := c.sessionReadOnly()
	parsed := false
	for pos := 0; len(p)-pos >= 5; {
		typ := p[pos]
		end := pos + 1 + int(binary.BigEndian.Uint32(p[pos+1:]))
		if end > len(p) {
			ch.Unsure()
			return ch
		}
		body := p[pos+5 : end]
		pos = end
		switch typ {
		case 'Q':
			ch.Add(routeClassifier.ClassifyBytes(queryText(body)), ro)
		case 'P':
			_, rest, ok := cbytes(body)
			if !ok {
				ch.Unsure()
				continue
			}
			ch.Add(routeClassifier.ClassifyBytes(queryText(rest)), ro)
			parsed = true
		case 'B':
			name := boundStmt(body)
			var text []byte
			switch {
			case len(name) > 0:
				if st := c.stmt(name); st != nil {
					text = queryText(st.parse)
				}
			case parsed:
				continue // judged at its Parse
			case c.unnamed != nil:
				text = queryText(c.unnamed)
			}
			if text == nil {
				ch.Unsure()
				continue
			}
			ch.Add(routeClassifier.ClassifyBytes(text), ro)
		case 'E', 'D', 'S', 'H', 'C':
		default: // FunctionCall, COPY data: not judged
			ch.Unsure()
		}
	}
	return ch
}

// sessionReadOnly reports whether the client set default_transaction_read_only
// on: its want holds a deparsed "SET default_transaction_read_only TO on"
// or a "set_config('default_transaction_read_only', 'on', false)".
func (c *client) sessionReadOnly() bool {
	sql, ok := c.want.custom.get("default_transaction_read_only")
	if !ok {
		return false
	}
	return truthySetting(sql, "default_transaction_read_only")
}

// truthySetting reads the value following name in a SET or set_config text
// as PostgreSQL's parse_bool would: true, yes, on, 1 (or a prefix of true or yes).
func truthySetting(sql, name string) bool {
	l := strings.ToLower(sql)
	i := strings.LastIndex(l, name)
	if i < 0 {
		return false
	}
	rest := strings.TrimLeft(l[i+len(name):], " '\",=\t\n")
	rest = strings.TrimLeft(strings.TrimPrefix(rest, "to "), " '\"")
	end := strings.IndexFunc(rest, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') })
	if end >= 0 {
		rest = rest[:end]
	}
	return rest != "" && (strings.HasPrefix("true", rest) || strings.HasPrefix("yes", rest)) || rest == "on" || rest == "1"
}

// routedToReplicas reports whether c's read-only work goes to replicas: the
// first [[routes]] rule matching it says, else the database's replica_reads.
func (c *client) routedToReplicas(cfg *config.Config) bool {
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		if routeMatches(r, c) {
			return r.To == "replica"
		}
	}
	dc := cfg.Databases[c.db.name]
	return dc != nil && dc.ReplicaReads == "read_only"
}

func routeMatches(r *config.Route, c *client) bool {
	if r.Database != "" && r.Database != c.db.name || r.User != "" && r.User != c.user ||
		r.ApplicationName != "" && r.ApplicationName != c.app {
		return false
	}
	if r.ClientAddr == "" {
		return true
	}
	ap, err := netip.ParseAddrPort(c.addr)
	if err != nil {
		return false
	}
	if pfx, err := netip.ParsePrefix(r.ClientAddr); err == nil {
		return pfx.Contains(ap.Addr().Unmap())
	}
	a, err := netip.ParseAddr(r.ClientAddr)
	return err == nil && a == ap.Addr().Unmap()
}

// rywScope is the read-your-writes scope key of c, "" when off.
func (c *client) rywScope(cfg *config.Config) string {
	switch cfg.Replica.RYWScope {
	case "session":
		return "s:" + strconv.FormatUint(uint64(c.id), 10) + ":" + strconv.FormatInt(c.connectedAt, 36)
	case "user":
		return "u:" + c.db.name + ":" + c.user
	case "application":
		return "a:" + c.db.name + ":" + c.app
	}
	return ""
}

// acquireFor takes a server for a send that starts a transaction (or a
// statement outside one) in transaction mode: from a replica when
// route.Decide says so and the replica serves, else from the primary. A
// replica that fails, lags or has not replayed the client's writes in time
// costs the client latency, never an error.
func (c *client) acquireFor(ch route.Chunk, p []byte, lead int, open, slow bool) (*backend, error) {
	rs := c.db.rs
	if rs == nil || c.pooling != poolTransaction {
		return c.acquire(p, lead, open, slow)
	}
	cfg := c.p.cfg.Load()
	again := c.toPrimary // a replica failed or refused this work: the primary runs it
	c.toPrimary = false
	in := route.Input{ReadOnly: ch.ReplicaEligible() && c.routedToReplicas(cfg) && !again, Now: time.Now(),
		Remeasure: remeasureAfter, Seed: rs.next.Add(1)}
	scope := ""
	if in.ReadOnly {
		if scope = c.rywScope(cfg); scope != "" {
			in.Need, in.Pending = rs.positions.Need(scope)
		}
		in.Replicas = make([]route.ReplicaView, len(rs.list))
		for i, r := range rs.list {
			in.Replicas[i] = r.view()
		}
	}
	d := route.Decide(in)
	if d.Replica >= 0 {
		r := rs.list[d.Replica]
		b, why := c.acquireReplica(r, d, in.Need, cfg)
		if b != nil {
			rs.m.routed(replicaUpstream, "replica")
			return b, nil
		}
		d.Why = why
	}
	if in.ReadOnly {
		rs.m.routed("primary", d.Why)
	}
	if ch.MayWrite() {
		p = nil // no hand-over: the send marks the server as written first
	}
	return c.acquire(p, lead, open, slow)
}

// leaveReplica looks at the replica server c may still be linked to when
// it sends: the pump forwards a unit's ReadyForQuery before it lets the
// server go, so a quick client can find it still linked. If the unit there
// is over and what c sends now is not the replica's to run, the server goes
// back; if it is, c keeps it and this send starts a unit (fresh for
// rerun.go). Inside a transaction the client stays (a read-only
// transaction refuses writes on either server).
func (c *client) leaveReplica(work route.Chunk) (unitStart bool) {
	b := c.server.Load()
	if b == nil || b.db.replicaOf == nil {
		return false
	}
	b.mu.Lock() // send waited for c's last request to settle (awaitSettled)
	if b.client != c || b.queue.len() > 0 || b.open || b.txStatus != 'I' {
		b.mu.Unlock()
		return false
	}
	if work.ReplicaEligible() {
		b.mu.Unlock()
		return true
	}
	b.unlinkLocked()
	b.mu.Unlock()
	b.enter(srvIdle)
	return false
}

// computeName is what the budget model books db's activity to: the
// database (its primary's compute) for a primary, and for a replica its
// host:port, a compute of its own: Neon bills each replica's awake time.
func (db *database) computeName() string {
	if db.replicaOf == nil {
		return db.name
	}
	return fmt.Sprintf("%s:%d", db.primary.Host, db.primary.Port)
}

// view is what Decide needs of r.
func (r *replica) view() route.ReplicaView {
	v := route.ReplicaView{Up: r.db.fo.Serving(), Lagging: r.lagging.Load(), Replayed: route.LSN(r.replayed.Load())}
	if t := r.measured.Load(); t != 0 {
		v.Measured = time.Unix(0, t)
	}
	return v
}

// acquireReplica links a server of replica r to c, measuring first when d
// says to: it waits (up to replica.ryw_wait) for the replica to replay
// need. It returns nil and why the primary serves instead.
func (c *client) acquireReplica(r *replica, d route.Decision, need route.LSN, cfg *config.Config) (*backend, string) {
	rs := c.db.rs
	if err := c.p.waitResumed(); err != nil {
		return nil, "paused"
	}
	start := time.Now()
	c.setState(stateWaiting)
	defer c.setState(stateIdle)
	if err := c.acquireSlot(); err != nil {
		return nil, "limits"
	}
	b, err := r.db.pool.Acquire(c.p.ctx, int(c.priority))
	if err != nil {
		c.lim.ReleaseConn()
		c.p.log.Debug("replica unavailable; the primary serves", "database", c.db.name, "replica", r.db.hostOf(replicaUpstream), "err", err)
		return nil, "replicas_down"
	}
	if !b.link(c) {
		b.enter(srvClosed)
		c.lim.ReleaseConn()
		return nil, "replicas_down"
	}
	if !d.Check {
		c.linked(start)
		return b, ""
	}
	wait := cfg.Replica.RYWWait.Duration
	pause := time.Millisecond
	waited := false
	for {
		ok := b.measureReplay(c, r, cfg)
		switch {
		case !ok:
			c.giveBackOrClose(b)
			return nil, "replicas_down"
		case r.lagging.Load():
			c.giveBack(b)
			return nil, "replicas_lagging"
		case route.LSN(r.replayed.Load()) >= need:
			if waited {
				rs.m.rywWaits.Inc()
				rs.m.rywWait.Observe(time.Since(start).Seconds())
			}
			c.linked(start)
			return b, ""
		}
		if time.Since(start)+pause > wait {
			c.giveBack(b)
			rs.m.rywFallbacks.Inc()
			return nil, "ryw_timeout"
		}
		waited = true
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// giveBackOrClose returns b to its pool, or closes it when it failed.
func (c *client) giveBackOrClose(b *backend) {
	b.mu.Lock()
	if b.client == c {
		b.unlinkLocked()
	} else {
		c.lim.ReleaseConn()
	}
	bad := b.dead.Load() || b.queue.len() > 0
	b.mu.Unlock()
	if bad {
		b.enter(srvClosed)
		return
	}
	b.enter(srvIdle)
}

// replaySQL measures a replica: how far it replayed and received, and how
// many milliseconds old its last replayed commit is while it has received
// WAL it has not replayed (0 when it is caught up: an idle primary is no
// lag). NULLs (a server not in recovery) read as 0.
const replaySQL = "SELECT pg_catalog.pg_last_wal_replay_lsn(), pg_catalog.pg_last_wal_receive_lsn(), " +
	"CASE WHEN pg_catalog.pg_last_wal_receive_lsn() > pg_catalog.pg_last_wal_replay_lsn() " +
	"THEN (extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) * 1000)::bigint ELSE 0 END"

// measureReplay asks replica server b, linked to c, how far it has
// replayed, and records it in r. It reports false when b failed.
func (b *backend) measureReplay(c *client, r *replica, cfg *config.Config) bool {
	pr := &probe{fill: cacheFill{max: 4096}}
	b.mu.Lock()
	if b.client != c {
		b.mu.Unlock()
		return false
	}
	b.queue.push(request{kind: reqProbe, probe: pr})
	b.unnamedOwner = nil // a Query destroys the unnamed statement
	b.mu.Unlock()
	if _, err := b.out.Write(appendQuery(nil, replaySQL)); err != nil {
		return false
	}
	b.awaitAnswered(c)
	vals := pr.values()
	if len(vals) != 3 {
		return false // the query failed
	}
	replay, _ := route.ParseLSN(vals[0])
	recv, _ := route.ParseLSN(vals[1])
	behind, err := strconv.ParseInt(vals[2], 10, 64)
	if replay == 0 {
		return false // not a standby
	}
	now := time.Now()
	switch {
	case recv <= replay:
		r.behindSince.Store(0)
	case err != nil: // behind, and no commit replayed since it started: behind since it was first found so
		r.behindSince.CompareAndSwap(0, now.UnixNano())
		behind = now.Sub(time.Unix(0, r.behindSince.Load())).Milliseconds()
	}
	rs := b.db.replicaOf.rs
	for old := r.replayed.Load(); uint64(replay) > old && !r.replayed.CompareAndSwap(old, uint64(replay)); old = r.replayed.Load() {
	}
	r.received.Store(uint64(recv))
	head := max(route.LSN(rs.primaryLSN.Load()), recv)
	lag := int64(0)
	if head > replay {
		lag = int64(head - replay)
	}
	r.lag.Store(lag)
	r.lagMillis.Store(behind)
	r.lagging.Store(cfg.Replica.MaxLagBytes > 0 && lag > cfg.Replica.MaxLagBytes ||
		cfg.Replica.MaxLag.Duration > 0 && time.Duration(behind)*time.Millisecond > cfg.Replica.MaxLag.Duration)
	r.measured.Store(now.UnixNano())
	return true
}

// probe is pgguard's own query whose one row it reads (reqProbe): a
// replica's replay position, or the primary's position after a commit.
// Written by the pump (fill), read after its ReadyForQuery.
type probe struct {
	fill cacheFill
	// For a commit's position: the client's ReadyForQuery, held until the
	// position is known, the client and the scope to record it for.
	held   []byte
	client *client
	scope  string
	// linked: the client keeps its server (session mode, pinned), which
	// the probe leaves as it was, its unnamed statement included.
	linked bool
}

// values reads the probe's row as text ("" for NULL).
func (pr *probe) values() []string {
	buf := pr.fill.buf
	if pr.fill.bad {
		return nil
	}
	for len(buf) >= 5 {
		n := 1 + int(binary.BigEndian.Uint32(buf[1:]))
		if n > len(buf) {
			return nil
		}
		msg := buf[:n]
		buf = buf[n:]
		if msg[0] != 'D' || len(msg) < 7 {
			continue
		}
		cols := int(binary.BigEndian.Uint16(msg[5:]))
		body := msg[7:]
		out := make([]string, 0, cols)
		for i := 0; i < cols && len(body) >= 4; i++ {
			l := int32(binary.BigEndian.Uint32(body))
			body = body[4:]
			if l < 0 || int(l) > len(body) {
				out = append(out, "")
				continue
			}
			out = append(out, string(body[:l]))
			body = body[l:]
		}
		return out
	}
	return nil
}

// positionSQL is the primary's position after a commit: the WAL write
// position, past the commit record once the commit's reply came with
// synchronous_commit on (Neon's default). The insert position would be
// safe with it off too, but on an idle primary it can point past the last
// record (a page header), which no replica replays until more WAL comes.
const positionSQL = "SELECT pg_catalog.pg_current_wal_lsn()"

// The position query as sent: a Query for a server going back to the pool;
// for one its client keeps, a named statement closed in the same batch,
// since a Query would destroy the client's unnamed statement.
var (
	positionQuery = appendQuery(nil, positionSQL)
	positionKept  = func() []byte {
		const name = "pgguard.position"
		var b []byte
		for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Name: name, Query: positionSQL},
			&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'S', Name: name}, &pgproto3.Sync{}} {
			b, _ = m.Encode(b)
		}
		return b
	}()
)

// wantsPosition reports whether the unit of work ending on b may have
// written and read-your-writes wants its commit position (mu held).
func (b *backend) wantsPosition() bool {
	return b.db.rs != nil && b.wrote.Load() && b.db.p.cfg.Load().Replica.RYWScope != "off"
}

// holdForPosition is called by the pump (mu held) at the ReadyForQuery that
// ends a client's unit of work on the primary, when wantsPosition said so:
// it queues the position query, which keeps the client's ReadyForQuery
// (msg) until its answer, and reports whether it did. A transaction-mode
// client's server was unlinked and goes back to the pool after, the pump
// writing positionQuery; one the client keeps (linked: session mode,
// pinned) stays as it was, and the query is written here, under mu, so
// that what the client sends next follows it on the wire as in the queue.
func (b *backend) holdForPosition(c *client, msg []byte, linked bool) bool {
	rs := b.db.rs
	if rs == nil || !b.wrote.Load() {
		return false
	}
	b.wrote.Store(false)
	scope := c.rywScope(b.db.p.cfg.Load())
	if scope == "" {
		return false
	}
	rs.positions.Begin(scope)
	b.queue.push(request{kind: reqProbe, probe: &probe{fill: cacheFill{max: 4096}, held: append([]byte(nil), msg...), client: c, scope: scope, linked: linked}})
	if linked {
		b.out.Write(positionKept) // a failure ends the connection: died gives c its ReadyForQuery
		return true
	}
	b.unnamedOwner = nil
	b.setStateLocked(srvResetting)
	return true
}

// positionLearned is called by the pump after the position query's
// ReadyForQuery (mu not held): it records the position and returns the
// client and the ReadyForQuery to give it.
func (b *backend) positionLearned(pr *probe) {
	rs := b.db.rs
	var lsn route.LSN
	if v := pr.values(); len(v) == 1 {
		lsn, _ = route.ParseLSN(v[0])
	}
	for old := rs.primaryLSN.Load(); uint64(lsn) > old && !rs.primaryLSN.CompareAndSwap(old, uint64(lsn)); old = rs.primaryLSN.Load() {
	}
	rs.positions.Learned(pr.scope, lsn)
	rs.m.positions.Inc()
}

// releaseHeld gives clients their held ReadyForQuery when b died before the
// positions were learned (mu held): the commits happened; their positions
// are unknown, so the scopes read from the primary for a while.
func (b *backend) releaseHeld() {
	for _, r := range b.queue.outstanding() {
		if pr := r.probe; pr != nil && pr.held != nil {
			b.db.rs.positions.Learned(pr.scope, 0)
			pr.client.write(pr.held)
		}
	}
}

// replicaMetrics are a database's routing metrics.
type replicaMetrics struct {
	decisions    *prometheus.CounterVec
	rywWaits     prometheus.Counter
	rywFallbacks prometheus.Counter
	rywWait      prometheus.Observer
	positions    prometheus.Counter
	reruns       prometheus.Counter
	db           string
}

func (m *replicaMetrics) routed(to, why string) { m.decisions.WithLabelValues(m.db, to, why).Inc() }

func newReplicaMetrics(p *Proxy, db string) replicaMetrics {
	rm := p.routeMetrics()
	return replicaMetrics{
		decisions:    rm.decisions,
		rywWaits:     rm.rywWaits.WithLabelValues(db),
		rywFallbacks: rm.rywFallbacks.WithLabelValues(db),
		rywWait:      rm.rywWait.WithLabelValues(db),
		positions:    rm.positions.WithLabelValues(db),
		reruns:       rm.reruns.WithLabelValues(db),
		db:           db,
	}
}

// proxyRoutes is the proxy's routing state shared by its databases: metric
// vectors and the Redis link of read-your-writes positions, made once.
type proxyRoutes struct {
	once sync.Once
	m    *routeMetricVecs
	link *redislink.Link
	stop chan struct{}
}

type routeMetricVecs struct {
	decisions    *prometheus.CounterVec
	rywWaits     *prometheus.CounterVec
	rywFallbacks *prometheus.CounterVec
	rywWait      *prometheus.HistogramVec
	positions    *prometheus.CounterVec
	reruns       *prometheus.CounterVec
	redisUp      prometheus.Gauge
}

// routeMetrics makes the routing metrics and, with limiter.redis_url set
// and a shared read-your-writes scope, the positions' Redis link.
func (p *Proxy) routeMetrics() *routeMetricVecs {
	r := &p.routes
	r.once.Do(func() {
		m := &routeMetricVecs{
			decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_route_decisions_total",
				Help: "Read-only work of routed clients by where it went (route: primary or replica) and why."}, []string{"database", "route", "reason"}),
			rywWaits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_ryw_waits_total",
				Help: "Reads that waited for a replica to replay a write of their read-your-writes scope, then ran on it."}, []string{"database"}),
			rywFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_ryw_fallbacks_total",
				Help: "Reads sent to the primary because no replica replayed a write of their scope within replica.ryw_wait."}, []string{"database"}),
			rywWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgguard_ryw_wait_seconds",
				Help: "How long reads waited for a replica to replay their scope's writes.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 12)}, []string{"database"}),
			positions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_ryw_positions_total",
				Help: "Commit positions learned on the primary after writing transactions (one round trip each)."}, []string{"database"}),
			reruns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_replica_reruns_total",
				Help: "Work sent to a replica that failed before answering, run again (on the primary, or another replica)."}, []string{"database"}),
			redisUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgguard_ryw_redis_up",
				Help: "1 while read-your-writes positions are shared through Redis."}),
		}
		p.metrics.Registry.MustRegister(m.decisions, m.rywWaits, m.rywFallbacks, m.rywWait, m.positions, m.reruns, m.redisUp)
		r.m = m
		cfg := p.cfg.Load()
		if s := cfg.Replica.RYWScope; cfg.Limiter.RedisURL == "" || s != "user" && s != "application" {
			return
		}
		r.stop = make(chan struct{})
		l, err := redislink.New(cfg.Limiter.RedisURL, redislink.Options{
			Key: "limiter.redis_url", Timeout: 100 * time.Millisecond, RetryMin: 250 * time.Millisecond, RetryMax: 10 * time.Second,
			Log: p.log, Gauge: m.redisUp, Stop: r.stop,
			DownMsg: "redis unreachable: read-your-writes holds per instance until it returns",
			BackMsg: "redis reachable again: read-your-writes holds fleet-wide",
		})
		if err != nil {
			p.log.Warn("read-your-writes positions stay per instance", "err", err)
			return
		}
		l.Start()
		r.link = l
		context.AfterFunc(p.ctx, func() { close(r.stop); l.Close() })
	})
	return r.m
}

// collectReplicas adds the replicas' server connections (upstream
// "replica"), lag and health to a scrape.
func (db *database) collectReplicas(ch chan<- prometheus.Metric) {
	if db.rs == nil {
		return
	}
	var states [numServerStates]int64
	for i, r := range db.rs.list {
		for st := srvIdle; st < srvClosed; st++ {
			states[st] += r.db.srvStates[0][st].Load()
		}
		id := strconv.Itoa(i)
		ch <- prometheus.MustNewConstMetric(replicaLagDesc, prometheus.GaugeValue, float64(r.lag.Load()), db.name, id)
		ch <- prometheus.MustNewConstMetric(replicaLagSecondsDesc, prometheus.GaugeValue, float64(r.lagMillis.Load())/1000, db.name, id)
		up := 0.0
		if r.db.fo.Serving() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(replicaUpDesc, prometheus.GaugeValue, up, db.name, id)
	}
	for st := srvIdle; st < srvClosed; st++ {
		ch <- prometheus.MustNewConstMetric(serversDesc, prometheus.GaugeValue, float64(states[st]), db.name, replicaUpstream, st.String())
	}
}

var (
	replicaLagDesc        = prometheus.NewDesc("pgguard_replica_lag_bytes", "WAL bytes a replica's replay was behind at its last measurement (taken on connections reads opened).", []string{"database", "replica"}, nil)
	replicaLagSecondsDesc = prometheus.NewDesc("pgguard_replica_lag_seconds", "Age of a replica's last replayed commit while it had WAL left to replay, at its last measurement.", []string{"database", "replica"}, nil)
	replicaUpDesc         = prometheus.NewDesc("pgguard_replica_up", "1 while a replica serves (its dials and connections do not fail).", []string{"database", "replica"}, nil)
)

// replicaPools are SHOW POOLS rows for the replicas of db.
func (db *database) replicaPools(mode string) []PoolStatus {
	if db.rs == nil {
		return nil
	}
	var out []PoolStatus
	for _, r := range db.rs.list {
		st := r.db.pool.Stats()
		out = append(out, PoolStatus{
			Database: db.name, Upstream: replicaUpstream, UpstreamHost: r.db.hostOf(replicaUpstream), Mode: mode, Failover: r.db.fo.State(),
			ServersActive: st.Active, ServersIdle: st.Idle, ServersOpening: st.Opening, ServersClosing: st.Closing,
			Size: st.Size, MaxOverflow: st.MaxOverflow,
			Dials: st.Dials, DialErrors: st.DialErrors, WaitTimeouts: st.WaitTimeouts, Waits: st.Waits,
			Transactions: r.db.xacts.Load(), Queries: r.db.queryCount.Load(),
		})
	}
	return out
}
