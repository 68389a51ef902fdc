// Package cache is pgguard's result cache: the replies of queries that
// [[cache]] rules choose, answered without reaching the primary, shared by
// every pgguard instance through Redis and invalidated when a write
// committed through any of them touches a table they read.
//
// The proxy asks Key for each execution that may be answered from the
// cache (a simple Query, or an extended-protocol Bind/Execute, outside a
// transaction block); a statement that matches no rule costs a lookup in a
// bounded map by text and allocates nothing. With a Key it calls Get; on a
// hit it answers the client from the returned bytes, on a miss it relays
// the execution and gives the reply to Put. For every statement it relays
// it adds Writes(text) to the session's Pending, and at the commit of the
// transaction (before forwarding its ReadyForQuery) calls Invalidate; on a
// rollback it resets the Pending.
//
// An entry records the generation of each table it reads, taken before the
// query ran; a committed write increments its tables' generations; a
// lookup is a hit only while every generation is unchanged and the entry's
// ttl has not passed. Redis never holds up a query: each call has a short
// timeout, and on an error the cache is per instance (entries living at
// most cache_store.degraded_ttl) until a background probe finds Redis again
// and has written the invalidations made meanwhile.
package cache

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/cache/analyze"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/textcache"
	"github.com/pgguard/pgguard/querylog"
)

// Option configures New.
type Option func(*options)

type options struct {
	reg          prometheus.Registerer
	suspendRedis bool
	now          func() time.Time
	redisTimeout time.Duration // per Redis call
	retryMin     time.Duration // first Redis probe after an error
	retryMax     time.Duration // probe backoff cap
}

// WithRegisterer registers the cache's metrics on r (default: a private
// registry, i.e. not exported).
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithClock makes the cache read the time from now (entries' expiry), for
// replays that run hours of traffic in seconds.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRedisSuspended keeps the cache per instance even with a Redis URL:
// the SUSPEND_REDIS=true kill switch, read from the environment by the caller.
func WithRedisSuspended(on bool) Option { return func(o *options) { o.suspendRedis = on } }

// Statement analyses are cached by text (numbers zeroed) in a map of this
// many entries; longer texts are analysed every time.
const (
	verdictEntries = 8192
	maxVerdictText = 16 << 10
)

// Cache is the result cache. Its methods are safe for concurrent use, and
// a nil *Cache answers every call as a cache with no rules.
type Cache struct {
	log      *slog.Logger
	opts     options
	m        *metrics
	verdicts *textcache.Cache[*analyze.Info] // by text, numbers zeroed

	rules       atomic.Pointer[ruleSet]
	degradedTTL atomic.Int64          // time.Duration
	mu          sync.Mutex            // serializes Reconfigure; guards st
	st          map[string]*ruleState // by rule name; survives reloads

	lru   *lru
	local *localGens
	pend  pending     // invalidations Redis has not seen yet
	held  holds       // tables of writes whose outcome is unknown (Hold)
	redis *redisStore // nil without a Redis URL or with SUSPEND_REDIS
	mode  string      // "off", "suspended" or "redis" (then see redis.up)

	// gate orders invalidations against the return to Redis: the probe
	// writes pending invalidations and goes fleet-wide under the write
	// lock, so none is left behind in pend.
	gate sync.RWMutex

	stop      chan struct{}
	closeOnce sync.Once
}

// New builds a Cache from cfg. With a Redis URL (cache_store.redis_url,
// else limiter.redis_url) it pings Redis once, within the 50 ms call
// timeout; an unreachable Redis only means a per-instance cache until the
// background probe finds it.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) (*Cache, error) {
	o := options{
		now:          time.Now,
		redisTimeout: 50 * time.Millisecond,
		retryMin:     250 * time.Millisecond,
		retryMax:     10 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	if o.reg == nil {
		o.reg = prometheus.NewRegistry()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "cache")
	c := &Cache{
		log:      log,
		opts:     o,
		verdicts: textcache.New[*analyze.Info](verdictEntries),
		st:       map[string]*ruleState{},
		lru:      newLRU(cfg.CacheStore.LocalMaxBytes),
		local:    newLocalGens(),
		mode:     "off",
		stop:     make(chan struct{}),
	}
	url := cfg.CacheRedisURL()
	switch {
	case url != "" && o.suspendRedis:
		c.mode = "suspended"
		log.Warn("SUSPEND_REDIS is set: the result cache is per instance", "redis_url", config.RedactURL(url))
	case url != "":
		c.mode = "redis"
	}
	c.m = newMetrics(c.mode == "redis")
	if c.mode == "redis" {
		// Down: entries validated against Redis are useless now.
		rs, err := newRedisStore(url, log, o, c.m.redisUp, c.stop, c.lru.clear, c.rejoin)
		if err != nil {
			return nil, err
		}
		c.redis = rs
	}
	if err := c.m.register(o.reg, c.lru); err != nil {
		if c.redis != nil {
			c.redis.Close()
		}
		return nil, err
	}
	c.Reconfigure(cfg)
	if c.redis != nil {
		c.redis.Start()
	}
	return c, nil
}

// Reconfigure applies a reloaded config: the rules (a rule keeping its name
// keeps its counters), cache_store.local_max_bytes and degraded_ttl.
// cache_store.redis_url cannot change live (config.Diff reports it).
func (c *Cache) Reconfigure(cfg *config.Config) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rules := make([]*Rule, 0, len(cfg.Cache))
	for _, rc := range cfg.Cache {
		st := c.st[rc.Name]
		if st == nil {
			st = newRuleState(rc.Name, c.m)
			c.st[rc.Name] = st
		}
		rules = append(rules, compileRule(rc, st))
	}
	c.rules.Store(newRuleSet(rules))
	c.degradedTTL.Store(int64(cfg.CacheStore.DegradedTTL.Duration))
	c.lru.resize(cfg.CacheStore.LocalMaxBytes)
}

