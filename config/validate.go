package config

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/cache/analyze"
)

// AdminDatabase is the database name of the admin console; no configured
// database may use it.
const AdminDatabase = "pgguard"

// Validate checks every value and returns nil or an *Error listing all
// problems, each located at the file line or environment variable the value
// came from (for a Config not built by Load: "defaults", line 0).
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.top()
	v.databases()
	v.users()
	v.pool()
	v.queryLog()
	v.failover()
	v.limits()
	v.replicas()
	v.limiter()
	v.budget()
	v.cache()
	v.cacheStore()
	v.run()
	v.fleet()
	v.notify()
	return v.ps.err()
}

type validator struct {
	c  *Config
	ps problems
}

func (v *validator) bad(key, format string, args ...any) {
	file, line := v.c.src.where(key)
	v.ps.add(Problem{File: file, Line: line, Key: key, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.bad(key, "%q is not accepted; want %s", val, quoteList(allowed))
	}
}

func (v *validator) nonNegative(key string, d Duration) {
	if d.Duration < 0 {
		v.bad(key, "%s is negative; want a duration of 0 or more", d.Duration)
	}
}

func (v *validator) atLeast(key string, n, lowest int) {
	if n < lowest {
		v.bad(key, "%d is too small; want %d or more", n, lowest)
	}
}

func (v *validator) nonNegativeFloat(key string, f float64) {
	if !(f >= 0) || math.IsInf(f, 0) {
		v.bad(key, "%v is not accepted; want a finite number of 0 or more (0 means no limit)", f)
	}
}

func (v *validator) top() {
	c := v.c
	if r := checkHostPort(c.Listen); r != "" {
		v.bad("listen", "%s", r)
	}
	if c.HTTPListen != "" {
		if r := checkHostPort(c.HTTPListen); r != "" {
			v.bad("http_listen", "%s; or \"\" to disable the HTTP server", r)
		} else if c.HTTPListen == c.Listen {
			v.bad("http_listen", "is the same address as listen; they need different ports")
		}
	}
	v.nonNegative("shutdown_timeout", c.ShutdownTimeout)
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		missing := "tls_key"
		if c.TLSCert == "" {
			missing = "tls_cert"
		}
		v.bad(missing, "is empty but the other of tls_cert/tls_key is set; set both to enable TLS, or neither")
	case c.TLSCert != "":
		ok := true
		for _, f := range []struct{ key, path string }{{"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey}} {
			if _, err := os.Stat(f.path); err != nil {
				v.bad(f.key, "cannot read %q: %v; want a PEM file", f.path, unwrapPathErr(err))
				ok = false
			}
		}
		if ok {
			if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
				v.bad("tls_cert", "%q and %q are not a usable PEM certificate and key: %v", c.TLSCert, c.TLSKey, err)
			}
		}
	}
	v.oneOf("auth_method", c.AuthMethod, "scram-sha-256", "md5", "plain")
	v.atLeast("max_message_size", c.MaxMessageSize, 1024)
	if c.MemoryLimit != 0 {
		v.atLeast("memory_limit", c.MemoryLimit, 8<<20)
	}
	v.atLeast("max_procs", c.MaxProcs, 0)
	v.oneOf("log_level", c.LogLevel, "debug", "info", "warn", "error")
}

func (v *validator) databases() {
	c := v.c
	if len(c.Databases) == 0 {
		v.bad("databases", "no database is configured; add a [databases.NAME] table with a primary URL, or set %s", EnvPrimaryURL)
	}
	for _, name := range databaseNames(c) {
		d := c.Databases[name]
		key := joinKey("databases", name)
		switch name {
		case "":
			v.bad(key, "a database needs a non-empty name")
		case AdminDatabase:
			v.bad(key, "the name %q is reserved for the admin console; pick another name", AdminDatabase)
		}
		if d == nil {
			d = &Database{}
		}
		if d.Primary == "" {
			v.bad(joinKey(key, "primary"), "is missing; every database needs a primary URL such as postgres://user:password@host/dbname")
		} else if r := checkPostgresURL(d.Primary); r != "" {
			v.bad(joinKey(key, "primary"), "%s", r)
		}
		if d.Fallback != "" {
			if r := checkPostgresURL(d.Fallback); r != "" {
				v.bad(joinKey(key, "fallback"), "%s", r)
			}
		}
		if d.PoolSize < 0 {
			v.bad(joinKey(key, "pool_size"), "%d is negative; want 0 (use pool.size) or more", d.PoolSize)
		}
		if d.FleetMaxConnections < 0 {
			v.bad(joinKey(key, "fleet_max_connections"), "%d is negative; want 0 (no fleet cap) or more", d.FleetMaxConnections)
		}
		if d.FleetStaticShare < 0 || d.FleetMaxConnections > 0 && d.FleetStaticShare > d.FleetMaxConnections {
			v.bad(joinKey(key, "fleet_static_share"), "%d is out of range; want 0 (the cap divided by the fleet size last seen) up to fleet_max_connections = %d", d.FleetStaticShare, d.FleetMaxConnections)
		}
	}
}

