package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// quietRedis drops go-redis's own log lines, expected while Redis is down.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func startRedis(t *testing.T) *localpg.Redis {
	t.Helper()
	localpg.Require(t, localpg.RedisAvailable())
	redis.SetLogger(quietRedis{})
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pid := r.Pid(); pid != 0 {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		r.Stop()
	})
	return r
}

func rawClient(t *testing.T, r *localpg.Redis) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// fastProbe makes the background probe retry every few milliseconds.
func fastProbe(o *options) { o.retryMin, o.retryMax = 5*time.Millisecond, 20*time.Millisecond }

// logBuffer collects log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// fleetCache is an instance on the Redis at url.
func fleetCache(t *testing.T, url string, log *slog.Logger, opts ...Option) *Cache {
	t.Helper()
	cfg := rulesConfig(branding)
	cfg.CacheStore.RedisURL = url
	clk := &fakeClock{t: time.Now()}
	c, err := New(cfg, log, append([]Option{withClock(clk)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds; the deadline only stops a hung test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Two instances on one Redis share entries and invalidations.
func TestFleetSharesEntriesAndInvalidations(t *testing.T) {
	r := startRedis(t)
	a, b := fleetCache(t, r.URL(), nil), fleetCache(t, r.URL(), nil)
	if a.redisMode() != "fleet" || b.redisMode() != "fleet" {
		t.Fatalf("modes %s %s", a.redisMode(), b.redisMode())
	}
	s, st := sess(), bind([]byte("42"))
	acme := reply(t, "acme")
	if lookup(t, a, s, st, acme) {
		t.Fatal("first lookup hit")
	}
	if !lookup(t, b, s, st, acme) {
		t.Fatal("b missed a's entry")
	}
	if !lookup(t, a, s, st, acme) || !lookup(t, b, s, st, acme) {
		t.Fatal("second lookups missed")
	}
	// b commits a write: a's in-process copy is stale too.
	b.Invalidate(ctx, "app", b.Writes([]byte("UPDATE tenant_branding SET color = 'red' WHERE tenant_id = 42")))
	red := reply(t, "acme-red")
	if lookup(t, a, s, st, red) {
		t.Fatal("a answered from before b's write")
	}
	if got := a.status().Rules[0].Invalidated; got != 1 {
		t.Errorf("a counted %d invalidated", got)
	}
	if !lookup(t, b, s, st, red) {
		t.Fatal("b missed a's new entry")
	}
	// A reset on one instance forgets everything everywhere.
	a.Reset(ctx)
	if lookup(t, b, s, st, red) {
		t.Fatal("b hit after a's reset")
	}
	if !lookup(t, a, s, st, red) {
		t.Fatal("a missed b's entry stored after the reset")
	}
}

// Whatever Redis answers that is not the entry stored under the key is a
// miss, never a wrong answer.
func TestFleetGarbageAndEvictionAreMisses(t *testing.T) {
	r := startRedis(t)
	raw := rawClient(t, r)
	a := fleetCache(t, r.URL(), nil)
	// b has no in-process cache: every lookup reads Redis.
	b := fleetCache(t, r.URL(), nil)
	b.lru.resize(0)
	s, st := sess(), bind([]byte("42"))
	acme := reply(t, "acme")
	lookup(t, a, s, st, acme)
	k, _ := b.Key(s, st)
	key := redisEntryKey(k.digest)
	stored, err := raw.Get(ctx, key).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, hit := b.Get(ctx, k); !hit {
		t.Fatal("b missed")
	}
	k43, _ := b.Key(s, bind([]byte("43")))
	for name, value := range map[string][]byte{
		"garbage":               []byte("not an entry"),
		"a cut entry":           stored[:len(stored)-7],
		"a flipped bit":         func() []byte { v := bytes.Clone(stored); v[len(v)/2] ^= 4; return v }(),
		"another key's entry":   nil, // set below
		"another format":        append([]byte("PGGC\x02"), stored[5:]...),
		"an empty string":       {},
		"a value of the future": append(append([]byte{}, stored[:4]...), append([]byte{9}, stored[5:]...)...),
	} {
		if name == "another key's entry" {
			raw.Set(ctx, redisEntryKey(k43.digest), stored, 0)
			if _, hit := b.Get(ctx, k43); hit {
				t.Errorf("%s: hit", name)
			}
			continue
		}
		raw.Set(ctx, key, value, 0)
		if got, hit := b.Get(ctx, k); hit {
			t.Errorf("%s: hit with %q", name, got)
		}
	}
	if got := testutil.ToFloat64(b.m.corrupt); got < 6 {
		t.Errorf("pgguard_cache_corrupt_total = %v", got)
	}
	raw.Set(ctx, key, stored, 0)
	if _, hit := b.Get(ctx, k); !hit {
		t.Fatal("b missed the restored entry")
	}
	// Evicted: a miss.
	raw.Del(ctx, key)
	if _, hit := b.Get(ctx, k); hit {
		t.Error("hit after the entry was evicted")
	}
	// Generations evicted or Redis restarted empty: even a's in-process
	// copy is a miss, and the cache starts over.
	raw.Set(ctx, key, stored, 0)
	raw.FlushAll(ctx)
	raw.Set(ctx, key, stored, 0) // an old entry surviving its generations
	if lookup(t, a, s, st, acme) {
		t.Error("a hit after the generations were lost")
	}
	if !lookup(t, a, s, st, acme) {
		t.Error("a missed once the generations were back")
	}
	// Garbage in the generations: forgotten, a miss.
	raw.HSet(ctx, redisGensKey, tableField("app", "tenant_branding"), "garbage")
	if lookup(t, a, s, st, acme) {
		t.Error("hit with garbage generations")
	}
	if v, _ := raw.HGet(ctx, redisGensKey, tableField("app", "tenant_branding")).Result(); v == "garbage" {
		t.Error("garbage generations kept")
	}
	if !lookup(t, a, s, st, acme) {
		t.Error("miss once the generations were started over")
	}
}

// Redis down: every call returns within its timeout, the cache goes per
// instance with the ttl capped, says so once, and comes back fleet-wide.
func TestRedisDownDegradesAndReturns(t *testing.T) {
	r := startRedis(t)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a := fleetCache(t, r.URL(), log, fastProbe)
	clk := &fakeClock{t: time.Now()}
	a.opts.now = clk.now
	s, st := sess(), bind([]byte("42"))
	acme := reply(t, "acme")
	lookup(t, a, s, st, acme)

	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if lookup(t, a, s, st, acme) {
		t.Fatal("hit with Redis down (the in-process copy cannot be validated)")
	}
	if a.redisMode() != "per_instance" || testutil.ToFloat64(a.m.redisUp) != 0 {
		t.Fatalf("mode %s, gauge %v", a.redisMode(), testutil.ToFloat64(a.m.redisUp))
	}
	// Per instance: the reply stored by the miss above answers, for at
	// most degraded_ttl (5s), not the rule's 5m.
	if !lookup(t, a, s, st, acme) {
		t.Fatal("per instance: miss")
	}
	clk.add(5 * time.Second)
	if lookup(t, a, s, st, acme) {
		t.Fatal("per instance: hit past degraded_ttl")
	}
	// A write while Redis is down: invalidates here, and waits for Redis.
	a.Invalidate(ctx, "app", Targets{Tables: []string{"tenant_branding"}})
	if lookup(t, a, s, st, acme) {
		t.Fatal("per instance: hit after a write")
	}
	if a.pend.len() != 1 {
		t.Fatalf("%d pending invalidations", a.pend.len())
	}
	for range 5 {
		lookup(t, a, s, st, acme)
	}
	if n := logs.count("redis unreachable"); n != 1 {
		t.Errorf("%d WARN lines for one outage:\n%s", n, logs.b.String())
	}

	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cache to go fleet-wide again", func() bool { return a.redisMode() == "fleet" })
	if a.pend.len() != 0 || testutil.ToFloat64(a.m.redisUp) != 1 || logs.count("redis reachable again") != 1 {
		t.Errorf("after return: %d pending, gauge %v\n%s", a.pend.len(), testutil.ToFloat64(a.m.redisUp), logs.b.String())
	}
	// The pending invalidation reached Redis before the cache went back.
	raw := rawClient(t, r)
	if v, err := raw.HGet(ctx, redisGensKey, tableField("app", "tenant_branding")).Result(); err != nil || v != "1" {
		t.Errorf("generation in Redis = %q, %v", v, err)
	}
	// Fleet-wide again: an entry goes through Redis.
	lookup(t, a, s, st, acme)
	b := fleetCache(t, r.URL(), nil)
	if !lookup(t, b, s, st, acme) {
		t.Error("b missed a's entry after the return")
	}
}

// An invalidation that could not reach Redis is written before the
// instance goes fleet-wide again, so other instances stop answering the
// entry it made stale.
func TestPendingInvalidationReachesTheFleet(t *testing.T) {
	r := startRedis(t)
	a := fleetCache(t, r.URL(), nil, fastProbe)
	b := fleetCache(t, r.URL(), nil, fastProbe)
	s, st := sess(), bind([]byte("42"))
	acme := reply(t, "acme")
	// Both share a's entry through Redis (on a loaded machine a call can
	// outlast the 50 ms timeout: that instance goes per instance until its
	// probe brings it back).
	waitFor(t, "a and b to share the entry through Redis", func() bool {
		lookup(t, a, s, st, acme)
		return a.redisMode() == "fleet" && b.redisMode() == "fleet" && lookup(t, b, s, st, acme)
	})
	// Redis hangs: a's commit times out (50 ms) and a goes per instance.
	if err := syscall.Kill(r.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.Invalidate(ctx, "app", Targets{Tables: []string{"tenant_branding"}})
	took := time.Since(start)
	if err := syscall.Kill(r.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("Invalidate with Redis hung returned after %v (call timeout 50ms)", took)
	if a.redisMode() != "per_instance" {
		t.Fatalf("a is %s", a.redisMode())
	}
	waitFor(t, "a to write its pending invalidation", func() bool { return a.redisMode() == "fleet" })
	if lookup(t, b, s, st, reply(t, "acme-red")) {
		t.Error("b answered an entry older than a's write")
	}
}

func TestRedisUnreachableAtStart(t *testing.T) {
	r := startRedis(t)
	url := r.URL()
	r.Stop()
	a := fleetCache(t, url, nil)
	if a.redisMode() != "per_instance" {
		t.Fatalf("mode %s", a.redisMode())
	}
	s, st := sess(), bind([]byte("42"))
	lookup(t, a, s, st, reply(t, "acme"))
	if !lookup(t, a, s, st, reply(t, "acme")) {
		t.Error("per instance: miss")
	}
}

// SUSPEND_REDIS: per instance from the start, nothing sent to Redis.
func TestSuspendRedis(t *testing.T) {
	r := startRedis(t)
	a := fleetCache(t, r.URL(), nil, WithRedisSuspended(true))
	if a.redisMode() != "suspended" || a.redis != nil {
		t.Fatalf("mode %s", a.redisMode())
	}
	s, st := sess(), bind([]byte("42"))
	lookup(t, a, s, st, reply(t, "acme"))
	if !lookup(t, a, s, st, reply(t, "acme")) {
		t.Error("suspended: miss")
	}
	a.Invalidate(ctx, "app", Targets{All: true})
	a.Reset(ctx)
	if n, err := rawClient(t, r).DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("Redis holds %d keys (%v)", n, err)
	}
	k, _ := a.Key(s, st)
	a.Get(ctx, k)
	a.Put(ctx, k, reply(t, "acme"))
	e := a.lru.get(k.digest, a.opts.now())
	if e == nil || e.expires.Sub(a.opts.now()) != 5*time.Second {
		t.Errorf("suspended entry lives %v, want degraded_ttl", e.expires.Sub(a.opts.now()))
	}
}

// A config whose Redis URL is only limiter.redis_url shares that Redis.
func TestLimiterRedisURLIsTheDefault(t *testing.T) {
	r := startRedis(t)
	cfg := rulesConfig(branding)
	cfg.Limiter.RedisURL = r.URL()
	a, _, _ := newCache(t, cfg)
	if a.redisMode() != "fleet" {
		t.Fatalf("mode %s", a.redisMode())
	}
	var _ = config.Default
}

// Under concurrent reads and writes through two instances, a hit never
// answers a value older than a write whose Invalidate had returned before
// the lookup began: what a client sees after its COMMIT.
func TestFleetNeverAnswersFromBeforeACommittedWrite(t *testing.T) {
	r := startRedis(t)
	insts := []*Cache{fleetCache(t, r.URL(), nil), fleetCache(t, r.URL(), nil)}
	var (
		mu        sync.Mutex
		value     int // the table's row, on the "server"
		committed int // the last value whose Invalidate returned
	)
	const writes = 200
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() { // the writer, alternating instances
		defer close(done)
		for i := 1; i <= writes; i++ {
			mu.Lock()
			value = i
			mu.Unlock()
			c := insts[i%2]
			c.Invalidate(ctx, "app", c.Writes([]byte("UPDATE tenant_branding SET n = n + 1")))
			mu.Lock()
			committed = i
			mu.Unlock()
		}
	}()
	var hits, misses atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := insts[g%2]
			s, st := sess(), bind([]byte("42"))
			for {
				select {
				case <-done:
					return
				default:
				}
				mu.Lock()
				floor := committed
				mu.Unlock()
				k, _ := c.Key(s, st)
				got, hit := c.Get(ctx, k)
				if !hit {
					misses.Add(1)
					mu.Lock()
					v := value // the query runs after Get read the generations
					mu.Unlock()
					c.Put(ctx, k, reply(t, strconv.Itoa(v)))
					continue
				}
				hits.Add(1)
				if v := valueOf(t, got); v < floor {
					t.Errorf("hit answered %d, older than the committed %d", v, floor)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d hits, %d misses during %d writes", hits.Load(), misses.Load(), writes)
}

// valueOf reads the one value of a reply built by reply().
func valueOf(t *testing.T, b []byte) int {
	t.Helper()
	for len(b) > 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if b[0] == 'D' {
			v, err := strconv.Atoi(string(b[11 : 1+n]))
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		b = b[1+n:]
	}
	t.Fatal("no DataRow")
	return 0
}
