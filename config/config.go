// Package config holds pgguard's configuration: the TOML schema, its defaults,
// environment overrides and validation. A Config is immutable once loaded;
// reload builds a new one and swaps it in atomically.
package config

import (
	"fmt"
	"time"
)

// Config is the whole pgguard configuration. Field comments name the TOML key.
type Config struct {
	// Listen is where applications connect (listen).
	Listen string `toml:"listen"`
	// HTTPListen serves /metrics, /healthz, /readyz, /status and the admin API (http_listen).
	HTTPListen string `toml:"http_listen"`
	// ShutdownTimeout is how long a drain waits for running transactions (shutdown_timeout).
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// ReadOnly is the read-only kill switch (read_only).
	ReadOnly bool `toml:"read_only"`
	// DisableWorkers refuses new transactions of the clients a [[limits]]
	// rule marks worker = true (disable_workers; env DISABLE_WORKERS).
	DisableWorkers bool `toml:"disable_workers"`
	// TLSCert and TLSKey enable client-side TLS when both are set (tls_cert, tls_key).
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// AuthMethod is how clients authenticate: "scram-sha-256" (default), "md5" or "plain" (auth_method).
	AuthMethod string `toml:"auth_method"`
	// MaxMessageSize caps a single client protocol message in bytes (max_message_size).
	MaxMessageSize int `toml:"max_message_size"`
	// LogLevel is the main log's level: "debug", "info", "warn", "error" (log_level).
	LogLevel string `toml:"log_level"`
	// MemoryLimit is the Go runtime's soft memory limit in bytes
	// (memory_limit); 0 leaves the runtime's default (or GOMEMLIMIT).
	MemoryLimit int `toml:"memory_limit"`
	// MaxProcs is how many threads run Go code at once (max_procs,
	// GOMAXPROCS); 0, the default, is the runtime's: one per core, or the
	// container's CPU limit. 1, as PgBouncer runs on one thread, takes a
	// little less CPU per transaction at a cost in peak throughput.
	// GOMAXPROCS in the environment wins.
	MaxProcs int `toml:"max_procs"`

	// Databases maps the database name clients connect to onto its upstreams ([databases.NAME]).
	Databases map[string]*Database `toml:"databases"`
	// Users may connect to pgguard ([[users]]).
	Users []User `toml:"users"`
	// Admin lists who may use the admin console and admin HTTP API ([admin]).
	Admin Admin `toml:"admin"`
	// Pool sets pooling behaviour for every database ([pool]).
	Pool Pool `toml:"pool"`
	// QueryLog configures the query log ([querylog]).
	QueryLog QueryLog `toml:"querylog"`
	// Failover configures primary/fallback switching ([failover]).
	Failover Failover `toml:"failover"`
	// Limits are the rate and connection rules ([[limits]]).
	Limits []Limit `toml:"limits"`
	// Limiter configures where limiter state lives ([limiter]).
	Limiter Limiter `toml:"limiter"`
	// Budget models the primary's Neon compute time ([budget]).
	Budget Budget `toml:"budget"`
	// Routes send matching clients' read-only work to a replica or keep it
	// on the primary ([[routes]]).
	Routes []Route `toml:"routes"`
	// Replica configures read replica routing and read-your-writes ([replica]).
	Replica Replica `toml:"replica"`
	// Cache are the result cache's rules ([[cache]]).
	Cache []CacheRule `toml:"cache"`
	// CacheStore says where cached results live ([cache_store]). It is not
	// [cache]: TOML cannot have a table and an array of tables of one name.
	CacheStore CacheStore `toml:"cache_store"`
	// Run configures `pgguard run -- COMMAND` ([run]).
	Run Run `toml:"run"`
	// Fleet configures leases, heartbeats and fleet-wide switches ([fleet]).
	Fleet Fleet `toml:"fleet"`
	// Notify configures LISTEN/NOTIFY under transaction pooling ([notify]).
	Notify Notify `toml:"notify"`

	// src records where each value came from (file line or environment
	// variable) so Validate can point at it; set by Load, nil otherwise.
	src *origin
}