func (v *validator) users() {
	c := v.c
	if len(c.Users) == 0 {
		v.bad("users", "nobody can log in: no [[users]] are configured and none could be derived from the primary URLs (they carry no password); add a [[users]] entry")
	}
	seen := map[string]int{}
	for i, u := range c.Users {
		key := indexKey("users", i)
		if u.Name == "" {
			v.bad(key+".name", "is missing; every user needs a name")
		} else if j, dup := seen[u.Name]; dup {
			v.bad(key+".name", "%q is already users[%d]; user names must be unique", u.Name, j)
		} else {
			seen[u.Name] = i
		}
		if u.Password == "" {
			v.bad(key+".password", "is missing; want a plain password or a SCRAM-SHA-256 verifier")
			continue
		}
		switch kind := passwordKind(u.Password); {
		case kind == "bad-scram":
			v.bad(key+".password", "looks like a SCRAM-SHA-256 verifier but is malformed; want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> as in pg_authid, or a plain password")
		case kind == "scram" && c.AuthMethod == "md5":
			v.bad(key+".password", "a SCRAM-SHA-256 verifier cannot check md5 logins; with auth_method = \"md5\" want a plain password or an md5 hash")
		case kind == "md5" && c.AuthMethod == "scram-sha-256":
			v.bad(key+".password", "an md5 hash cannot check SCRAM-SHA-256 logins; want a plain password or a SCRAM-SHA-256 verifier, or set auth_method = \"md5\"")
		}
	}
	v.oneOf("admin.http_auth", c.Admin.HTTPAuth, "auto", "always")
	for _, a := range c.Admin.Users {
		if _, ok := seen[a]; !ok {
			v.bad("admin.users", "%q is not a [[users]] name; an admin user must also be listed in [[users]]", a)
		}
	}
}

func (v *validator) pool() {
	p := v.c.Pool
	v.oneOf("pool.mode", p.Mode, "transaction", "session")
	v.atLeast("pool.size", p.Size, 1)
	v.atLeast("pool.max_overflow", p.MaxOverflow, 0)
	v.atLeast("pool.max_client_conn", p.MaxClientConn, 1)
	v.atLeast("pool.max_prepared_statements", p.MaxPreparedStatements, 0)
	for _, d := range []struct {
		key string
		d   Duration
	}{
		{"pool.wait_timeout", p.WaitTimeout},
		{"pool.client_idle_timeout", p.ClientIdleTimeout},
		{"pool.idle_transaction_timeout", p.IdleTransactionTimeout},
		{"pool.query_timeout", p.QueryTimeout},
		{"pool.cancel_timeout", p.CancelTimeout},
		{"pool.server_check_after", p.ServerCheckAfter},
		{"pool.server_idle_timeout", p.ServerIdleTimeout},
		{"pool.server_lifetime", p.ServerLifetime},
		{"pool.connect_timeout", p.ConnectTimeout},
		{"pool.login_timeout", p.LoginTimeout},
		{"pool.leak_warn_after", p.LeakWarnAfter},
	} {
		v.nonNegative(d.key, d.d)
	}
	// Kernel limits (tcp(7)): keepalive times in whole seconds up to 32767,
	// up to 127 probes, TCP_USER_TIMEOUT in milliseconds as an int.
	for _, d := range []struct {
		key, zero string
		d         Duration
	}{
		{"pool.server_tcp_keepalive_idle", "keepalive off", p.ServerTCPKeepaliveIdle},
		{"pool.server_tcp_keepalive_interval", "the OS default", p.ServerTCPKeepaliveInterval},
	} {
		if d.d.Duration != 0 && (d.d.Duration < time.Second || d.d.Duration > 32767*time.Second) {
			v.bad(d.key, "%s is not accepted; want 0 (%s) or 1s to 32767s", d.d.Duration, d.zero)
		}
	}
	if n := p.ServerTCPKeepaliveCount; n < 0 || n > 127 {
		v.bad("pool.server_tcp_keepalive_count", "%d is not accepted; want 0 (the OS default) to 127", n)
	}
	if d := p.ServerTCPUserTimeout.Duration; d < 0 || d > math.MaxInt32*time.Millisecond {
		v.bad("pool.server_tcp_user_timeout", "%s is not accepted; want 0 (the OS default) or a duration up to 596h", d)
	}
}

