package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Environment variables read by Load. Each wins over the config file.
const (
	// EnvConfig is the config file path used when Load gets no path.
	EnvConfig = "PGGUARD_CONFIG"
	// EnvPrimaryURL is the primary upstream URL; see applyDatabaseEnv for
	// which database entry it lands in.
	EnvPrimaryURL = "NEON_DATABASE_URL"
	// EnvFallbackURL is the fallback URL of the entry EnvPrimaryURL targets
	// (or of the only database when EnvPrimaryURL is unset).
	EnvFallbackURL = "PGGUARD_FALLBACK_URL"
	// EnvPoolSize overrides pool.size.
	EnvPoolSize = "DATABASE_POOL_SIZE"
	// EnvMaxOverflow overrides pool.max_overflow.
	EnvMaxOverflow = "DATABASE_MAX_OVERFLOW"
	// EnvReadOnly overrides read_only: true/1/on/yes or false/0/off/no.
	EnvReadOnly = "READ_ONLY_MODE"
	// EnvListen overrides listen (a pgguard addition to the contract).
	EnvListen = "PGGUARD_LISTEN"
	// EnvHTTPListen overrides http_listen (a pgguard addition to the contract).
	EnvHTTPListen = "PGGUARD_HTTP_LISTEN"
	// EnvDisableWorkers overrides disable_workers: true/1/on/yes or false/0/off/no.
	EnvDisableWorkers = "DISABLE_WORKERS"
	// EnvFleetMaxConnections sets fleet_max_connections of the entry
	// NEON_DATABASE_URL targets (or of the only database).
	EnvFleetMaxConnections = "PGGUARD_FLEET_MAX_CONNECTIONS"
	// EnvRunRewriteEnv overrides run.rewrite_env: variable names, comma-separated.
	EnvRunRewriteEnv = "PGGUARD_RUN_REWRITE_ENV"
)

// applyEnv applies the environment over c, recording in o which keys it set.
// An empty variable counts as unset.
func applyEnv(c *Config, getenv func(string) string, o *origin, ps *problems) {
	setString := func(env, key string, dst *string) {
		if v := getenv(env); v != "" {
			*dst = v
			o.env[key] = env
		}
	}
	setString(EnvListen, "listen", &c.Listen)
	setString(EnvHTTPListen, "http_listen", &c.HTTPListen)

	setInt := func(env, key string, dst *int) {
		v := getenv(env)
		if v == "" {
			return
		}
		o.env[key] = env
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			ps.add(Problem{File: env, Key: key, Reason: fmt.Sprintf("%q is not an integer; want a whole number such as 8", v)})
			return
		}
		*dst = n
	}
	setInt(EnvPoolSize, "pool.size", &c.Pool.Size)
	setInt(EnvMaxOverflow, "pool.max_overflow", &c.Pool.MaxOverflow)

	setBool := func(env, key string, dst *bool) {
		v := getenv(env)
		if v == "" {
			return
		}
		o.env[key] = env
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "1", "on", "yes":
			*dst = true
		case "false", "0", "off", "no":
			*dst = false
		default:
			ps.add(Problem{File: env, Key: key, Reason: fmt.Sprintf("%q is not a boolean; want true, 1, on, yes or false, 0, off, no", v)})
		}
	}
	setBool(EnvReadOnly, "read_only", &c.ReadOnly)
	setBool(EnvDisableWorkers, "disable_workers", &c.DisableWorkers)

	if v := getenv(EnvRunRewriteEnv); v != "" {
		o.env["run.rewrite_env"] = EnvRunRewriteEnv
		c.Run.RewriteEnv = nil
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				c.Run.RewriteEnv = append(c.Run.RewriteEnv, name)
			}
		}
	}

	applyDatabaseEnv(c, getenv, o, ps)
}