// Database is one [databases.NAME] entry.
type Database struct {
	// Primary is the upstream URL normally served (primary).
	Primary string `toml:"primary"`
	// Fallback is an optional upstream used while the primary cannot serve (fallback).
	Fallback string `toml:"fallback"`
	// PoolSize, when non-zero, overrides pool.size for this database (pool_size).
	PoolSize int `toml:"pool_size"`
	// Replicas are read replica URLs (Neon read replica endpoints), each
	// with its own small pool (replicas; env NEON_READ_REPLICA_URL).
	Replicas []string `toml:"replicas"`
	// ReplicaReads is "off" (default: only [[routes]] send work to a
	// replica) or "read_only": every client's read-only transactions and
	// single read-only statements go to a replica (replica_reads).
	ReplicaReads string `toml:"replica_reads"`
	// FleetMaxConnections caps the server connections to this primary
	// across every pgguard on the fleet's Redis; 0 is no fleet cap
	// (fleet_max_connections; env PGGUARD_FLEET_MAX_CONNECTIONS).
	FleetMaxConnections int `toml:"fleet_max_connections"`
	// FleetStaticShare is what this instance may hold of the fleet cap
	// while Redis is unreachable; 0: the cap divided by the last fleet size
	// seen (fleet_static_share).
	FleetStaticShare int `toml:"fleet_static_share"`
}

// User is one [[users]] entry.
type User struct {
	// Name is the user name clients log in with (name).
	Name string `toml:"name"`
	// Password is a plain password, a SCRAM-SHA-256 verifier or an "md5..." hash (password).
	Password string `toml:"password"`
}

// Admin is the [admin] table.
type Admin struct {
	// Users may use the admin console (database "pgguard") and admin HTTP API (users).
	Users []string `toml:"users"`
	// HTTPAuth decides who may read the HTTP pages that show query texts,
	// client addresses or application names (GET /, /dashboard/state,
	// /status, /queries): "auto" lets anyone read them while http_listen is
	// a loopback address and asks for admin basic auth otherwise; "always"
	// always asks (http_auth).
	HTTPAuth string `toml:"http_auth"`
}

