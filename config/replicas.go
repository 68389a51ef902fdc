package config

import (
	"net/netip"
	"strings"
)

// EnvReplicaURL names read replicas of the NEON_DATABASE_URL entry,
// comma-separated (NEON_READ_REPLICA_URL).
const EnvReplicaURL = "NEON_READ_REPLICA_URL"

// Route is one [[routes]] rule: where the read-only work of the clients it
// matches goes. The first matching rule decides.
type Route struct {
	// Name identifies the rule in logs and SHOW CLIENTS (name).
	Name string `toml:"name"`
	// Match keys, as in [[limits]]; empty matches anything (database, user,
	// application_name, client_addr: an IP or a CIDR prefix).
	Database        string `toml:"database"`
	User            string `toml:"user"`
	ApplicationName string `toml:"application_name"`
	ClientAddr      string `toml:"client_addr"`
	// To is "replica" (read-only work goes to a replica) or "primary"
	// (everything stays on the primary, whatever replica_reads says) (to).
	To string `toml:"to"`
}

// Replica is the [replica] table: how reads are routed to replicas.
type Replica struct {
	// PoolSize is the server connections per replica (pool_size).
	PoolSize int `toml:"pool_size"`
	// RYWScope is whose writes a read must see (read-your-writes):
	// "session", "user", "application", or "off" (ryw_scope).
	RYWScope string `toml:"ryw_scope"`
	// RYWWait bounds how long a read waits for a replica to replay a write
	// of its scope before it goes to the primary (ryw_wait).
	RYWWait Duration `toml:"ryw_wait"`
	// MaxLagBytes skips a replica whose replay is this many bytes of WAL
	// behind the newest primary position pgguard has seen; 0: no bound
	// (max_lag_bytes).
	MaxLagBytes int64 `toml:"max_lag_bytes"`
	// MaxLag skips a replica whose last replayed commit is older than this
	// while it has WAL left to replay; "0": no bound (max_lag).
	MaxLag Duration `toml:"max_lag"`
}

// ReplicaOn reports whether database name has replicas to route to.
func (c *Config) ReplicaOn(name string) bool {
	d := c.Databases[name]
	return d != nil && len(d.Replicas) > 0
}

func (v *validator) replicas() {
	c := v.c
	for _, name := range databaseNames(c) {
		d := c.Databases[name]
		if d == nil {
			continue
		}
		key := joinKey("databases", name)
		for i, r := range d.Replicas {
			if r == "" {
				v.bad(indexKey(joinKey(key, "replicas"), i), "is empty; want a replica URL such as postgres://user:password@ep-r.example.neon.tech/dbname")
			} else if why := checkPostgresURL(r); why != "" {
				v.bad(indexKey(joinKey(key, "replicas"), i), "%s", why)
			}
		}
		if d.ReplicaReads != "" {
			v.oneOf(joinKey(key, "replica_reads"), d.ReplicaReads, "off", "read_only")
		}
		if d.ReplicaReads == "read_only" && len(d.Replicas) == 0 {
			v.bad(joinKey(key, "replica_reads"), "is \"read_only\" but the database names no replicas; add replicas = [URL, ...] or set %s", EnvReplicaURL)
		}
	}
	names := map[string]int{}
	for i, r := range c.Routes {
		key := indexKey("routes", i)
		switch j, dup := names[r.Name]; {
		case r.Name == "":
			v.bad(key+".name", "is missing; every route needs a name, used in logs and SHOW CLIENTS")
		case dup:
			v.bad(key+".name", "%q is already routes[%d]; route names must be unique", r.Name, j)
		default:
			names[r.Name] = i
		}
		v.oneOf(key+".to", r.To, "replica", "primary")
		if r.ClientAddr != "" {
			if _, err := netip.ParseAddr(r.ClientAddr); err != nil {
				if _, err := netip.ParsePrefix(r.ClientAddr); err != nil {
					v.bad(key+".client_addr", "%q is neither an IP address nor a CIDR prefix; want e.g. \"10.0.0.5\" or \"10.0.0.0/8\"", r.ClientAddr)
				}
			}
		}
		if r.Database != "" && c.Databases[r.Database] == nil {
			v.bad(key+".database", "%q is not a configured database", r.Database)
		}
	}
	p := c.Replica
	v.atLeast("replica.pool_size", p.PoolSize, 1)
	v.oneOf("replica.ryw_scope", p.RYWScope, "session", "user", "application", "off")
	v.nonNegative("replica.ryw_wait", p.RYWWait)
	v.nonNegative("replica.max_lag", p.MaxLag)
	if p.MaxLagBytes < 0 {
		v.bad("replica.max_lag_bytes", "%d is negative; want 0 (no bound) or more", p.MaxLagBytes)
	}
}

// applyReplicaEnv applies NEON_READ_REPLICA_URL to the entry target that
// NEON_DATABASE_URL chose, or to the only entry.
func applyReplicaEnv(c *Config, getenv func(string) string, o *origin, ps *problems, target string) {
	raw := getenv(EnvReplicaURL)
	if raw == "" {
		return
	}
	if target == "" && len(c.Databases) == 1 {
		target = onlyDatabase(c)
	}
	if target == "" {
		ps.add(Problem{File: EnvReplicaURL, Key: "databases", Reason: "cannot tell which database these replicas are for; set NEON_DATABASE_URL too, or configure exactly one database"})
		return
	}
	var urls []string
	for _, u := range strings.Split(raw, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if c.Databases[target] == nil {
		c.Databases[target] = &Database{}
	}
	c.Databases[target].Replicas = urls
	o.env[joinKey(joinKey("databases", target), "replicas")] = EnvReplicaURL
}
