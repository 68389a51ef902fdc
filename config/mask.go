package config

import (
	"bytes"
	"fmt"

	"github.com/BurntSushi/toml"
)

// Masked returns the effective configuration as TOML with every password
// replaced by "****": users' passwords and the passwords inside the primary,
// fallback, replica and redis_url URLs (limiter and cache_store). An empty password stays empty, so a missing
// one is still visible. c is not modified.
func (c *Config) Masked() string {
	m := c.clone()
	for _, d := range m.Databases {
		if d != nil {
			d.Primary = RedactURL(d.Primary)
			d.Fallback = RedactURL(d.Fallback)
			for i, r := range d.Replicas {
				d.Replicas[i] = RedactURL(r)
			}
		}
	}
	for i := range m.Users {
		if m.Users[i].Password != "" {
			m.Users[i].Password = mask
		}
	}
	m.Limiter.RedisURL = RedactURL(m.Limiter.RedisURL)
	m.CacheStore.RedisURL = RedactURL(m.CacheStore.RedisURL)
	var b bytes.Buffer
	enc := toml.NewEncoder(&b)
	enc.Indent = ""
	if err := enc.Encode(m); err != nil {
		return fmt.Sprintf("# cannot encode the configuration: %v\n", err)
	}
	return b.String()
}

// clone returns a deep copy of c: nothing it shares with c is mutable.
func (c *Config) clone() *Config {
	m := *c
	m.Databases = make(map[string]*Database, len(c.Databases))
	for name, d := range c.Databases {
		if d != nil {
			cp := *d
			cp.Replicas = append([]string(nil), d.Replicas...)
			d = &cp
		}
		m.Databases[name] = d
	}
	m.Users = append([]User(nil), c.Users...)
	m.Admin.Users = append([]string(nil), c.Admin.Users...)
	m.Limits = append([]Limit(nil), c.Limits...)
	m.Routes = append([]Route(nil), c.Routes...)
	m.Run.RewriteEnv = append([]string(nil), c.Run.RewriteEnv...)
	m.Cache = append([]CacheRule(nil), c.Cache...)
	for i := range m.Cache {
		m.Cache[i].Tables = append([]string(nil), m.Cache[i].Tables...)
		m.Cache[i].TrustedFunctions = append([]string(nil), m.Cache[i].TrustedFunctions...)
	}
	return &m
}