// Pool is the [pool] table.
type Pool struct {
	// Mode is "transaction" or "session" (mode).
	Mode string `toml:"mode"`
	// Size is the number of backend connections per database (size).
	Size int `toml:"size"`
	// MaxOverflow is how many extra connections may open while clients queue (max_overflow).
	MaxOverflow int `toml:"max_overflow"`
	// MaxClientConn caps client connections to pgguard (max_client_conn).
	MaxClientConn int `toml:"max_client_conn"`
	// WaitTimeout bounds how long a client queues for a server; 53300 after it (wait_timeout).
	WaitTimeout Duration `toml:"wait_timeout"`
	// ClientIdleTimeout closes idle client sessions with 57P05 (client_idle_timeout).
	ClientIdleTimeout Duration `toml:"client_idle_timeout"`
	// IdleTransactionTimeout rolls back and closes a client idle inside a transaction (idle_transaction_timeout).
	IdleTransactionTimeout Duration `toml:"idle_transaction_timeout"`
	// QueryTimeout cancels a query running longer than this (query_timeout).
	QueryTimeout Duration `toml:"query_timeout"`
	// CancelTimeout is how long a query cancelled for QueryTimeout may take to
	// end; past it the server connection is closed and the client told so (cancel_timeout).
	CancelTimeout Duration `toml:"cancel_timeout"`
	// ServerCheckAfter: a server connection owing a reply this long makes
	// pgguard check, by opening a connection to its upstream (no query),
	// that the upstream still answers; if it does not within ConnectTimeout,
	// its connections are closed and their clients told so; 0 turns it off (server_check_after).
	ServerCheckAfter Duration `toml:"server_check_after"`
	// ServerIdleTimeout closes server connections idle in the pool this long (server_idle_timeout).
	ServerIdleTimeout Duration `toml:"server_idle_timeout"`
	// ServerLifetime closes server connections older than this, with jitter, when released (server_lifetime).
	ServerLifetime Duration `toml:"server_lifetime"`
	// ConnectTimeout bounds dialing and authenticating an upstream (connect_timeout).
	ConnectTimeout Duration `toml:"connect_timeout"`
	// LoginTimeout bounds a client's startup and authentication (login_timeout).
	LoginTimeout Duration `toml:"login_timeout"`
	// LeakWarnAfter logs a WARN the first time a session is held idle this long (leak_warn_after).
	LeakWarnAfter Duration `toml:"leak_warn_after"`
	// MaxPreparedStatements bounds prepared statements kept per server connection (max_prepared_statements).
	MaxPreparedStatements int `toml:"max_prepared_statements"`
	// ServerTCPKeepaliveIdle is how long a server connection is silent before TCP keepalive probes start; 0 turns keepalive off (server_tcp_keepalive_idle).
	ServerTCPKeepaliveIdle Duration `toml:"server_tcp_keepalive_idle"`
	// ServerTCPKeepaliveInterval is the time between keepalive probes (server_tcp_keepalive_interval).
	ServerTCPKeepaliveInterval Duration `toml:"server_tcp_keepalive_interval"`
	// ServerTCPKeepaliveCount is how many unanswered probes drop the connection when ServerTCPUserTimeout is 0; 0 keeps the OS default (server_tcp_keepalive_count).
	ServerTCPKeepaliveCount int `toml:"server_tcp_keepalive_count"`
	// ServerTCPUserTimeout drops a server connection whose data or keepalive probes go unacknowledged this long (TCP_USER_TIMEOUT); 0 keeps the OS default (server_tcp_user_timeout).
	ServerTCPUserTimeout Duration `toml:"server_tcp_user_timeout"`
}

// QueryLog is the [querylog] table.
type QueryLog struct {
	// Path is "stderr", a file path, or "" for off (path).
	Path string `toml:"path"`
	// Slow queries are also logged at WARN in the main log (slow).
	Slow Duration `toml:"slow"`
	// LogParameters logs raw literals and parameter values (log_parameters).
	LogParameters bool `toml:"log_parameters"`
	// MaxShapes caps the per-fingerprint statistics kept in memory (max_shapes).
	MaxShapes int `toml:"max_shapes"`
	// AdvisorRecords bounds the recent queries the advisor keeps (48 bytes
	// each) to compute SHOW ADVICE and GET /advice; 0 turns the live advisor
	// off (advisor_records).
	AdvisorRecords int `toml:"advisor_records"`
}

// Failover is the [failover] table.
type Failover struct {
	// FailureThreshold is how many consecutive upstream failures switch to the fallback (failure_threshold).
	FailureThreshold int `toml:"failure_threshold"`
	// ProbeInterval is the first probe delay of a down primary; it backs off to ProbeMaxInterval (probe_interval).
	ProbeInterval Duration `toml:"probe_interval"`
	// ProbeMaxInterval caps the probe backoff (probe_max_interval).
	ProbeMaxInterval Duration `toml:"probe_max_interval"`
	// FailbackAfter is how long the primary must stay healthy before traffic returns (failback_after).
	FailbackAfter Duration `toml:"failback_after"`
	// FallbackReadOnly refuses writes with 25006 while on the fallback (fallback_read_only).
	FallbackReadOnly bool `toml:"fallback_read_only"`
	// SplitPolicy decides, with instances sharing limiter.redis_url, what an
	// instance that cannot reach its primary does while another still can:
	// "fail_over" (switch to the fallback alone) or "refuse" (answer errors,
	// not ready, until the rest of the fleet loses the primary too) (split_policy).
	SplitPolicy string `toml:"split_policy"`
	// FallbackNotice sends each session a NoticeResponse the first time the
	// fallback serves it (fallback_notice).
	FallbackNotice bool `toml:"fallback_notice"`
}

