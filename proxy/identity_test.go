package proxy_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/proxy"
)

// Issue 24, finding 5: invalidations are keyed by the database the writes
// reach, and survive Redis going back in time.

// TestCacheAliasesShareInvalidation: two [databases] names on one
// upstream database: a write through one makes the other's entries miss.
func TestCacheAliasesShareInvalidation(t *testing.T) {
	freshBranding(t)
	ctx := context.Background()
	cfg := testConfig("transaction")
	cfg.Databases["app_alias"] = &config.Database{Primary: pg.URL("app")}
	cfg.Cache = []config.CacheRule{brandingRule()}
	g := startGuard(t, cfg, withCache(t, cfg))
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	alias := connect(t, g.url("app_alias"), pgx.QueryExecModeCacheStatement)
	writer := connect(t, g.url("app"), pgx.QueryExecModeExec)
	sameRow(t, "before", alias, direct, 2)
	if _, err := writer.Exec(ctx, "UPDATE cache_branding SET color = '#alias' WHERE tenant_id = 2"); err != nil {
		t.Fatal(err)
	}
	sameRow(t, "after a write through the other name", alias, direct, 2)
}

// TestCacheRedisRestored: Redis restored from a snapshot taken before a
// write (its generations and entries as they were) must not make the
// entry from before the write a hit again.
func TestCacheRedisRestored(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	freshBranding(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { rdb.Close() })
	g, _ := cacheGuard(t, "transaction", r.URL(), []config.CacheRule{brandingRule()})
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	sameRow(t, "before", conn, direct, 2)
	sameRow(t, "a hit", conn, direct, 2)

	keys, err := rdb.Keys(ctx, "pgguard:cache:*").Result()
	if err != nil || len(keys) < 2 {
		t.Fatalf("redis keys %v: %v", keys, err)
	}
	snapshot := map[string]string{}
	for _, k := range keys {
		snapshot[k] = rdb.Dump(ctx, k).Val()
	}
	if _, err := conn.Exec(ctx, "UPDATE cache_branding SET color = '#restored' WHERE tenant_id = 2"); err != nil {
		t.Fatal(err)
	}
	sameRow(t, "after the write", conn, direct, 2)
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for k, v := range snapshot {
		if err := rdb.Restore(ctx, k, 0, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		sameRow(t, "after redis was restored from before the write", conn, direct, 2)
	}
}

// withCache is a startGuard setup that gives pgguard the result cache of cfg.
func withCache(t testing.TB, cfg *config.Config) func(*proxy.Proxy) {
	rc := newCacheFor(t, cfg)
	return func(p *proxy.Proxy) { p.Cache = rc }
}
