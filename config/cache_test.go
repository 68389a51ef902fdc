package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const cacheBase = `[databases.app]
primary = "postgres://a:pw@127.0.0.1/app"

[[users]]
name = "app"
password = "pw"
`

func TestCacheRules(t *testing.T) {
	p := writeConfig(t, cacheBase+`
[limiter]
redis_url = "redis://127.0.0.1:6379/0"

[[cache]]
name = "branding"
query = "SELECT * FROM tenant_branding WHERE tenant_id = $1"
ttl = "5m"

[[cache]]
name = "hot"
fingerprint = "50FDE20626009ABA"
ttl = "30s"
max_entry_bytes = 4096
tables = ["tenants"]
trusted_functions = ["tenant_slug"]
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Cache) != 2 {
		t.Fatalf("rules: %+v", c.Cache)
	}
	b, h := c.Cache[0], c.Cache[1]
	if b.TTL.Duration != 5*time.Minute || b.MaxEntryBytes != DefaultCacheMaxEntryBytes {
		t.Errorf("branding: %+v", b)
	}
	if h.MaxEntryBytes != 4096 || !slices.Equal(h.Tables, []string{"tenants"}) || !slices.Equal(h.TrustedFunctions, []string{"tenant_slug"}) {
		t.Errorf("hot: %+v", h)
	}
	if fp, err := ParseFingerprint(h.Fingerprint); err != nil || fp != 0x50fde20626009aba {
		t.Errorf("fingerprint %x, %v", fp, err)
	}
	// The store defaults to the limiter's Redis.
	if got := c.CacheRedisURL(); got != "redis://127.0.0.1:6379/0" {
		t.Errorf("CacheRedisURL = %q", got)
	}
	if c.CacheStore.LocalMaxBytes != 4<<20 || c.CacheStore.DegradedTTL.Duration != 5*time.Second {
		t.Errorf("cache_store defaults: %+v", c.CacheStore)
	}
}

func TestCacheRuleRefusals(t *testing.T) {
	p := writeConfig(t, cacheBase+`
[[cache]]
name = "clock"
query = "SELECT now(), * FROM t"
ttl = "0"

[[cache]]
name = "clock"
query = "UPDATE t SET a = 1"
ttl = "1m"

[[cache]]
name = "locked"
query = "SELECT * FROM t FOR UPDATE"
ttl = "1m"

[[cache]]
name = "udf"
query = "SELECT tenant_slug(id) FROM t"
ttl = "1m"

[[cache]]
name = "both"
query = "SELECT 1"
fingerprint = "50fde20626009aba"
ttl = "1m"

[[cache]]
name = "badfp"
fingerprint = "xyz"
ttl = "1m"

[[cache]]
name = "none"
ttl = "1m"
max_entry_bytes = -1

[[cache]]
name = "trusted"
query = "SELECT tenant_slug(id) FROM t"
trusted_functions = ["tenant_slug"]
ttl = "1m"

[cache_store]
redis_url = "http://:storepw@h"
local_max_bytes = -1
degraded_ttl = "-1s"
`)
	_, err := Load(p, noEnv)
	for _, want := range []string{
		":10: cache[0].query: cannot be cached: the query calls now(): its result depends on the time",
		":11: cache[0].ttl: 0s is not accepted",
		":14: cache[1].name: \"clock\" is already cache[0]",
		":15: cache[1].query: cannot be cached: the query is an UPDATE, not a SELECT",
		":20: cache[2].query: cannot be cached: the query has a locking clause (FOR UPDATE/SHARE)",
		":25: cache[3].query: cannot be cached: the query calls tenant_slug(), which is not built into PostgreSQL",
		":31: cache[4].fingerprint: is set together with query",
		":36: cache[5].fingerprint: \"xyz\" is not a fingerprint",
		":39: cache[6]: the rule matches nothing",
		":42: cache[6].max_entry_bytes: -1 is too small",
		":51: cache_store.redis_url: http://:****@h is not a Redis URL",
		":52: cache_store.local_max_bytes: -1 is too small",
		":53: cache_store.degraded_ttl: -1s is not accepted",
	} {
		hasProblem(t, err, p+want)
	}
	if strings.Contains(err.Error(), "cache[7]") || strings.Contains(err.Error(), "storepw") {
		t.Errorf("trusted rule refused or password leaked:\n%v", err)
	}
}

// [[cache]] is an array of tables, so [cache] cannot hold the store's
// settings; the error says where they go.
func TestCacheTableIsNotTheStore(t *testing.T) {
	p := writeConfig(t, cacheBase+`
[cache]
redis_url = "redis://h"
`)
	_, err := Load(p, noEnv)
	hasProblem(t, err, p+":8: cache: is a table; want an array; write each rule as [[cache]], and the store's settings (redis_url, local_max_bytes, degraded_ttl) under [cache_store]")
}

func TestCacheDiffAndMask(t *testing.T) {
	old := diffBase()
	old.Cache = []CacheRule{{Name: "branding", Query: "SELECT 1", TTL: D(time.Minute), MaxEntryBytes: 1}}
	new := old.clone()
	new.Cache[0].TTL = D(time.Hour)
	new.Cache = append(new.Cache, CacheRule{Name: "more"})
	new.CacheStore.RedisURL = "redis://:cachepw@h/1"
	new.CacheStore.DegradedTTL = D(time.Second)
	changed, restart := Diff(old, new)
	want := []string{"cache.branding.ttl", "cache.more", "cache_store.degraded_ttl", "cache_store.redis_url"}
	if !slices.Equal(changed, want) {
		t.Errorf("changed = %q, want %q", changed, want)
	}
	if !slices.Equal(restart, []string{"cache_store.redis_url"}) {
		t.Errorf("needsRestart = %q", restart)
	}
	m := new.Masked()
	if strings.Contains(m, "cachepw") || !strings.Contains(m, "redis://:****@h/1") {
		t.Errorf("cache_store.redis_url not masked:\n%s", m)
	}
	if CacheRedisURL := new.CacheRedisURL(); CacheRedisURL != "redis://:cachepw@h/1" {
		t.Errorf("CacheRedisURL = %q", CacheRedisURL)
	}
}

// TestTableName: a rule's tables resolve as PostgreSQL resolves
// identifiers (issue 24, finding 6), and catalogs are refused.
func TestTableName(t *testing.T) {
	for in, want := range map[string]string{
		"tenants": "tenants", "Tenants": "tenants", "public.X": "x", ` app.public.orders `: "orders",
		`"Tenants"`: "Tenants", `public."My ""Table"""`: `My "Table"`, "orders_2024$": "orders_2024$",
		"": "!", "a b": "!", "public.": "!", `"x`: "!", "a.b.c.d": "!", "pg_stat_activity": "!",
		"pg_catalog.whatever": "!", "information_schema.tables": "!", "1t": "!",
	} {
		got, err := TableName(in)
		if err != nil {
			got = "!"
		}
		if got != want {
			t.Errorf("TableName(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
}
