// Package limiter enforces pgguard's [[limits]] rules (query rates and caps on
// the server connections a rule's clients hold), counts queries per
// application, and models the primary's Neon compute Active Time against the
// monthly [budget], so that no polling worker can burn the month's compute
// unnoticed again.
//
// The proxy resolves a Session once per client (Match), then calls Admit
// before each query (session mode) or transaction (transaction mode),
// AcquireConn and ReleaseConn around each server connection it holds, and
// Observe for every query. A Session whose client matches no rule costs an
// atomic load or add per call and allocates nothing. For the budget model it
// calls Connected for every server connection it opens to a primary, and the
// returned Activity's Query, Ready and Close as queries run on it.
//
// With limiter.redis_url set, rate buckets and the budget's awake time are
// shared by every pgguard instance through Redis (atomic Lua scripts). Redis
// never holds up a query: each call has a short timeout, and on an error the
// limiter switches to per-instance state until a background probe finds Redis
// again.
package limiter

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
)

// Client identifies a client session for rule matching.
type Client struct {
	Database    string
	User        string
	Application string     // application_name
	Addr        netip.Addr // zero for Unix-socket clients; matches no client_addr rule
}

// Clock is the limiter's time source; tests and replays pass a fake one.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Sleep waits for d, or until ctx ends and then returns ctx.Err().
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Option configures New.
type Option func(*options)

type options struct {
	clock        Clock
	reg          prometheus.Registerer
	suspendRedis bool
	tick         time.Duration // janitor period; < 0 runs none (tests drive it)
	redisTimeout time.Duration // per Redis call
	retryMin     time.Duration // first Redis probe after an error
	retryMax     time.Duration // probe backoff cap
}

// WithClock sets the time source (default: the system clock).
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithRegisterer registers the limiter's metrics on r (default: a private
// registry, i.e. not exported).
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithRedisSuspended forces per-instance limits even when limiter.redis_url is
// set: the SUSPEND_REDIS=true kill switch, read from the environment by the
// caller.
func WithRedisSuspended(on bool) Option { return func(o *options) { o.suspendRedis = on } }

// Limiter holds the rules' shared state, the per-application counters and the
// budget model. Its methods are safe for concurrent use.
type Limiter struct {
	log   *slog.Logger
	clock Clock
	opts  options
	m     *metrics

	gen atomic.Uint64           // bumped by Reconfigure; sessions re-resolve on change
	set atomic.Pointer[[]*rule] // current rules, in file order
	mu  sync.Mutex              // serializes Reconfigure; guards states
	st  map[string]*ruleState   // by rule name; survives reloads
	cfg atomic.Pointer[config.Config]

	workersOff atomic.Bool                // the worker kill switch (workers.go)
	workersBy  atomic.Pointer[workersSet] // who set it last

	apps   *appRates
	budget *Budget
	redis  *redisStore // nil without redis_url or with SUSPEND_REDIS
	mode   string      // "off", "suspended" or "redis" (then see redis.up)

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New builds a Limiter from cfg. With limiter.redis_url it pings Redis once,
// within the 50 ms call timeout; an unreachable Redis only means per-instance
// limits until the background probe finds it.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) (*Limiter, error) {
	o := options{
		clock:        realClock{},
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
	log = log.With("component", "limiter")
	l := &Limiter{
		log:   log,
		clock: o.clock,
		opts:  o,
		st:    map[string]*ruleState{},
		stop:  make(chan struct{}),
		mode:  "off",
	}
	switch {
	case cfg.Limiter.RedisURL != "" && o.suspendRedis:
		l.mode = "suspended"
		log.Warn("SUSPEND_REDIS is set: limits and budget are per instance", "redis_url", config.RedactURL(cfg.Limiter.RedisURL))
	case cfg.Limiter.RedisURL != "":
		l.mode = "redis"
	}
	l.m = newMetrics(l.mode == "redis")
	l.apps = newAppRates(log, l.m.appQPH)
	l.budget = newBudget(log, o.clock)
	if l.mode == "redis" {
		rs, err := newRedisStore(cfg.Limiter.RedisURL, log, o, l.m.redisUp, l.stop)
		if err != nil {
			return nil, err
		}
		l.redis = rs
		l.budget.redis = rs
	}
	if err := l.m.register(o.reg, l.budget, l.workersOff.Load); err != nil {
		if l.redis != nil {
			l.redis.Close()
		}
		return nil, err
	}
	l.Reconfigure(cfg)
	if l.redis != nil {
		l.redis.Start()
	}
	if o.tick >= 0 {
		l.wg.Add(1)
		go l.janitor()
	}
	return l, nil
}

// Reconfigure applies a reloaded config. Rules are matched by name: a rule
// that keeps its name keeps its bucket, its connection count and its
// counters; sessions pick up the new rules at their next call.
// limiter.redis_url cannot change live (config.Diff reports it).
func (l *Limiter) Reconfigure(cfg *config.Config) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	rules := make([]*rule, 0, len(cfg.Limits))
	keep := map[string]bool{}
	for _, lc := range cfg.Limits {
		st := l.st[lc.Name]
		if st == nil {
			st = newRuleState(lc.Name, l.m)
			l.st[lc.Name] = st
		}
		r := compileRule(lc, st)
		st.update(r, now)
		rules = append(rules, r)
		keep[lc.Name] = true
	}
	for name, st := range l.st {
		if !keep[name] {
			st.retire(l.m)
			delete(l.st, name)
		}
	}
	old := l.cfg.Load()
	if old != nil && old.Limiter.RedisURL != cfg.Limiter.RedisURL {
		l.log.Warn("limiter.redis_url changed; it takes effect at restart")
	}
	l.cfg.Store(cfg)
	l.apps.setWarn(cfg.Limiter.QueriesPerHourWarn)
	l.budget.configure(cfg, now)
	l.set.Store(&rules)
	l.gen.Add(1)
	l.configureWorkers(old, cfg)
}