// Limit is one [[limits]] rule.
type Limit struct {
	// Name identifies the rule in messages and metrics (name).
	Name string `toml:"name"`
	// Match keys; empty matches anything (database, user, application_name, client_addr).
	// ClientAddr is an IP or a CIDR prefix.
	Database        string `toml:"database"`
	User            string `toml:"user"`
	ApplicationName string `toml:"application_name"`
	ClientAddr      string `toml:"client_addr"`
	// MaxConnections caps server connections this rule's clients hold at once; 0 is no cap (max_connections).
	MaxConnections int `toml:"max_connections"`
	// Rates; 0 means no limit (queries_per_second, queries_per_minute, queries_per_hour).
	QueriesPerSecond float64 `toml:"queries_per_second"`
	QueriesPerMinute float64 `toml:"queries_per_minute"`
	QueriesPerHour   float64 `toml:"queries_per_hour"`
	// Burst is the token bucket depth; default 1 (burst).
	Burst int `toml:"burst"`
	// Action is "delay" (hold up to MaxDelay, then refuse) or "reject" (53400 at once) (action).
	Action string `toml:"action"`
	// MaxDelay bounds a delayed query (max_delay).
	MaxDelay Duration `toml:"max_delay"`
	// Priority orders the pool queue; higher is served first (priority).
	Priority int `toml:"priority"`
	// Worker marks the rule's clients as background workers: while
	// disable_workers is on, their new transactions are refused (worker).
	Worker bool `toml:"worker"`
}

// Limiter is the [limiter] table.
type Limiter struct {
	// RedisURL, when set, shares limits and budget fleet-wide (redis_url).
	RedisURL string `toml:"redis_url"`
	// QueriesPerHourWarn logs a WARN when an application crosses this many queries per hour (queries_per_hour_warn).
	QueriesPerHourWarn int `toml:"queries_per_hour_warn"`
}

// Budget is the [budget] table: a model of Neon compute time on the primary.
type Budget struct {
	// SuspendAfter is Neon's scale-to-zero delay (suspend_after).
	SuspendAfter Duration `toml:"suspend_after"`
	// ComputeUnits is the compute size in CU (compute_units).
	ComputeUnits float64 `toml:"compute_units"`
	// MonthlyCUHours is the month's budget; 0 disables the guard (monthly_cu_hours).
	MonthlyCUHours float64 `toml:"monthly_cu_hours"`
	// AlertAt is the used fraction that logs a WARN (alert_at).
	AlertAt float64 `toml:"alert_at"`
	// OnExhausted is "alert", "read_only", "reject_low_priority" or "fallback" (on_exhausted).
	OnExhausted string `toml:"on_exhausted"`
}

// CacheRule is one [[cache]] rule: results of one query shape, answered
// from the cache until ttl passes or a table it reads is written.
type CacheRule struct {
	// Name identifies the rule in metrics, SHOW CACHE and /status (name).
	Name string `toml:"name"`
	// Query is a single read-only SELECT matched by shape: its pg_query
	// fingerprint, so literals and $n parameters match any value (query).
	Query string `toml:"query"`
	// Fingerprint matches the shape by fingerprint instead of Query: 16 hex
	// digits, as in SHOW QUERIES (fingerprint).
	Fingerprint string `toml:"fingerprint"`
	// TTL is how long an entry may be answered from the cache (ttl).
	TTL Duration `toml:"ttl"`
	// Match keys; empty matches anything (database, user, application_name).
	Database        string `toml:"database"`
	User            string `toml:"user"`
	ApplicationName string `toml:"application_name"`
	// MaxEntryBytes caps one cached reply; larger ones are served uncached
	// and counted; default 1 MiB (max_entry_bytes).
	MaxEntryBytes int `toml:"max_entry_bytes"`
	// Tables are more tables whose writes invalidate this rule's entries,
	// for what the query reads through a view or a function (tables).
	Tables []string `toml:"tables"`
	// TrustedFunctions are functions not built into PostgreSQL that the
	// query may call, declared deterministic by the operator (trusted_functions).
	TrustedFunctions []string `toml:"trusted_functions"`
}