// applyDatabaseEnv applies NEON_DATABASE_URL and PGGUARD_FALLBACK_URL.
//
// NEON_DATABASE_URL targets the database entry named after the URL's dbname
// (its path; the user name when the path is empty, as PostgreSQL does):
//   - no databases in the file: the entry is created;
//   - an entry of that name exists: its primary is replaced;
//   - exactly one entry, of another name: its primary is replaced, so a file
//     written for "app" can point at Neon's "neondb" without renaming;
//   - several entries, none of that name: an error, because picking one
//     silently could send an application's traffic to the wrong database.
//
// PGGUARD_FALLBACK_URL sets the fallback of the entry NEON_DATABASE_URL
// targeted, or of the only entry when NEON_DATABASE_URL is unset.
func applyDatabaseEnv(c *Config, getenv func(string) string, o *origin, ps *problems) {
	if c.Databases == nil {
		c.Databases = map[string]*Database{}
	}
	target := ""
	if raw := getenv(EnvPrimaryURL); raw != "" {
		name := urlDBName(raw)
		switch {
		case name == "":
			ps.add(Problem{File: EnvPrimaryURL, Key: "databases", Reason: fmt.Sprintf("%s names no database; want postgres://user:password@host/dbname", RedactURL(raw))})
		case len(c.Databases) == 0:
			c.Databases[name] = &Database{}
			o.env[joinKey("databases", name)] = EnvPrimaryURL
			target = name
		case c.Databases[name] != nil:
			target = name
		case len(c.Databases) == 1:
			target = onlyDatabase(c)
		default:
			ps.add(Problem{File: EnvPrimaryURL, Key: "databases", Reason: fmt.Sprintf(
				"the URL's database %q is not one of the configured databases (%s); with several databases, name one of them in the URL's path",
				name, strings.Join(databaseNames(c), ", "))})
		}
		if target != "" {
			if c.Databases[target] == nil {
				c.Databases[target] = &Database{}
			}
			c.Databases[target].Primary = raw
			o.env[joinKey(joinKey("databases", target), "primary")] = EnvPrimaryURL
		}
	}
	applyReplicaEnv(c, getenv, o, ps, target)
	if raw := getenv(EnvFallbackURL); raw != "" {
		if target == "" && len(c.Databases) == 1 {
			target = onlyDatabase(c)
		}
		if target == "" {
			ps.add(Problem{File: EnvFallbackURL, Key: "databases", Reason: "cannot tell which database this fallback is for; set NEON_DATABASE_URL too, or configure exactly one database"})
			return
		}
		if c.Databases[target] == nil {
			c.Databases[target] = &Database{}
		}
		c.Databases[target].Fallback = raw
		o.env[joinKey(joinKey("databases", target), "fallback")] = EnvFallbackURL
	}
	if raw := getenv(EnvFleetMaxConnections); raw != "" {
		if target == "" && len(c.Databases) == 1 {
			target = onlyDatabase(c)
		}
		if target == "" {
			ps.add(Problem{File: EnvFleetMaxConnections, Key: "databases", Reason: "cannot tell which database this fleet cap is for; set NEON_DATABASE_URL too, or configure exactly one database"})
			return
		}
		key := joinKey(joinKey("databases", target), "fleet_max_connections")
		o.env[key] = EnvFleetMaxConnections
		n, err := strconv.Atoi(strings.TrimSpace(raw))
		if err != nil {
			ps.add(Problem{File: EnvFleetMaxConnections, Key: key, Reason: fmt.Sprintf("%q is not an integer; want a whole number such as 90 (0: no fleet cap)", raw)})
			return
		}
		if c.Databases[target] == nil {
			c.Databases[target] = &Database{}
		}
		c.Databases[target].FleetMaxConnections = n
	}
}

// urlDBName is the database a connection string names: a URL's path, a
// keyword/value string's dbname, else the user name.
func urlDBName(raw string) string {
	if u, ok := splitURL(raw); ok {
		if name := u.dbName(); name != "" {
			return name
		}
		user, _, _ := u.credentials()
		return user
	}
	if pc, err := pgconn.ParseConfig(raw); err == nil {
		return pc.Database
	}
	return ""
}

// deriveUsers fills an empty [[users]] from the databases' primary URLs so
// that NEON_DATABASE_URL alone gives a working pgguard: applications log in
// to pgguard with the same user and password as in the URL. Databases are
// taken in name order; a user name seen twice keeps its first password. URLs
// without a password give no user. Derived users are not admin users.
func deriveUsers(c *Config, o *origin) {
	if len(c.Users) > 0 {
		return
	}
	seen := map[string]bool{}
	for _, name := range databaseNames(c) {
		d := c.Databases[name]
		if d == nil {
			continue
		}
		u, ok := splitURL(d.Primary)
		if !ok {
			continue
		}
		user, password, _ := u.credentials()
		if user == "" || password == "" || seen[user] {
			continue
		}
		seen[user] = true
		key := indexKey("users", len(c.Users))
		c.Users = append(c.Users, User{Name: user, Password: password})
		// Problems with a derived user point at the URL it came from.
		primary := joinKey(joinKey("databases", name), "primary")
		if env, ok := o.env[primary]; ok {
			o.env[key] = env
		} else if line, ok := o.lines[primary]; ok {
			o.lines[key] = line
		}
	}
}

func databaseNames(c *Config) []string {
	names := make([]string, 0, len(c.Databases))
	for name := range c.Databases {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func onlyDatabase(c *Config) string {
	for name := range c.Databases {
		return name
	}
	return ""
}
