package fleet

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// leaseScript keeps one upstream's leases: how many server connections
// each live instance holds. Times are Redis's own clock (TIME), so the
// instances' clocks do not matter.
var leaseScript = redis.NewScript(`
-- KEYS[1]: hash instance -> leases held; KEYS[2]: zset instance -> lease expiry (ms);
-- KEYS[3]: zset instance -> expiry (ms) of its wish for a lease it was refused
-- ARGV: id, n, cap, ttl_ms, mode, want_ttl_ms
--   mode "take": hold n if the fleet's total stays within cap, else note the wish;
--   mode "set": hold n (leases already held: renewal, release, handover)
-- Returns {ok, fleet total, live instances, other instances wishing}
local id, n, cap, ttl, mode, wttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local others, mine = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] == id then mine = tonumber(all[i + 1]) else others = others + tonumber(all[i + 1]) end
end
local ok = 1
if mode == 'take' and others + n > cap then ok = 0 end
if ok == 1 then
  redis.call('HSET', KEYS[1], id, n)
  mine = n
end
redis.call('ZADD', KEYS[2], now + ttl, id)
if mode == 'take' then
  if ok == 1 then redis.call('ZREM', KEYS[3], id) else redis.call('ZADD', KEYS[3], now + wttl, id) end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 10 * ttl) end
local wishing = redis.call('ZCARD', KEYS[3])
if redis.call('ZSCORE', KEYS[3], id) then wishing = wishing - 1 end
return {ok, others + mine, redis.call('ZCARD', KEYS[2]), wishing}
`)

// wishTTL is how long a refused instance counts as wishing for a lease; it
// asks again well within it while its clients queue (pool retries every
// 250 ms at most).
const wishTTL = time.Second

// Leases are this instance's share of one database's fleet cap. The pool
// takes one before each server connection opens (TryTake) and gives it
// back when the connection closes (Give); Over tells the pool to close a
// connection it releases instead of keeping it. It implements pool.Leaser.
//
// The count of leases in Redis is only ever written under mu, from held
// read under mu, and held grows only after Redis accepted the larger
// count: so Redis never shows fewer leases than the instance holds (a Give
// makes it show more until the next write, which is safe).
type Leases struct {
	f        *Fleet
	database string
	key      string // the upstream (primary host:port): the Redis keys
	cap      atomic.Int64
	share    atomic.Int64 // fleet_static_share; 0: cap / fleet size seen

	held atomic.Int64 // leases held: the pool's open and opening connections
	mu   sync.Mutex   // serializes writes of held to Redis

	// From the last answer of Redis.
	total    atomic.Int64 // the fleet's leases
	live     atomic.Int64 // instances holding or renewing leases on this upstream
	wishing  atomic.Int64 // other instances refused a lease lately
	seenLive atomic.Int64 // live, last seen while Redis answered: sizes the static share

	handoverUntil atomic.Int64 // Unix ns: after Redis returned, the static share still binds until then
	refusals      atomic.Uint64
	dirty         atomic.Bool // held changed since Redis was told
}

// Database is the database these leases are for.
func (l *Leases) Database() string { return l.database }

