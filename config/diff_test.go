package config

import (
	"slices"
	"testing"
	"time"
)

func diffBase() *Config {
	c := Default()
	c.Databases["app"] = &Database{Primary: "postgres://a:pw@h1/app", Fallback: "postgres://a@h2/app"}
	c.Databases["old"] = &Database{Primary: "postgres://a:pw@h1/old"}
	c.Users = []User{{Name: "app", Password: "pw"}, {Name: "gone", Password: "x"}}
	c.Limits = []Limit{{Name: "workers", MaxConnections: 2}}
	return c
}

func TestDiff(t *testing.T) {
	old := diffBase()
	new := old.clone()
	new.Listen = "127.0.0.1:7000"
	new.TLSCert, new.TLSKey = "c.pem", "k.pem"
	new.ReadOnly = true
	new.Pool.Mode = "session"
	new.Pool.Size = 20
	new.Pool.WaitTimeout = D(time.Second)
	new.Limiter.RedisURL = "redis://h"
	new.Databases["app"].Primary = "postgres://a:pw@h3/app"
	new.Databases["app"].PoolSize = 4
	delete(new.Databases, "old")
	new.Databases["added"] = &Database{Primary: "postgres://a:pw@h1/added"}
	new.Users = []User{{Name: "app", Password: "new"}, {Name: "fresh", Password: "y"}}
	new.Limits[0].MaxConnections = 3
	new.Admin.Users = []string{"app"}

	changed, restart := Diff(old, new)
	wantChanged := []string{
		"admin.users",
		"databases.added",
		"databases.app.pool_size",
		"databases.app.primary",
		"databases.old",
		"limiter.redis_url",
		"limits.workers.max_connections",
		"listen",
		"pool.mode",
		"pool.size",
		"pool.wait_timeout",
		"read_only",
		"tls_cert",
		"tls_key",
		"users.app.password",
		"users.fresh",
		"users.gone",
	}
	if !slices.Equal(changed, wantChanged) {
		t.Errorf("changed =\n%q\nwant\n%q", changed, wantChanged)
	}
	wantRestart := []string{"databases.app.primary", "limiter.redis_url", "listen", "pool.mode", "tls_cert", "tls_key"}
	if !slices.Equal(restart, wantRestart) {
		t.Errorf("needsRestart = %q, want %q", restart, wantRestart)
	}
}

func TestDiffEqualAndLiveOnly(t *testing.T) {
	old := diffBase()
	if changed, restart := Diff(old, old.clone()); changed != nil || restart != nil {
		t.Errorf("identical configs: %v %v", changed, restart)
	}
	new := old.clone()
	new.Databases["app"].Fallback = ""
	new.HTTPListen = ""
	new.QueryLog.Slow = D(time.Second)
	changed, restart := Diff(old, new)
	if !slices.Equal(changed, []string{"databases.app.fallback", "http_listen", "querylog.slow"}) {
		t.Errorf("changed = %q", changed)
	}
	if !slices.Equal(restart, []string{"databases.app.fallback", "http_listen"}) {
		t.Errorf("needsRestart = %q", restart)
	}
}
