package advisor

import (
	"time"
)

// Advice is the advisor's findings over the queries it holds. Durations
// are in seconds or milliseconds as their names say.
type Advice struct {
	Window          Window           `json:"window"`
	CacheCandidates []CacheCandidate `json:"cache_candidates"`
	Loops           []Loop           `json:"n_plus_one"`
	Pollers         []Poller         `json:"pollers"`
	Slow            []SlowShape      `json:"slow_shapes"`
	Pool            []PoolSizing     `json:"pool"`
	// Forecast is what applying every suggested rule together would have
	// changed over the window.
	Forecast Forecast `json:"forecast"`
	// TOML holds every suggested rule, ready to paste into the config.
	TOML string `json:"toml"`
	// Off, when set, says why there are no findings: the live advisor is
	// turned off.
	Off string `json:"off,omitempty"`
}

// Window is the span of traffic the findings read.
type Window struct {
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Seconds float64   `json:"seconds"`
	// Queries held; Observed since start (more when the ring wrapped:
	// Truncated).
	Queries   int   `json:"queries"`
	Observed  int64 `json:"observed"`
	Truncated bool  `json:"truncated"`
	// PrimaryQueries ran on the primary, for PrimarySeconds of query time.
	PrimaryQueries int64   `json:"primary_queries"`
	PrimarySeconds float64 `json:"primary_seconds"`
	// AwakeSeconds is the modeled Neon Active Time of the window: each
	// query on the primary (and each transaction held open) plus
	// suspend_after.
	AwakeSeconds float64 `json:"awake_seconds"`
	// Wakeups counts the times traffic woke a suspended compute.
	Wakeups      int64  `json:"wakeups"`
	SuspendAfter string `json:"suspend_after"`
}

// CacheCandidate is a read shape the result cache could answer.
type CacheCandidate struct {
	Fingerprint  string   `json:"fingerprint"`
	Query        string   `json:"query"`
	Applications []string `json:"applications"`
	Tables       []string `json:"tables"`
	// Calls reached the primary, for PrimaryMS; Share is PrimaryMS over
	// all the primary's query time.
	Calls     int64   `json:"calls"`
	PrimaryMS float64 `json:"primary_ms"`
	Share     float64 `json:"share_of_primary_time"`
	// Keys counts distinct argument values (cache entries needed).
	Keys int `json:"keys"`
	// Invalidations counts committed writes to the tables it reads.
	Invalidations int64 `json:"invalidations"`
	// TTL is the suggested ttl; HitRatio and Hits what it would have had,
	// given the keys and the invalidations observed. ByTTL has the other
	// TTLs tried.
	TTL      string     `json:"ttl"`
	HitRatio float64    `json:"hit_ratio"`
	Hits     int64      `json:"hits"`
	ByTTL    []TTLRatio `json:"by_ttl"`
	// SavedPrimaryMS and WakeupsSaved are the primary time and the compute
	// wake-ups the hits would have saved; AwakeSavedSeconds the modeled
	// Active Time.
	SavedPrimaryMS    float64 `json:"saved_primary_ms"`
	WakeupsSaved      int64   `json:"wakeups_saved"`
	AwakeSavedSeconds float64 `json:"awake_saved_seconds"`
	// Estimate says what the hit ratio assumes, when it assumes something.
	Estimate string `json:"estimate,omitempty"`
	// TOML is the [[cache]] rule.
	TOML string `json:"toml"`
}

// TTLRatio is the hit ratio a shape would have had at one TTL.
type TTLRatio struct {
	TTL      string  `json:"ttl"`
	HitRatio float64 `json:"hit_ratio"`
}

// Loop is an N+1 pattern: one shape run many times in a row by one client,
// differing only in its parameters.
type Loop struct {
	Application string `json:"application"`
	Fingerprint string `json:"fingerprint"`
	Query       string `json:"query"`
	// Parent is the query whose rows the loop walks (the latest query of
	// the unit that returned several rows), when there is one.
	Parent *ParentQuery `json:"parent,omitempty"`
	// Loops counts the loops seen; MeanCount and MaxCount the queries per loop.
	Loops     int64   `json:"loops"`
	MeanCount float64 `json:"mean_count"`
	MaxCount  int     `json:"max_count"`
	// InTransaction: the loops ran inside transaction blocks.
	InTransaction bool `json:"in_transaction"`
	// ExtraRoundTrips are the queries beyond one per loop; ExtraMS the time
	// they took (queries and the round trips between them), in all and per loop.
	ExtraRoundTrips int64   `json:"extra_round_trips"`
	ExtraMS         float64 `json:"extra_ms"`
	ExtraMSPerLoop  float64 `json:"extra_ms_per_loop"`
	Fix             string  `json:"fix"`
}

