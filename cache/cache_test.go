package cache

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
)

// fakeClock is a settable time source.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func withClock(c *fakeClock) Option { return func(o *options) { o.now = c.now } }

// newCache builds a cache from cfg with a fake clock and its own registry.
func newCache(t *testing.T, cfg *config.Config, opts ...Option) (*Cache, *fakeClock, *prometheus.Registry) {
	t.Helper()
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, nil, append([]Option{withClock(clk), WithRegisterer(reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, clk, reg
}

func rulesConfig(rules ...config.CacheRule) *config.Config {
	cfg := config.Default()
	for i := range rules {
		if rules[i].TTL.Duration == 0 {
			rules[i].TTL = config.D(5 * time.Minute)
		}
		if rules[i].MaxEntryBytes == 0 {
			rules[i].MaxEntryBytes = config.DefaultCacheMaxEntryBytes
		}
	}
	cfg.Cache = rules
	return cfg
}

var ctx = context.Background()

// lookup runs one execution through the cache as the proxy would: Get, and
// on a miss Put of what the server answered. It reports whether it hit.
func lookup(t *testing.T, c *Cache, s *Session, st *Statement, server []byte) bool {
	t.Helper()
	k, ok := c.Key(s, st)
	if !ok {
		t.Fatalf("no key for %q", st.Text)
	}
	if got, hit := c.Get(ctx, k); hit {
		if !bytes.Equal(got, server) {
			t.Fatalf("hit answered %q, the server says %q", got, server)
		}
		return true
	}
	c.Put(ctx, k, server)
	return false
}

func TestPerInstanceHitMissInvalidate(t *testing.T) {
	c, _, reg := newCache(t, rulesConfig(branding))
	s := sess()
	st := bind([]byte("42"))
	acme := reply(t, "acme")
	if lookup(t, c, s, st, acme) {
		t.Fatal("first lookup hit")
	}
	for range 3 {
		if !lookup(t, c, s, st, acme) {
			t.Fatal("second lookup missed")
		}
	}
	// Another tenant is another entry.
	if lookup(t, c, s, bind([]byte("43")), reply(t, "globex")) {
		t.Error("tenant 43 hit tenant 42's entry")
	}
	// A write to another table changes nothing.
	c.Invalidate(ctx, "app", c.Writes([]byte("UPDATE tenants SET name = 'x' WHERE id = 42")))
	if !lookup(t, c, s, st, acme) {
		t.Error("a write to another table invalidated")
	}
	// The same table in another database changes nothing.
	c.Invalidate(ctx, "other", Targets{Tables: []string{"tenant_branding"}})
	if !lookup(t, c, s, st, acme) {
		t.Error("a write in another database invalidated")
	}
	// A committed write to the table: the next read goes to the server.
	var p Pending
	p.Add(c.Writes([]byte("UPDATE public.tenant_branding SET color = 'red' WHERE tenant_id = 42")))
	c.Invalidate(ctx, "app", p.Targets())
	p.Reset()
	red := reply(t, "acme-red")
	if lookup(t, c, s, st, red) {
		t.Fatal("hit after a write to its table")
	}
	if !lookup(t, c, s, st, red) {
		t.Fatal("the new reply was not stored")
	}
	// DDL invalidates the whole database.
	c.Invalidate(ctx, "app", c.Writes([]byte("ALTER TABLE something_else ADD COLUMN c int")))
	if lookup(t, c, s, st, red) {
		t.Error("hit after DDL")
	}

	rs := c.status().Rules[0]
	if rs.Hits != 6 || rs.Misses != 4 || rs.Invalidated != 2 || rs.Stored != 4 || rs.HitBytes != int64(5*len(acme)+len(red)) {
		t.Errorf("counters: %+v", rs)
	}
	if got := testutil.ToFloat64(c.m.hits.WithLabelValues("branding")); got != 6 {
		t.Errorf("pgguard_cache_hits_total = %v", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "pgguard_cache_invalidations_total"); n != 2 {
		t.Errorf("invalidations by database: %d series", n)
	}
	if got := testutil.ToFloat64(c.m.invalidations.WithLabelValues("app")); got != 3 {
		t.Errorf("pgguard_cache_invalidations_total{database=app} = %v", got)
	}
}

// A rolled-back transaction invalidates nothing: the proxy resets its
// Pending without calling Invalidate.
func TestRollbackInvalidatesNothing(t *testing.T) {
	c, _, _ := newCache(t, rulesConfig(branding))
	s, st, r := sess(), bind([]byte("42")), reply(t, "acme")
	lookup(t, c, s, st, r)
	var p Pending
	p.Add(c.Writes([]byte("DELETE FROM tenant_branding")))
	if p.Empty() {
		t.Fatal("DELETE wrote nothing")
	}
	p.Reset() // ROLLBACK
	c.Invalidate(ctx, "app", p.Targets())
	if !lookup(t, c, s, st, r) {
		t.Error("miss after a rollback")
	}
}

func TestTTL(t *testing.T) {
	c, clk, _ := newCache(t, rulesConfig(config.CacheRule{Name: "branding", Query: brandingSQL, TTL: config.D(time.Minute)}))
	s, st, r := sess(), bind([]byte("42")), reply(t, "acme")
	lookup(t, c, s, st, r)
	clk.add(59 * time.Second)
	if !lookup(t, c, s, st, r) {
		t.Fatal("miss before the ttl")
	}
	clk.add(time.Second)
	if lookup(t, c, s, st, r) {
		t.Fatal("hit at the ttl")
	}
	if rs := c.status().Rules[0]; rs.Invalidated != 0 {
		t.Errorf("an expired entry counted as invalidated: %+v", rs)
	}
}

func TestOversizeAndUncacheableReplies(t *testing.T) {
	c, _, reg := newCache(t, rulesConfig(config.CacheRule{Name: "small", Query: brandingSQL, MaxEntryBytes: 100}))
	s, st := sess(), bind([]byte("42"))
	big := reply(t, strings.Repeat("x", 200))
	k, _ := c.Key(s, st)
	c.Get(ctx, k)
	if c.Put(ctx, k, big) {
		t.Fatal("oversize reply stored")
	}
	if _, hit := c.Get(ctx, k); hit {
		t.Fatal("oversize reply answered")
	}
	if got := testutil.ToFloat64(c.m.oversize.WithLabelValues("small")); got != 1 {
		t.Errorf("pgguard_cache_oversize_total = %v", got)
	}
	cut := reply(t, "a")
	if c.Put(ctx, k, cut[:len(cut)-2]) {
		t.Error("a cut reply stored")
	}
	if c.Put(ctx, &Key{rule: k.rule, digest: k.digest, fields: k.fields}, reply(t, "a")) {
		t.Error("Put without Get stored")
	}
	if n, err := testutil.GatherAndCount(reg, "pgguard_cache_oversize_total", "pgguard_cache_hits_total"); err != nil || n != 2 {
		t.Errorf("metrics: %d series, %v", n, err)
	}
}

// The stored reply is a copy: the proxy reuses its buffers.
func TestPutCopiesTheReply(t *testing.T) {
	c, _, _ := newCache(t, rulesConfig(branding))
	s, st := sess(), bind([]byte("42"))
	buf := reply(t, "acme")
	want := bytes.Clone(buf)
	lookup(t, c, s, st, buf)
	for i := range buf {
		buf[i] = 0
	}
	k, _ := c.Key(s, st)
	if got, hit := c.Get(ctx, k); !hit || !bytes.Equal(got, want) {
		t.Errorf("hit %v with %q", hit, got)
	}
}

func TestReset(t *testing.T) {
	c, _, _ := newCache(t, rulesConfig(branding))
	s, st, r := sess(), bind([]byte("42")), reply(t, "acme")
	lookup(t, c, s, st, r)
	c.Reset(ctx)
	if lookup(t, c, s, st, r) {
		t.Error("hit after Reset")
	}
	if !lookup(t, c, s, st, r) {
		t.Error("nothing stored after Reset")
	}
}

// Rules change live; a rule keeping its name keeps its counters; without
// rules nothing matches and writes are not even analysed.
func TestReconfigure(t *testing.T) {
	c, _, _ := newCache(t, rulesConfig(branding))
	s, st, r := sess(), bind([]byte("42")), reply(t, "acme")
	lookup(t, c, s, st, r)
	lookup(t, c, s, st, r)
	cfg := rulesConfig(config.CacheRule{Name: "branding", Query: brandingSQL, TTL: config.D(time.Hour)},
		config.CacheRule{Name: "tenants", Query: "SELECT * FROM tenants WHERE id = $1"})
	cfg.CacheStore.LocalMaxBytes = 1 << 10
	c.Reconfigure(cfg)
	st2 := c.status()
	if len(st2.Rules) != 2 || st2.Rules[0].Hits != 1 || st2.Rules[0].TTL != "1h0m0s" || st2.LocalMaxBytes != 1<<10 {
		t.Errorf("after reload: %+v", st2)
	}
	c.Reconfigure(rulesConfig())
	if c.Enabled() {
		t.Error("enabled without rules")
	}
	if _, ok := c.Key(s, st); ok {
		t.Error("matched without rules")
	}
	if w := c.Writes([]byte("DROP TABLE x")); !w.Empty() {
		t.Errorf("writes analysed without rules: %+v", w)
	}
}

func TestPending(t *testing.T) {
	var p Pending
	if !p.Empty() {
		t.Fatal("zero Pending not empty")
	}
	p.Add(Targets{Tables: []string{"a", "b"}})
	p.Add(Targets{Tables: []string{"b", "c"}})
	if got := p.Targets(); got.All || strings.Join(got.Tables, ",") != "a,b,c" {
		t.Errorf("targets %+v", got)
	}
	p.Add(Targets{All: true})
	p.Add(Targets{Tables: []string{"d"}})
	if got := p.Targets(); !got.All || len(got.Tables) != 0 {
		t.Errorf("after All: %+v", got)
	}
	p.Reset()
	if !p.Empty() {
		t.Error("not empty after Reset")
	}
	// Take hands over a copy: what is added next does not change it.
	p.Add(Targets{Tables: []string{"x"}})
	taken := p.Take()
	p.Add(Targets{Tables: []string{"y"}})
	if strings.Join(taken.Tables, ",") != "x" || strings.Join(p.Targets().Tables, ",") != "y" {
		t.Errorf("taken %+v, then %+v", taken, p.Targets())
	}
}

// SHOW CACHE: a row per rule and a total that says where entries live.
func TestStatsRows(t *testing.T) {
	c, _, _ := newCache(t, rulesConfig(branding))
	lookup(t, c, sess(), bind([]byte("42")), reply(t, "acme"))
	lookup(t, c, sess(), bind([]byte("42")), reply(t, "acme"))
	cols, rows := c.StatsRows()
	if len(rows) != 2 || len(rows[0]) != len(cols) {
		t.Fatalf("%q %q", cols, rows)
	}
	if rows[0][0] != "branding" || rows[0][3] != "1" || rows[0][4] != "1" || rows[0][10] != "0.50" {
		t.Errorf("rule row %q", rows[0])
	}
	if rows[1][0] != "(total)" || !strings.Contains(rows[1][12], "redis: off") {
		t.Errorf("total row %q", rows[1])
	}
}