func (v *validator) queryLog() {
	q := v.c.QueryLog
	v.nonNegative("querylog.slow", q.Slow)
	v.atLeast("querylog.max_shapes", q.MaxShapes, 1)
	v.atLeast("querylog.advisor_records", q.AdvisorRecords, 0)
}

func (v *validator) failover() {
	f := v.c.Failover
	v.atLeast("failover.failure_threshold", f.FailureThreshold, 1)
	if f.ProbeInterval.Duration <= 0 {
		v.bad("failover.probe_interval", "%s is not accepted; want a positive duration such as \"5s\"", f.ProbeInterval.Duration)
	} else if f.ProbeMaxInterval.Duration < f.ProbeInterval.Duration {
		v.bad("failover.probe_max_interval", "%s is below probe_interval (%s); want probe_interval or more", f.ProbeMaxInterval.Duration, f.ProbeInterval.Duration)
	}
	v.nonNegative("failover.failback_after", f.FailbackAfter)
	v.oneOf("failover.split_policy", f.SplitPolicy, "fail_over", "refuse")
}

func (v *validator) limits() {
	names := map[string]int{}
	for i, l := range v.c.Limits {
		key := indexKey("limits", i)
		switch j, dup := names[l.Name]; {
		case l.Name == "":
			v.bad(key+".name", "is missing; every rule needs a name, used in messages and metrics")
		case dup:
			v.bad(key+".name", "%q is already limits[%d]; rule names must be unique", l.Name, j)
		default:
			names[l.Name] = i
		}
		if l.Action != "" {
			v.oneOf(key+".action", l.Action, "delay", "reject")
		}
		if l.ClientAddr != "" {
			if _, err := netip.ParseAddr(l.ClientAddr); err != nil {
				if _, err := netip.ParsePrefix(l.ClientAddr); err != nil {
					v.bad(key+".client_addr", "%q is neither an IP address nor a CIDR prefix; want e.g. \"10.0.0.5\" or \"10.0.0.0/8\"", l.ClientAddr)
				}
			}
		}
		v.atLeast(key+".max_connections", l.MaxConnections, 0)
		v.nonNegativeFloat(key+".queries_per_second", l.QueriesPerSecond)
		v.nonNegativeFloat(key+".queries_per_minute", l.QueriesPerMinute)
		v.nonNegativeFloat(key+".queries_per_hour", l.QueriesPerHour)
		v.atLeast(key+".burst", l.Burst, 0)
		v.nonNegative(key+".max_delay", l.MaxDelay)
		if l.MaxConnections == 0 && l.QueriesPerSecond == 0 && l.QueriesPerMinute == 0 && l.QueriesPerHour == 0 && !l.Worker && l.Priority == 0 {
			v.bad(key, "the rule limits nothing; set max_connections, one of queries_per_second, queries_per_minute, queries_per_hour, priority, or worker = true")
		}
	}
}

func (v *validator) limiter() {
	l := v.c.Limiter
	v.redisURL("limiter.redis_url", l.RedisURL)
	v.atLeast("limiter.queries_per_hour_warn", l.QueriesPerHourWarn, 0)
}

func (v *validator) redisURL(key, s string) {
	if s == "" {
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		v.bad(key, "%s is not a Redis URL; want redis://[:password@]host:port/db, rediss://... or unix:///path", RedactURL(s))
	}
}

func (v *validator) budget() {
	b := v.c.Budget
	v.nonNegative("budget.suspend_after", b.SuspendAfter)
	if !(b.ComputeUnits > 0) || math.IsInf(b.ComputeUnits, 0) {
		v.bad("budget.compute_units", "%v is not accepted; want the compute size in CU, above 0 (e.g. 0.25)", b.ComputeUnits)
	}
	if !(b.MonthlyCUHours >= 0) || math.IsInf(b.MonthlyCUHours, 0) {
		v.bad("budget.monthly_cu_hours", "%v is not accepted; want CU-hours per month, 0 or more (0 disables the guard)", b.MonthlyCUHours)
	}
	if !(b.AlertAt > 0 && b.AlertAt <= 1) {
		v.bad("budget.alert_at", "%v is not accepted; want a fraction above 0 and at most 1, e.g. 0.8", b.AlertAt)
	}
	v.oneOf("budget.on_exhausted", b.OnExhausted, "alert", "read_only", "reject_low_priority", "fallback")
	if b.OnExhausted == "fallback" && b.MonthlyCUHours > 0 && !v.anyFallback() {
		v.bad("budget.on_exhausted", "\"fallback\" needs a database with a fallback URL; add one or choose alert, read_only or reject_low_priority")
	}
}