// ParentQuery is the query an N+1 loop iterates over.
type ParentQuery struct {
	Fingerprint string  `json:"fingerprint"`
	Query       string  `json:"query"`
	MeanRows    float64 `json:"mean_rows"`
}

// Poller is an application that keeps the compute awake on a schedule.
type Poller struct {
	Application string `json:"application"`
	// Polls counts its bursts of activity; IntervalSeconds is the median
	// time between their starts; QueriesPerPoll the median queries in one.
	Polls           int64   `json:"polls"`
	IntervalSeconds float64 `json:"interval_seconds"`
	QueriesPerPoll  int     `json:"queries_per_poll"`
	QueriesPerHour  float64 `json:"queries_per_hour"`
	// AwakeAloneSeconds is how long its activity alone kept the compute
	// awake; KeepsAwake: it never left the compute suspend_after alone.
	AwakeAloneSeconds float64 `json:"awake_alone_seconds"`
	KeepsAwake        bool    `json:"keeps_compute_awake"`
	// AttributableSeconds is the Active Time no other traffic covered: what
	// stopping it (or LISTEN/NOTIFY) saves; per month in CU-hours.
	AttributableSeconds      float64 `json:"attributable_awake_seconds"`
	AttributableCUHoursMonth float64 `json:"attributable_cu_hours_per_month"`
	// SuggestedIntervalSeconds is the rule's pace: a whole number of its
	// intervals, at least suspend_after + 20%. IntervalSavedSeconds is the
	// Active Time saved had it polled that often instead; per month in
	// CU-hours.
	SuggestedIntervalSeconds float64 `json:"suggested_interval_seconds"`
	IntervalSavedSeconds     float64 `json:"interval_saved_awake_seconds"`
	IntervalCUHoursMonth     float64 `json:"interval_cu_hours_saved_per_month"`
	// Rule is the [[limits]] rule; with it, RuleQueriesSaved of its queries
	// would have been refused and RuleAwakeSavedSeconds of Active Time
	// saved (RuleCUHoursSavedMonth per month), if the application keeps
	// its schedule.
	ExistingRule          string  `json:"existing_rule,omitempty"`
	RuleQueriesSaved      int64   `json:"rule_queries_saved"`
	RuleAwakeSavedSeconds float64 `json:"rule_awake_saved_seconds"`
	RuleCUHoursSavedMonth float64 `json:"rule_cu_hours_saved_per_month"`
	Note                  string  `json:"note"`
	TOML                  string  `json:"toml"`
}

// SlowShape is a shape whose p95 is above Settings.Slow.
type SlowShape struct {
	Fingerprint  string   `json:"fingerprint"`
	Query        string   `json:"query"`
	Applications []string `json:"applications"`
	Calls        int64    `json:"calls"`
	P95MS        float64  `json:"p95_ms"`
	MeanMS       float64  `json:"mean_ms"`
	MaxMS        float64  `json:"max_ms"`
	PrimaryMS    float64  `json:"primary_ms"`
	Share        float64  `json:"share_of_primary_time"`
}

// PoolSizing compares one database's pool with what the traffic needed.
type PoolSizing struct {
	Database    string `json:"database"`
	PoolSize    int    `json:"pool_size"`
	MaxOverflow int    `json:"max_overflow"`
	// PeakConcurrent is the most server connections busy at once (queries
	// and transaction blocks); P99Concurrent the 99th percentile over time.
	PeakConcurrent int `json:"peak_concurrent"`
	P99Concurrent  int `json:"p99_concurrent"`
	// Queued counts queries that waited for a server, WaitP95MS and
	// MaxWaitMS their waits.
	Queued    int64   `json:"queued"`
	WaitP95MS float64 `json:"wait_p95_ms"`
	MaxWaitMS float64 `json:"max_wait_ms"`
	// ComputeMaxConnections is Neon's max_connections for
	// budget.compute_units; MaxInstances how many pgguard instances at
	// pool.size + max_overflow fit under it.
	ComputeMaxConnections int    `json:"compute_max_connections"`
	MaxInstances          int    `json:"max_instances"`
	Advice                string `json:"advice"`
}

// Forecast compares the window as observed with the window as it would have
// been with every suggested rule applied.
type Forecast struct {
	PrimaryQueries          int64   `json:"primary_queries"`
	PredictedPrimaryQueries int64   `json:"predicted_primary_queries"`
	AwakeSeconds            float64 `json:"awake_seconds"`
	PredictedAwakeSeconds   float64 `json:"predicted_awake_seconds"`
	CUHoursMonth            float64 `json:"cu_hours_per_month"`
	PredictedCUHoursMonth   float64 `json:"predicted_cu_hours_per_month"`
}