// Close stops the background work, closes the Redis client and unregisters
// the metrics. Sessions stay usable (per instance) afterwards.
func (l *Limiter) Close() error {
	if l == nil {
		return nil
	}
	l.closeOnce.Do(func() {
		close(l.stop)
		l.wg.Wait()
		if l.redis != nil {
			l.redis.Close()
		}
		l.m.unregister(l.opts.reg)
	})
	return nil
}

// janitor rolls the per-application minutes, sweeps the connections'
// activity into the budget model, evaluates it and, with Redis, pushes this
// instance's awake time to the fleet total.
func (l *Limiter) janitor() {
	defer l.wg.Done()
	every := l.opts.tick
	if every == 0 {
		every = 5 * time.Second
		if l.redis != nil {
			every = time.Second
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.tick()
		}
	}
}

// tick is one janitor round; tests call it directly with a fake clock.
func (l *Limiter) tick() {
	now := l.clock.Now()
	l.apps.tick(now)
	l.budget.sweep(now)
	if l.redis != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 4*l.opts.redisTimeout)
		l.budget.flush(ctx, now)
		cancel()
	}
	l.budget.evaluate(now)
}

// Match resolves the rules that apply to c. Call it once per client session,
// and again when the client changes application_name (release connections
// through the Session that acquired them). It returns a Session even when no
// rule matches, so that Observe can count the application's queries; a nil
// Limiter returns a nil Session, whose methods do nothing.
func (l *Limiter) Match(c Client) *Session {
	if l == nil {
		return nil
	}
	s := &Session{l: l, c: c, app: l.apps.lookup(c.Application)}
	s.resolve()
	return s
}

// ObserveUpstreamQuery feeds the budget model an instant of query activity
// on database's primary at t. The proxy reports spans through Connected and
// Activity instead; this is for callers that only know points in time.
func (l *Limiter) ObserveUpstreamQuery(database, application string, t time.Time) {
	if l == nil {
		return
	}
	l.budget.observe(database, application, t)
}

// Budget returns the Neon compute budget model (nil for a nil Limiter).
func (l *Limiter) Budget() *Budget {
	if l == nil {
		return nil
	}
	return l.budget
}

// Session is one client's view of the limiter. It is used by one goroutine
// at a time (its client's); a nil Session is valid and limits nothing.
type Session struct {
	l        *Limiter
	c        Client
	app      *appCounter
	gen      uint64
	rated    []*rule // matched rules with a query rate, file order
	capped   []*rule // matched rules with max_connections, by name (lock order)
	priority int
	worker   *rule      // the first matched rule with worker = true
	held     []*connSem // slots taken by AcquireConn
}

// resolve matches the current rules.
func (s *Session) resolve() {
	s.gen = s.l.gen.Load()
	s.rated, s.capped, s.priority, s.worker = s.rated[:0], s.capped[:0], 0, nil
	first := true
	for _, r := range *s.l.set.Load() {
		if !r.matches(s.c) {
			continue
		}
		if first || r.priority > s.priority {
			s.priority, first = r.priority, false
		}
		if r.hasRate() {
			s.rated = append(s.rated, r)
		}
		if r.maxConns > 0 {
			s.capped = append(s.capped, r)
		}
		if r.worker && s.worker == nil {
			s.worker = r
		}
	}
	sort.Slice(s.capped, func(i, j int) bool { return s.capped[i].name < s.capped[j].name })
}

// refresh re-resolves after a Reconfigure.
func (s *Session) refresh() {
	if s.gen != s.l.gen.Load() {
		s.resolve()
	}
}

// Priority is the highest priority among the matched rules, 0 when none
// matches; the pool serves higher priorities first.
func (s *Session) Priority() int {
	if s == nil {
		return 0
	}
	s.refresh()
	return s.priority
}

// Rules names the matched rules (for SHOW CLIENTS and logs).
func (s *Session) Rules() []string {
	if s == nil {
		return nil
	}
	s.refresh()
	var names []string
	for _, r := range *s.l.set.Load() {
		if r.matches(s.c) {
			names = append(names, r.name)
		}
	}
	return names
}

// Observe counts one query for the session's application (queries per hour,
// the WARN at limiter.queries_per_hour_warn). One atomic add.
func (s *Session) Observe() {
	if s == nil {
		return
	}
	if s.app.dead.Load() { // evicted after an idle hour; look it up again
		s.app = s.l.apps.lookup(s.c.Application)
	}
	s.app.n.Add(1)
}

// LimitError is a refusal by a rule or by the budget guard. Clients get
// SQLSTATE 53400 (configuration_limit_exceeded) and Message, which names the
// limit and the setting to change.
type LimitError struct {
	// Rule is the [[limits]] rule's name, or "budget".
	Rule string
	// Setting is the config key to change, e.g. "limits.queries_per_minute".
	Setting string
	// Message is the client-facing text.
	Message string
	// Cause is set when the wait ended with its context (client gone or
	// pool.wait_timeout); for logs.
	Cause error
}

// Error returns the message, and the cause if any.
func (e *LimitError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s (%v)", e.Message, e.Cause)
	}
	return e.Message
}

// SQLState returns "53400", configuration_limit_exceeded.
func (e *LimitError) SQLState() string { return "53400" }

// Unwrap returns the cause.
func (e *LimitError) Unwrap() error { return e.Cause }