// TryTake takes a lease for one more server connection if the fleet's cap
// allows it: one Redis call, or none while Redis is unreachable (then the
// static share decides).
func (l *Leases) TryTake() bool {
	if l.cap.Load() <= 0 {
		l.held.Add(1)
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	want := l.held.Load() + 1
	if want > l.limit() {
		l.refused()
		return false
	}
	if l.f.up() {
		ok, err := l.write(want, "take")
		if err == nil {
			if !ok {
				l.refused()
				return false
			}
			l.held.Add(1)
			return true
		}
		// Redis just went: the static share decides.
		if want > l.staticShare() {
			l.refused()
			return false
		}
	}
	l.held.Add(1)
	return true
}

// Give returns a lease; Redis learns it at the next sync (within a tick).
// It never blocks: the pool calls it holding its lock.
func (l *Leases) Give() {
	l.held.Add(-1)
	l.dirty.Store(true)
	l.f.poke()
}

// Over reports whether this instance holds more leases than it may keep
// now: while Redis is unreachable (or just back) its static share, while
// other instances wish for one its fair share of the cap. The pool then
// closes a connection it releases or finds idle.
func (l *Leases) Over() bool {
	return l.cap.Load() > 0 && l.held.Load() > l.limit()
}

func (l *Leases) refused() {
	l.refusals.Add(1)
	l.f.m.refusals.WithLabelValues(l.database).Inc()
}

// limit is how many leases this instance may hold now.
func (l *Leases) limit() int64 {
	c := l.cap.Load()
	switch {
	case c <= 0:
		return math.MaxInt64
	case l.static():
		return l.staticShare()
	case l.wishing.Load() > 0:
		n := max(l.live.Load(), 1)
		return (c + n - 1) / n // fair share, rounded up: the cap is still the bound
	}
	return c
}

// static reports whether the static share binds: Redis is unreachable, or
// came back less than a lease TTL ago, when instances that have not yet
// found it again may still hold their static shares unseen.
func (l *Leases) static() bool {
	if !l.f.up() {
		return true
	}
	h := l.handoverUntil.Load()
	if h == 0 { // the common case, on every release: no clock read
		return false
	}
	if time.Now().UnixNano() < h {
		return true
	}
	l.handoverUntil.CompareAndSwap(h, 0)
	return false
}

// staticShare is fleet_static_share, else the cap divided by the fleet size
// last seen (rounded down, so the shares sum within the cap), at least 1;
// 1 when Redis never answered (the fleet's size is unknown).
func (l *Leases) staticShare() int64 {
	if s := l.share.Load(); s > 0 {
		return s
	}
	if l.f.link == nil { // no fleet: the cap is this instance's
		return l.cap.Load()
	}
	n := l.seenLive.Load()
	if n <= 0 {
		return 1
	}
	return max(l.cap.Load()/n, 1)
}

// write runs the lease script with n leases held by this instance. mu is
// held. ok is false when mode "take" was refused.
func (l *Leases) write(n int64, mode string) (ok bool, err error) {
	f := l.f
	ctx, cancel := context.WithTimeout(context.Background(), f.link.Timeout())
	defer cancel()
	ttl := f.cfg.Load().Fleet.LeaseTTL.Duration
	keys := []string{keyPrefix + "lease:" + l.key, keyPrefix + "alive:" + l.key, keyPrefix + "wish:" + l.key}
	v, err := leaseScript.Run(ctx, f.link.C, keys, f.id, n, l.cap.Load(), ttl.Milliseconds(), mode, wishTTL.Milliseconds()).Int64Slice()
	if err != nil {
		f.link.Failed(ctx, err)
		return false, err
	}
	if len(v) == 4 {
		l.total.Store(v[1])
		l.live.Store(v[2])
		l.wishing.Store(v[3])
		if !l.static() { // in the handover, instances not yet back are missing
			l.seenLive.Store(v[2])
		}
	}
	return v[0] == 1, nil
}

// sync tells Redis how many leases this instance holds (renewing them).
func (l *Leases) sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dirty.Store(false)
	_, err := l.write(l.held.Load(), "set")
	if err != nil {
		l.dirty.Store(true)
	}
	return err
}

// LeaseStatus is one database's fleet cap as this instance sees it.
type LeaseStatus struct {
	Database string `json:"database"`
	Upstream string `json:"upstream"`
	// Cap is fleet_max_connections (0: none).
	Cap int64 `json:"fleet_max_connections"`
	// Held are this instance's leases; FleetTotal the fleet's, as Redis
	// last said.
	Held       int64 `json:"held"`
	FleetTotal int64 `json:"fleet_total"`
	Instances  int64 `json:"instances"`
	// Limit is what this instance may hold now; Static is set while the
	// static share binds (Redis unreachable or just back).
	Limit    int64  `json:"limit"`
	Static   bool   `json:"static"`
	Refusals uint64 `json:"lease_refusals"`
}

// Status reports the leases.
func (l *Leases) Status() LeaseStatus {
	lim := l.limit()
	if lim == math.MaxInt64 {
		lim = 0
	}
	return LeaseStatus{Database: l.database, Upstream: l.key, Cap: l.cap.Load(), Held: l.held.Load(),
		FleetTotal: l.total.Load(), Instances: l.live.Load(), Limit: lim,
		Static: l.cap.Load() > 0 && l.static(), Refusals: l.refusals.Load()}
}
