package proxy

import (
	"fmt"
	"time"

	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/pool"
)

// The fleet and a full upstream, as the relay sees them: the pool takes a
// lease of the fleet cap before each server connection opens (package
// fleet), closes a connection it releases while this instance holds more
// than it may keep (retire), and queues a client whose dial the upstream
// refused as full, retrying with backoff (upstreamFull); nothing here runs
// per transaction.

// Option configures New.
type Option func(*Proxy)

// WithFleet makes every database's pool take leases of its fleet cap from f.
func WithFleet(f *fleet.Fleet) Option { return func(p *Proxy) { p.fleet = f } }

// overLeases reports whether this instance holds more of the database's
// fleet cap than it may keep now (fair share, static share).
func (db *database) overLeases() bool { return db.lease != nil && db.lease.Over() }

// upstreamFullLogEvery spaces the INFO lines about a full upstream.
const upstreamFullLogEvery = 10 * time.Second

// upstreamFull returns err wrapped in pool.ErrFull, and counts it, when it
// is the upstream refusing a connection because it has too many (SQLSTATE
// 53300, or Neon's "too many connections" as XX000): not a client error,
// not an upstream failure. Otherwise it returns nil.
func (db *database) upstreamFull(err error) error {
	if failover.Classify(err).Kind != failover.TooManyConnections {
		return nil
	}
	db.p.metrics.UpstreamFull.WithLabelValues(db.name).Inc()
	now := time.Now().UnixNano()
	if last := db.fullLogged.Load(); now-last > int64(upstreamFullLogEvery) && db.fullLogged.CompareAndSwap(last, now) {
		db.p.log.Info("upstream refused a connection as full; clients queue and the dial is retried (set fleet_max_connections below the upstream's limit)",
			"database", db.name, "err", err)
	}
	return fmt.Errorf("%w: %w", pool.ErrFull, err)
}