// Close stops the probe, closes the Redis client and unregisters the
// metrics. The Cache stays usable, per instance.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	c.closeOnce.Do(func() {
		close(c.stop)
		if c.redis != nil {
			c.redis.Close()
		}
		c.m.unregister(c.opts.reg)
	})
	return nil
}

// Enabled reports whether any [[cache]] rule is configured. Without one,
// Key finds nothing and Writes and Invalidate do nothing.
func (c *Cache) Enabled() bool {
	if c == nil {
		return false
	}
	rs := c.rules.Load()
	return rs != nil && len(rs.list) > 0
}

// Match returns the rule that lets the statement text be cached for s:
// the first rule, in file order, whose fingerprint and match keys match
// and whose query qualifies (see analyze.Info.Check). text is a simple
// Query's text or a prepared statement's; it is not retained. For a text
// that matches no rule, and was seen before, it does not allocate.
func (c *Cache) Match(s *Session, text []byte) (*Rule, bool) {
	r, _ := c.match(s, text)
	return r, r != nil
}

func (c *Cache) match(s *Session, text []byte) (*Rule, *analyze.Info) {
	if !c.Enabled() {
		return nil, nil
	}
	rs := c.rules.Load()
	info := c.analyze(text)
	if info.Fingerprint == 0 {
		return nil, nil
	}
	for _, r := range rs.byFP[info.Fingerprint] {
		if !r.matches(s) {
			continue
		}
		if why := info.Check(r.trusted); why != "" {
			if p := r.st.lastRefusal.Load(); p == nil || *p != why {
				r.st.lastRefusal.Store(&why)
			}
			return nil, nil
		}
		return r, info
	}
	return nil, nil
}

// Key returns the key of one execution of st by s, or false when no rule
// lets it be cached. The key covers the database, the user, s's settings
// but application_name, the text's fingerprint and the text itself (its
// literals included), and for the extended protocol the parameter types,
// values and format codes and the result format codes.
func (c *Cache) Key(s *Session, st *Statement) (*Key, bool) {
	r, info := c.match(s, st.Text)
	if r == nil {
		return nil, false
	}
	return newKey(r, s, st, info)
}