// CacheStore is the [cache_store] table.
type CacheStore struct {
	// RedisURL shares entries and invalidations fleet-wide; empty means
	// limiter.redis_url, and with neither the cache is per instance (redis_url).
	RedisURL string `toml:"redis_url"`
	// LocalMaxBytes bounds the in-process cache in front of Redis (local_max_bytes).
	LocalMaxBytes int `toml:"local_max_bytes"`
	// DegradedTTL caps entries' lifetime while Redis is unreachable and the
	// cache is per instance (degraded_ttl).
	DegradedTTL Duration `toml:"degraded_ttl"`
}

// CacheRedisURL returns the Redis the result cache uses:
// cache_store.redis_url, else limiter.redis_url, else "" (per instance).
func (c *Config) CacheRedisURL() string {
	if c.CacheStore.RedisURL != "" {
		return c.CacheStore.RedisURL
	}
	return c.Limiter.RedisURL
}

// DefaultCacheMaxEntryBytes is a [[cache]] rule's max_entry_bytes when none is given.
const DefaultCacheMaxEntryBytes = 1 << 20

// Run is the [run] table, read by `pgguard run -- COMMAND`.
type Run struct {
	// RewriteEnv names the environment variables holding connection URLs
	// that COMMAND gets pointed at pgguard (rewrite_env; env
	// PGGUARD_RUN_REWRITE_ENV, comma-separated).
	RewriteEnv []string `toml:"rewrite_env"`
}

// Fleet is the [fleet] table: how this instance takes part in the fleet on
// one Redis (connection leases, heartbeats, fleet-wide switches).
type Fleet struct {
	// RedisURL is the fleet's Redis; empty means limiter.redis_url (redis_url).
	RedisURL string `toml:"redis_url"`
	// InstanceID names this instance in leases and heartbeats; empty:
	// FLY_MACHINE_ID, else host name and process id (instance_id).
	InstanceID string `toml:"instance_id"`
	// LeaseTTL is how long leases and a heartbeat outlive their last
	// renewal: a dead instance's leases are free within it (lease_ttl).
	LeaseTTL Duration `toml:"lease_ttl"`
	// Heartbeat is how often the heartbeat is published and fleet-wide
	// switches are read (heartbeat).
	Heartbeat Duration `toml:"heartbeat"`
}

// FleetRedisURL returns the Redis of the fleet: fleet.redis_url, else
// limiter.redis_url, else "" (no fleet: a fleet cap is a per-instance cap).
func (c *Config) FleetRedisURL() string {
	if c.Fleet.RedisURL != "" {
		return c.Fleet.RedisURL
	}
	return c.Limiter.RedisURL
}

// Duration is a time.Duration written in TOML as a Go duration string; "0" disables.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q; want a Go duration such as \"500ms\", \"30s\", \"5m\" or \"1h30m\", or \"0\" to disable", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// D is shorthand for a Duration literal.
func D(v time.Duration) Duration { return Duration{v} }

