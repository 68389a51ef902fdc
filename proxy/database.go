package proxy

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/pool"
)

// database is one [databases.NAME] entry: its upstream and its pool of server
// connections.
type database struct {
	name    string
	p       *Proxy
	primary *pgconn.Config
	pool    *pool.Pool[*backend]

	// params are the ParameterStatus values of the newest server connection,
	// given to clients at login. Guarded by mu.
	mu     sync.Mutex
	params map[string]string

	// Pre-resolved metric children, so the hot path does no label lookups.
	queryDur   prometheus.Observer
	poolWait   prometheus.Observer
	queries    prometheus.Counter
	servers    atomic.Int64 // open server connections, for SHOW POOLS and metrics
	xacts      atomic.Uint64
	queryCount atomic.Uint64
	nextSrvID  atomic.Uint64
}

func newDatabase(p *Proxy, name string, dc *config.Database) (*database, error) {
	pc, err := pgconn.ParseConfig(dc.Primary)
	if err != nil {
		return nil, fmt.Errorf("databases.%s.primary: %w", name, err)
	}
	db := &database{name: name, p: p, primary: pc}
	db.queryDur = p.metrics.QueryDuration.WithLabelValues(name, "primary")
	db.poolWait = p.metrics.PoolWait.WithLabelValues(name)
	db.queries = p.metrics.Queries.WithLabelValues(name, "")
	p.metrics.UpstreamActive.WithLabelValues(name, "primary").Set(1)
	db.pool = pool.New(pool.Options[*backend]{Dial: db.dial})
	db.configure(p.cfg.Load())
	return db, nil
}

// configure applies the live-changeable pool settings.
func (db *database) configure(cfg *config.Config) {
	size := cfg.PoolSize(db.name)
	db.pool.SetLimits(size, cfg.Pool.MaxOverflow, cfg.Pool.WaitTimeout.Duration,
		cfg.Pool.ServerIdleTimeout.Duration, jitter(cfg.Pool.ServerLifetime.Duration))
	db.p.metrics.PoolMax.WithLabelValues(db.name).Set(float64(size + cfg.Pool.MaxOverflow))
}

// jitter spreads server_lifetime by up to -10% so a fleet does not reconnect at once.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - time.Duration(time.Now().UnixNano()%int64(d/10+1))
}

// dial opens, authenticates and hijacks a server connection (pgconn does TLS
// with SNI and SCRAM, which is what Neon needs).
func (db *database) dial(ctx context.Context) (*backend, error) {
	cfg := db.p.cfg.Load()
	if d := cfg.Pool.ConnectTimeout.Duration; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	conn, err := pgconn.ConnectConfig(ctx, db.primary)
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
	b := newBackend(db, hc, "primary")
	db.mu.Lock()
	db.params = maps.Clone(hc.ParameterStatuses)
	db.mu.Unlock()
	db.servers.Add(1)
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

func (db *database) upstreamHost() string {
	if db == nil || db.primary == nil {
		return "?"
	}
	return fmt.Sprintf("%s:%d", db.primary.Host, db.primary.Port)
}

func (db *database) nameOr() string {
	if db == nil {
		return ""
	}
	return db.name
}