// analyze returns what the text is, from the verdict map when it was seen.
// Numbers are zeroed first (as the query log and the read-only guard do):
// a number's value changes neither a statement's shape nor what it reads or
// writes, so "WHERE id = 7" and "WHERE id = 8" share one analysis.
func (c *Cache) analyze(text []byte) *analyze.Info {
	var buf [512]byte
	k := querylog.ZeroNumbers(buf[:0], text)
	if info, ok := c.verdicts.GetBytes(k); ok {
		return info
	}
	s := string(k)
	info := analyze.Analyze(s)
	if len(s) <= maxVerdictText {
		c.verdicts.Put(s, &info)
	}
	return &info
}

// fleet reports whether entries and generations live in Redis right now.
func (c *Cache) fleet() bool { return c.redis != nil && c.redis.Up.Load() }

// capped reports whether entries live at most degraded_ttl: the cache is
// per instance although a Redis is configured (unreachable, or suspended).
func (c *Cache) capped() bool { return c.mode == "suspended" || c.mode == "redis" && !c.fleet() }

// Get looks k up. On a hit it returns the stored reply (RowDescription,
// DataRows, CommandComplete), which the caller must not modify. On a miss
// it remembers the generations it read in k, for Put. Redis slow or down
// costs at most its call timeout and reads as a miss.
func (c *Cache) Get(ctx context.Context, k *Key) ([]byte, bool) {
	if c == nil || k == nil {
		return nil, false
	}
	st := k.rule.st
	now := c.opts.now()
	k.observed, k.gens = false, nil
	e := c.lru.get(k.digest, now)
	fromRedis := false
	if c.fleet() {
		k.fleet = true
		gens, value, err := c.redis.fetch(ctx, k.fields, k.digest, e == nil)
		if errors.Is(err, errNoEpoch) {
			// New or lost generations: create them, read again.
			if err = c.redis.initEpoch(ctx); err == nil {
				gens, value, err = c.redis.fetch(ctx, k.fields, k.digest, e == nil)
			}
		}
		switch {
		case err == nil:
			k.observed, k.gens = true, gens
			if e == nil && value != nil {
				if e, fromRedis = decodeEntry(value, k.digest); !fromRedis {
					c.m.corrupt.Inc()
				}
			}
		case errors.Is(err, errNoEpoch), ctx.Err() != nil:
			st.miss(false)
			return nil, false
		default:
			e = nil // Redis failed: per instance from now on
		}
	}
	if !k.observed {
		k.fleet = false
		k.observed, k.gens = true, c.local.get(k.fields)
	}
	if e == nil {
		st.miss(false)
		return nil, false
	}
	if !e.fresh(now, k.fields, k.gens) && !fromRedis && k.fleet {
		// The in-process copy is stale; another instance may have stored
		// a fresh one since.
		c.lru.drop(k.digest)
		if gens, value, err := c.redis.fetch(ctx, k.fields, k.digest, true); err == nil && value != nil {
			k.gens = gens
			if e2, ok := decodeEntry(value, k.digest); ok {
				e, fromRedis = e2, true
			} else {
				c.m.corrupt.Inc()
			}
		}
	}
	if !e.fresh(now, k.fields, k.gens) {
		c.lru.drop(k.digest)
		st.miss(now.Before(e.expires))
		return nil, false
	}
	if fromRedis {
		c.lru.put(e)
	}
	st.hit(len(e.reply))
	return e.reply, true
}

