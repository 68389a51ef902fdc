// Package fleet makes the pgguard instances on one Redis act as one fleet:
// a cap on server connections per primary that no set of machines can
// exceed (leases), a heartbeat per instance from which SHOW FLEET and
// GET /fleet list the fleet, and switches flipped fleet-wide.
//
// Leases: an instance opens a server connection to a primary with
// fleet_max_connections only while it holds a lease for it (the pool asks,
// see pool.Leaser). Redis keeps, per upstream, how many leases each live
// instance holds; a Lua script grants one only while the fleet's total stays
// within the cap. Leases are renewed every lease_ttl/3 (at most every
// second) and expire lease_ttl after the last renewal, so the leases of a
// machine that died are free within lease_ttl. An instance whose lease is
// refused says so in Redis; the others then keep no more than their fair
// share (the cap over the live instances) and close connections beyond it
// as they are released. While Redis is unreachable each instance keeps at
// most its static share (fleet_static_share, default the cap divided by the
// fleet size last seen); when Redis returns the static share binds one
// lease_ttl longer, until every instance has told Redis what it holds.
//
// Goroutines: one loop (renewals, heartbeat, switches) and the Redis link's
// probe while Redis is down. Nothing here runs per query or per transaction.
package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/redislink"
)

// keyPrefix starts every Redis key of the fleet.
const keyPrefix = "pgguard:fleet:"

// Option configures New.
type Option func(*options)

type options struct {
	reg          prometheus.Registerer
	redisTimeout time.Duration
}

// WithRegisterer registers the fleet's metrics on r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// Fleet is this instance's membership of the fleet. Its methods are safe
// for concurrent use; a Fleet without Redis keeps fleet caps as
// per-instance caps and lists only itself.
type Fleet struct {
	id   string
	log  *slog.Logger
	link *redislink.Link // nil without a Redis URL
	cfg  atomic.Pointer[config.Config]
	m    *metricSet

	// Describe, when set before Start, gives the heartbeat's content.
	Describe func() Instance
	// Switch, when set before Start, applies a switch flipped fleet-wide
	// ("read_only", "disable_workers"); who says by whom.
	Switch func(name string, on bool, who string)

	mu       sync.Mutex
	leases   map[string]*Leases // by database
	switches map[string]string  // fleet-wide switch values last applied ("on"/"off")
	pokes    chan struct{}
	stop     chan struct{}
	wg       sync.WaitGroup
	started  time.Time
}

// New builds the fleet for cfg; nothing touches Redis until Start.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) (*Fleet, error) {
	o := options{redisTimeout: 250 * time.Millisecond}
	for _, opt := range opts {
		opt(&o)
	}
	f := &Fleet{id: instanceID(cfg), log: log.With("component", "fleet"), leases: map[string]*Leases{},
		switches: map[string]string{}, pokes: make(chan struct{}, 1), stop: make(chan struct{}), started: time.Now()}
	f.cfg.Store(cfg)
	f.m = newMetrics(f, o.reg)
	if url := cfg.FleetRedisURL(); url != "" {
		ttl := cfg.Fleet.LeaseTTL.Duration
		l, err := redislink.New(url, redislink.Options{
			Key: "fleet.redis_url", Timeout: o.redisTimeout, RetryMin: min(ttl/10, 100*time.Millisecond), RetryMax: renewEvery(ttl),
			Log: f.log, Gauge: f.m.redisUp, Stop: f.stop,
			DownMsg: "redis unreachable: each instance keeps at most its static share of every fleet cap until it returns",
			BackMsg: "redis reachable again: fleet caps are held by leases",
			Back:    f.handover,
		})
		if err != nil {
			return nil, err
		}
		f.link = l
	}
	return f, nil
}

// ID is this instance's id in leases and heartbeats.
func (f *Fleet) ID() string { return f.id }