// Default returns the built-in defaults; every default lives here.
func Default() *Config {
	return &Config{
		Listen:          "127.0.0.1:6432",
		HTTPListen:      "127.0.0.1:9187",
		ShutdownTimeout: D(30 * time.Second),
		AuthMethod:      "scram-sha-256",
		MaxMessageSize:  64 << 20,
		LogLevel:        "info",
		MemoryLimit:     32 << 20,
		Databases:       map[string]*Database{},
		Admin:           Admin{HTTPAuth: "auto"},
		Pool: Pool{
			Mode:                   "transaction",
			Size:                   8,
			MaxOverflow:            4,
			MaxClientConn:          10000,
			WaitTimeout:            D(30 * time.Second),
			ClientIdleTimeout:      D(10 * time.Minute),
			IdleTransactionTimeout: D(0),
			QueryTimeout:           D(0),
			CancelTimeout:          D(5 * time.Second),
			ServerCheckAfter:       D(10 * time.Second),
			ServerIdleTimeout:      D(60 * time.Second),
			ServerLifetime:         D(time.Hour),
			ConnectTimeout:         D(10 * time.Second),
			LoginTimeout:           D(15 * time.Second),
			LeakWarnAfter:          D(5 * time.Minute),
			MaxPreparedStatements:  200,
			// A partitioned upstream is noticed within about 30s.
			ServerTCPKeepaliveIdle:     D(15 * time.Second),
			ServerTCPKeepaliveInterval: D(5 * time.Second),
			ServerTCPKeepaliveCount:    3,
			ServerTCPUserTimeout:       D(30 * time.Second),
		},
		QueryLog: QueryLog{
			Path:      "stderr",
			Slow:      D(500 * time.Millisecond),
			MaxShapes: 5000,
			// 1.5 MB at most: a sidecar's budget is 16 MB. Four hours of
			// the seeds' traffic (195,000 queries a day).
			AdvisorRecords: 32_768,
		},
		Failover: Failover{
			FailureThreshold: 3,
			ProbeInterval:    D(5 * time.Second),
			ProbeMaxInterval: D(5 * time.Minute),
			FailbackAfter:    D(30 * time.Second),
			SplitPolicy:      "fail_over",
			FallbackReadOnly: true,
		},
		Limiter: Limiter{QueriesPerHourWarn: 1000},
		Notify:  Notify{Pooled: true, ClientBuffer: 1 << 20},
		CacheStore: CacheStore{
			LocalMaxBytes: 4 << 20, // within the default memory_limit (32 MiB) with room to spare
			DegradedTTL:   D(5 * time.Second),
		},
		Budget: Budget{
			SuspendAfter:   D(5 * time.Minute),
			ComputeUnits:   0.25,
			MonthlyCUHours: 100,
			AlertAt:        0.8,
			OnExhausted:    "alert",
		},
		Run:   Run{RewriteEnv: []string{"DATABASE_URL"}},
		Fleet: Fleet{LeaseTTL: D(10 * time.Second), Heartbeat: D(time.Second)},
		Replica: Replica{
			PoolSize:    2,
			RYWScope:    "session",
			RYWWait:     D(200 * time.Millisecond),
			MaxLagBytes: 16 << 20,
			MaxLag:      D(10 * time.Second),
		},
	}
}

// IsAdmin reports whether user may use the admin console.
func (c *Config) IsAdmin(user string) bool {
	for _, u := range c.Admin.Users {
		if u == user {
			return true
		}
	}
	return false
}

// User returns the [[users]] entry named name.
func (c *Config) User(name string) (User, bool) {
	for _, u := range c.Users {
		if u.Name == name {
			return u, true
		}
	}
	return User{}, false
}

// PoolSize returns the pool size for database db.
func (c *Config) PoolSize(db string) int {
	if d := c.Databases[db]; d != nil && d.PoolSize > 0 {
		return d.PoolSize
	}
	return c.Pool.Size
}

// Origin says where key's value came from: the environment variable that
// set it, "FILE:LINE" for a line of the config file, the file alone for a
// key it does not write, or "defaults".
func (c *Config) Origin(key string) string {
	file, line := c.src.where(key)
	if line > 0 {
		return fmt.Sprintf("%s:%d", file, line)
	}
	return file
}