// Put stores reply, the server's answer to the execution k was looked up
// for with Get, if it is a whole cacheable reply (see ValidReply) within the
// rule's max_entry_bytes (else it is counted as oversize). reply is copied.
// It reports whether the reply was stored. Call it after the reply has gone
// to the client: it may wait up to the Redis call timeout.
func (c *Cache) Put(ctx context.Context, k *Key, reply []byte) bool {
	if c == nil || k == nil {
		return false
	}
	r := k.rule
	if len(reply) > r.maxBytes {
		c.TooBig(k)
		return false
	}
	if !ValidReply(reply, k.described) {
		return false
	}
	observed := k.observed
	k.observed = false // one Put per Get
	if !observed || k.fleet != c.fleet() {
		return false // no generations read, or not those in force now
	}
	if c.held.any(k.fields) {
		return false // a write to its tables may yet commit (Hold)
	}
	ttl := r.ttl
	if c.capped() {
		ttl = min(ttl, time.Duration(c.degradedTTL.Load()))
	}
	e := &entry{digest: k.digest, expires: c.opts.now().Add(ttl), fields: k.fields, gens: k.gens, reply: slices.Clone(reply)}
	if k.fleet {
		if err := c.redis.store(ctx, k.digest, e.encode(), ttl); err != nil {
			return false
		}
	}
	c.lru.put(e)
	r.st.store(len(reply))
	return true
}

// TooBig counts a reply to k's execution that was not stored because it
// outgrew max_entry_bytes (the caller stopped collecting it).
func (c *Cache) TooBig(k *Key) {
	if c != nil && k != nil {
		k.rule.st.tooBig()
	}
}

// Writes returns the tables a statement text may change, for Pending.Add;
// nothing when no rule is configured. Like Match it reads from the verdict
// map by text.
func (c *Cache) Writes(text []byte) Targets {
	if !c.Enabled() {
		return Targets{}
	}
	return c.analyze(text).Writes
}

// Invalidate makes every entry of database db (a Session's Upstream) that reads one of t's tables
// (all of them with t.All) a miss, here and on every instance sharing the
// Redis. Call it when the transaction that made the writes has committed,
// before its ReadyForQuery reaches the client, so that the client's next
// read cannot be answered from before its write. It waits at most the Redis
// call timeout, whatever ctx says; if Redis fails, the invalidation is
// written when it returns.
func (c *Cache) Invalidate(ctx context.Context, db string, t Targets) {
	if c == nil || t.Empty() || !c.Enabled() {
		return
	}
	fields := c.targetFields(db, t)
	c.m.invalidations.WithLabelValues(db).Add(float64(len(fields)))
	c.bump(ctx, db, fields)
}

// targetFields are the generation fields of t's tables of db.
func (c *Cache) targetFields(db string, t Targets) []string {
	if t.All {
		return []string{tableField(db, fieldAll)}
	}
	fields := make([]string, len(t.Tables))
	for i, tb := range t.Tables {
		fields[i] = tableField(db, tb)
	}
	return fields
}

// Reset forgets every entry, here and, through Redis, on every instance
// (DISCARD CACHE, POST /cache/reset). Entries in Redis become misses at
// once and expire with their ttl.
func (c *Cache) Reset(ctx context.Context) {
	if c == nil {
		return
	}
	c.lru.clear()
	c.bump(ctx, "", []string{fieldReset})
	c.log.Info("result cache reset: every entry is forgotten")
}

// bump increments generations here and in Redis, or remembers them for
// Redis's return.
func (c *Cache) bump(ctx context.Context, db string, fields []string) {
	c.local.bump(fields)
	if c.redis == nil {
		return
	}
	c.gate.RLock()
	defer c.gate.RUnlock()
	if c.fleet() && c.redis.bump(context.WithoutCancel(ctx), fields) == nil {
		return
	}
	c.pend.add(db, fields)
}

// rejoin runs in the probe once Redis answers again: it writes the
// invalidations made meanwhile and returns with the gate held, so that the
// probe switches to fleet-wide before any other invalidation can go to
// pend. On an error the pending ones are kept for the next try.
func (c *Cache) rejoin(ctx context.Context) error {
	c.gate.Lock()
	defer c.gate.Unlock()
	p := c.pend.take()
	if len(p) > 0 {
		fields := make([]string, 0, len(p))
		for f := range p {
			fields = append(fields, f)
		}
		if err := c.redis.bump(ctx, fields); err != nil {
			for f, db := range p {
				c.pend.add(db, []string{f})
			}
			return err
		}
		c.log.Info("wrote the invalidations made while redis was unreachable", "generations", len(fields))
	}
	c.lru.clear()
	c.redis.Up.Store(true) // under the gate; the probe sets it again
	return nil
}
