package cache

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cache's collectors, created once per Cache.
type metrics struct {
	hits, misses, invalidated, stored *prometheus.CounterVec // rule
	oversize, hitBytes, storedBytes   *prometheus.CounterVec // rule
	invalidations                     *prometheus.CounterVec // database
	corrupt                           prometheus.Counter
	redisUp                           prometheus.Gauge // nil without a Redis
	regd                              []prometheus.Collector
}

func newMetrics(redis bool) *metrics {
	rule := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"rule"})
	}
	m := &metrics{
		hits:        rule("pgguard_cache_hits_total", "Executions answered from the result cache, by [[cache]] rule."),
		misses:      rule("pgguard_cache_misses_total", "Executions a [[cache]] rule matched that the cache could not answer (no entry, expired, invalidated, or Redis garbage), by rule."),
		invalidated: rule("pgguard_cache_invalidated_total", "Misses whose entry was found but a table it reads had been written since (or DISCARD CACHE), by rule."),
		stored:      rule("pgguard_cache_stored_total", "Replies stored in the result cache, by rule."),
		oversize:    rule("pgguard_cache_oversize_total", "Replies served uncached because they exceed the rule's max_entry_bytes, by rule."),
		hitBytes:    rule("pgguard_cache_hit_bytes_total", "Reply bytes answered from the result cache, by rule."),
		storedBytes: rule("pgguard_cache_stored_bytes_total", "Reply bytes stored in the result cache, by rule."),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_cache_invalidations_total",
			Help: "Table generations bumped by writes committed through this instance (one per table, or one for a whole database), by database.",
		}, []string{"database"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgguard_cache_corrupt_total",
			Help: "Values in Redis that were not a valid cache entry for their key (garbage, another format version), read as misses.",
		}),
	}
	if redis {
		m.redisUp = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgguard_cache_redis_up",
			Help: "1 while the result cache is shared fleet-wide through Redis, 0 while Redis is unreachable and it is per instance.",
		})
		m.redisUp.Set(1)
	}
	return m
}

// register adds the collectors, and the in-process cache's size as
// functions of l.
func (m *metrics) register(reg prometheus.Registerer, l *lru) error {
	cs := []prometheus.Collector{m.hits, m.misses, m.invalidated, m.stored, m.oversize, m.hitBytes, m.storedBytes,
		m.invalidations, m.corrupt,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgguard_cache_local_bytes",
			Help: "Bytes held by the in-process result cache in front of Redis (bounded by cache_store.local_max_bytes).",
		}, func() float64 { _, b, _ := l.stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgguard_cache_local_entries",
			Help: "Entries held by the in-process result cache in front of Redis.",
		}, func() float64 { n, _, _ := l.stats(); return float64(n) }),
	}
	if m.redisUp != nil {
		cs = append(cs, m.redisUp)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			m.unregister(reg)
			if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
				return fmt.Errorf("cache metrics already registered (Close the previous Cache first): %w", err)
			}
			return fmt.Errorf("cache metrics: %w", err)
		}
		m.regd = append(m.regd, c)
	}
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.regd {
		reg.Unregister(c)
	}
	m.regd = nil
}