// cache checks the [[cache]] rules. A rule's query must be one the cache
// may answer: a single read-only SELECT, no volatile function, no locking
// clause (cache/analyze says why not).
func (v *validator) cache() {
	names := map[string]int{}
	for i, r := range v.c.Cache {
		key := indexKey("cache", i)
		switch j, dup := names[r.Name]; {
		case r.Name == "":
			v.bad(key+".name", "is missing; every rule needs a name, used in metrics and SHOW CACHE")
		case dup:
			v.bad(key+".name", "%q is already cache[%d]; rule names must be unique", r.Name, j)
		default:
			names[r.Name] = i
		}
		switch {
		case r.Query == "" && r.Fingerprint == "":
			v.bad(key, "the rule matches nothing; set query (the SQL, matched by shape) or fingerprint (16 hex digits from SHOW QUERIES)")
		case r.Query != "" && r.Fingerprint != "":
			v.bad(key+".fingerprint", "is set together with query; set one of them")
		case r.Query != "":
			info := analyze.Analyze(r.Query)
			if why := info.Check(r.TrustedFunctions); why != "" {
				v.bad(key+".query", "cannot be cached: the query %s", why)
			}
		default:
			if _, err := ParseFingerprint(r.Fingerprint); err != nil {
				v.bad(key+".fingerprint", "%q is not a fingerprint; want the 16 hex digits of SHOW QUERIES' fingerprint column", r.Fingerprint)
			}
		}
		if r.TTL.Duration <= 0 {
			v.bad(key+".ttl", "%s is not accepted; want how long a result may be served from the cache, such as \"5m\"", r.TTL.Duration)
		}
		v.atLeast(key+".max_entry_bytes", r.MaxEntryBytes, 1)
		for _, t := range r.Tables {
			if _, err := TableName(t); err != nil {
				v.bad(key+".tables", "%v", err)
			}
		}
		for _, f := range r.TrustedFunctions {
			if strings.TrimSpace(f) == "" {
				v.bad(key+".trusted_functions", "holds an empty name; want function names such as \"tenant_slug\"")
			}
		}
	}
}

// ParseFingerprint reads a query shape's fingerprint as SHOW QUERIES prints
// it: 16 hex digits (any case, an optional 0x).
func ParseFingerprint(s string) (uint64, error) {
	s = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x")
	if len(s) != 16 {
		return 0, fmt.Errorf("fingerprint %q: want 16 hex digits", s)
	}
	return strconv.ParseUint(s, 16, 64)
}

func (v *validator) cacheStore() {
	s := v.c.CacheStore
	v.redisURL("cache_store.redis_url", s.RedisURL)
	v.atLeast("cache_store.local_max_bytes", s.LocalMaxBytes, 0)
	if s.DegradedTTL.Duration <= 0 {
		v.bad("cache_store.degraded_ttl", "%s is not accepted; want a positive duration such as \"5s\"", s.DegradedTTL.Duration)
	}
}

func (v *validator) run() {
	seen := map[string]bool{}
	for _, name := range v.c.Run.RewriteEnv {
		switch {
		case name == "" || strings.ContainsAny(name, "= \t\x00"):
			v.bad("run.rewrite_env", "%q is not an environment variable name; want names such as \"DATABASE_URL\"", name)
		case seen[name]:
			v.bad("run.rewrite_env", "%q is listed twice", name)
		}
		seen[name] = true
	}
}

func (v *validator) anyFallback() bool {
	for _, d := range v.c.Databases {
		if d != nil && d.Fallback != "" {
			return true
		}
	}
	return false
}

// checkHostPort returns why addr is not host:port, or "".
func checkHostPort(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port; want e.g. \"127.0.0.1:6432\" or \":6432\"", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("%q has port %q; want a number from 0 to 65535", addr, port)
	}
	return ""
}

// checkPostgresURL returns why s is not a usable connection string, or "".
// The reason never contains the password.
func checkPostgresURL(s string) string {
	_, err := pgconn.ParseConfig(s)
	if err == nil {
		return ""
	}
	msg := err.Error()
	// pgconn's text starts with "cannot parse `<redacted string>`: "; we
	// show the string ourselves.
	if rest, ok := strings.CutPrefix(msg, "cannot parse `"); ok {
		if i := strings.Index(rest, "`: "); i >= 0 {
			msg = rest[i+3:]
		}
	}
	return fmt.Sprintf("%s is not a valid connection URL (%s); want postgres://user:password@host:port/dbname", RedactURL(s), scrub(msg, s))
}