// instanceID is fleet.instance_id, else FLY_MACHINE_ID, else host-pid.
func instanceID(cfg *config.Config) string {
	if cfg.Fleet.InstanceID != "" {
		return cfg.Fleet.InstanceID
	}
	if m := os.Getenv("FLY_MACHINE_ID"); m != "" {
		return m
	}
	h, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// renewEvery is how often leases are renewed: a third of their TTL, at
// most every second (the fairness signal travels with renewals).
func renewEvery(ttl time.Duration) time.Duration { return min(ttl/3, time.Second) }

// Leases returns the leases of database, whose primary is upstream
// (host:port: instances share a cap by upstream), with its cap and static
// share from the config.
func (f *Fleet) Leases(database, upstream string) *Leases {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.leases[database]
	if l == nil {
		l = &Leases{f: f, database: database, key: upstream}
		f.leases[database] = l
	}
	f.configureLocked(l, f.cfg.Load())
	return l
}

func (f *Fleet) configureLocked(l *Leases, cfg *config.Config) {
	if dc := cfg.Databases[l.database]; dc != nil {
		l.cap.Store(int64(dc.FleetMaxConnections))
		l.share.Store(int64(dc.FleetStaticShare))
	}
}

// Reconfigure applies a reloaded config: caps and static shares change live.
func (f *Fleet) Reconfigure(cfg *config.Config) {
	f.cfg.Store(cfg)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.leases {
		f.configureLocked(l, cfg)
	}
}

// Start connects to Redis (if any), registers this instance's leases,
// publishes its first heartbeat and applies the fleet-wide switches (an
// instance that starts later picks them up before it serves), then starts
// the loop.
func (f *Fleet) Start() {
	if f.link == nil {
		return
	}
	f.link.Start()
	if f.up() {
		for _, l := range f.allLeases() {
			l.sync()
		}
		f.beat()
	}
	f.wg.Add(1)
	go f.loop()
}

// Close stops the loop, gives up this instance's leases and heartbeat (so
// the others need not wait for them to expire) and closes the link.
func (f *Fleet) Close() {
	if f.link == nil {
		return
	}
	close(f.stop)
	f.wg.Wait()
	if f.up() {
		ctx, cancel := context.WithTimeout(context.Background(), f.link.Timeout())
		f.link.C.Del(ctx, heartbeatKey(f.id))
		cancel()
		for _, l := range f.allLeases() {
			l.mu.Lock()
			l.write(l.held.Load(), "set")
			l.mu.Unlock()
		}
	}
	f.link.Close()
}

// up reports whether Redis is usable.
func (f *Fleet) up() bool { return f.link != nil && f.link.Up.Load() }

// Mode is "off" (no Redis), "leases" or "static" (Redis unreachable).
func (f *Fleet) Mode() string {
	switch {
	case f.link == nil:
		return "off"
	case f.up():
		return "leases"
	}
	return "static"
}

// poke asks the loop to tell Redis of given-back leases.
func (f *Fleet) poke() {
	select {
	case f.pokes <- struct{}{}:
	default:
	}
}

func (f *Fleet) allLeases() []*Leases {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*Leases, 0, len(f.leases))
	for _, l := range f.leases {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b *Leases) int { return compareStrings(a.database, b.database) })
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// loop renews leases, publishes the heartbeat and reads the fleet-wide
// switches, each on its period, and syncs given-back leases when poked.
func (f *Fleet) loop() {
	defer f.wg.Done()
	cfg := f.cfg.Load().Fleet
	renew, beat := renewEvery(cfg.LeaseTTL.Duration), cfg.Heartbeat.Duration
	t := time.NewTicker(min(renew, beat))
	defer t.Stop()
	lastRenew, lastBeat := time.Now(), time.Now()
	for {
		select {
		case <-f.stop:
			return
		case <-f.pokes:
			if f.up() {
				for _, l := range f.allLeases() {
					if l.dirty.Load() {
						l.sync()
					}
				}
			}
		case now := <-t.C:
			if !f.up() {
				continue
			}
			if now.Sub(lastRenew) >= renew-renew/10 {
				lastRenew = now
				for _, l := range f.allLeases() {
					l.sync()
				}
			}
			if now.Sub(lastBeat) >= beat-beat/10 {
				lastBeat = now
				f.beat()
			}
		}
	}
}

// handover is the link's Back hook: Redis answers again. Every database's
// leases are written as held (they are real connections, each within the
// static share), and the static share binds one lease TTL longer, the time
// the other instances have to do the same.
func (f *Fleet) handover(ctx context.Context) error {
	ttl := f.cfg.Load().Fleet.LeaseTTL.Duration
	for _, l := range f.allLeases() {
		l.mu.Lock()
		_, err := l.write(l.held.Load(), "set")
		l.mu.Unlock()
		if err != nil {
			return err
		}
		l.handoverUntil.Store(time.Now().Add(ttl).UnixNano())
	}
	return nil
}
