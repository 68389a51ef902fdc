package advisor

import (
	"time"

	"github.com/pgguard/pgguard/cache/analyze"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/querylog"
)

// Settings are the parts of the config the findings are judged against.
type Settings struct {
	// SuspendAfter is budget.suspend_after: Neon suspends a compute after
	// this long without activity.
	SuspendAfter time.Duration
	// ComputeUnits is budget.compute_units, for CU-hours and the compute's
	// connection limit.
	ComputeUnits float64
	// PoolSize and MaxOverflow are pool.size and pool.max_overflow.
	PoolSize, MaxOverflow int
	// DatabasePoolSize holds the databases' own pool_size where set.
	DatabasePoolSize map[string]int
	// Slow is the p95 above which a shape is slow: querylog.slow, else the
	// seeds' 500 ms.
	Slow time.Duration
	// CachedShapes maps the fingerprints existing [[cache]] rules match to
	// the rule's name: those shapes are cached already.
	CachedShapes map[uint64]string
	// LimitedApps maps the application_name of existing [[limits]] rules
	// to the rule's name.
	LimitedApps map[string]string
	// Databases counts the configured databases (a rule names its database
	// when there are several).
	Databases int
}

// DefaultSettings are the built-in defaults of the keys Settings reads.
func DefaultSettings() Settings {
	return Settings{SuspendAfter: 5 * time.Minute, ComputeUnits: 0.25, PoolSize: 8, MaxOverflow: 4, Slow: 500 * time.Millisecond}
}

// SettingsFrom reads Settings from cfg.
func SettingsFrom(cfg *config.Config) Settings {
	s := DefaultSettings()
	if d := cfg.Budget.SuspendAfter.Duration; d > 0 {
		s.SuspendAfter = d
	}
	if cfg.Budget.ComputeUnits > 0 {
		s.ComputeUnits = cfg.Budget.ComputeUnits
	}
	s.PoolSize, s.MaxOverflow = cfg.Pool.Size, cfg.Pool.MaxOverflow
	if cfg.QueryLog.Slow.Duration > 0 {
		s.Slow = cfg.QueryLog.Slow.Duration
	}
	s.Databases = len(cfg.Databases)
	s.DatabasePoolSize = map[string]int{}
	for name, d := range cfg.Databases {
		if d != nil && d.PoolSize > 0 {
			s.DatabasePoolSize[name] = d.PoolSize
		}
	}
	s.CachedShapes = map[uint64]string{}
	for _, r := range cfg.Cache {
		var fp uint64
		if r.Query != "" {
			fp = analyze.Analyze(string(querylog.ZeroNumbers(nil, []byte(r.Query)))).Fingerprint
		} else {
			fp, _ = config.ParseFingerprint(r.Fingerprint)
		}
		if fp != 0 {
			s.CachedShapes[fp] = r.Name
		}
	}
	s.LimitedApps = map[string]string{}
	for _, l := range cfg.Limits {
		if l.ApplicationName != "" {
			s.LimitedApps[l.ApplicationName] = l.Name
		}
	}
	return s
}

// neonMaxConnections is Neon's max_connections for a compute of cu compute
// units: 112 at 0.25 CU, 450 per CU, at most 4,000.
func neonMaxConnections(cu float64) int {
	if cu <= 0 {
		cu = 0.25
	}
	return min(4000, int(450*cu))
}