// passwordKind classifies a [[users]] password: "plain", "md5" (an md5 hash
// as in pg_authid), "scram" (a SCRAM-SHA-256 verifier) or "bad-scram".
func passwordKind(p string) string {
	if rest, ok := strings.CutPrefix(p, "SCRAM-SHA-256$"); ok {
		if validSCRAM(rest) {
			return "scram"
		}
		return "bad-scram"
	}
	if rest, ok := strings.CutPrefix(p, "md5"); ok && len(rest) == 32 {
		if _, err := hex.DecodeString(rest); err == nil {
			return "md5"
		}
	}
	return "plain"
}

// validSCRAM checks "<iterations>:<salt>$<StoredKey>:<ServerKey>".
func validSCRAM(s string) bool {
	head, keys, ok := strings.Cut(s, "$")
	if !ok {
		return false
	}
	iter, salt, ok1 := strings.Cut(head, ":")
	stored, server, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return false
	}
	if n, err := strconv.Atoi(iter); err != nil || n < 1 {
		return false
	}
	if _, err := base64.StdEncoding.DecodeString(salt); err != nil {
		return false
	}
	for _, k := range []string{stored, server} {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			return false
		}
	}
	return true
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// unwrapPathErr drops the path from an *os.PathError, which the reason
// already quotes.
func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// TableName returns the relation a [[cache]] rule's tables entry names, as
// PostgreSQL resolves the identifier: unquoted parts fold to lower case,
// "quoted" ones keep theirs; a schema is dropped (the cache knows tables by
// their bare name, see cache/analyze). System catalogs and statistics views
// are refused: their contents change without a write pgguard sees.
func TableName(s string) (string, error) {
	var parts []string
	rest := strings.TrimSpace(s)
	for {
		var part string
		switch {
		case strings.HasPrefix(rest, `"`):
			end := 1
			var b strings.Builder
			for {
				i := strings.IndexByte(rest[end:], '"')
				if i < 0 {
					return "", fmt.Errorf("%q: unterminated quoted identifier", s)
				}
				b.WriteString(rest[end : end+i])
				end += i + 1
				if !strings.HasPrefix(rest[end:], `"`) {
					break
				}
				b.WriteByte('"') // "" inside quotes
				end++
			}
			part, rest = b.String(), rest[end:]
			if part == "" {
				return "", fmt.Errorf("%q: empty quoted identifier", s)
			}
		default:
			i := strings.IndexByte(rest, '.')
			if i < 0 {
				i = len(rest)
			}
			part, rest = rest[:i], rest[i:]
			if !plainIdent(part) {
				return "", fmt.Errorf("%q is not a table name; want a name such as \"tenants\", \"public.tenants\" or \"\\\"Tenants\\\"\" (quoted to keep its case)", s)
			}
			part = strings.ToLower(part)
		}
		parts = append(parts, part)
		if rest == "" {
			break
		}
		if !strings.HasPrefix(rest, ".") || len(parts) == 3 {
			return "", fmt.Errorf("%q is not a table name", s)
		}
		rest = rest[1:]
	}
	rel := parts[len(parts)-1]
	if len(parts) > 1 {
		if schema := parts[len(parts)-2]; schema == "pg_catalog" || schema == "information_schema" {
			return "", fmt.Errorf("%q is a system catalog or view: the cache cannot follow its changes", s)
		}
	}
	if strings.HasPrefix(rel, "pg_") {
		return "", fmt.Errorf("%q is a system catalog or statistics view (pg_*): the cache cannot follow its changes", s)
	}
	return rel, nil
}

// plainIdent reports whether s is an unquoted SQL identifier.
func plainIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r > 127:
		case i > 0 && (r >= '0' && r <= '9' || r == '$'):
		default:
			return false
		}
	}
	return true
}

func (v *validator) fleet() {
	f := v.c.Fleet
	v.redisURL("fleet.redis_url", f.RedisURL)
	if f.LeaseTTL.Duration < 100*time.Millisecond {
		v.bad("fleet.lease_ttl", "%s is too short; want 100ms or more (10s is usual): leases are renewed every third of it", f.LeaseTTL.Duration)
	}
	if f.Heartbeat.Duration < 10*time.Millisecond {
		v.bad("fleet.heartbeat", "%s is too short; want 10ms or more (1s is usual)", f.Heartbeat.Duration)
	}
}
