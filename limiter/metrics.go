package limiter

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the limiter's collectors, created once per Limiter.
type metrics struct {
	rejected *prometheus.CounterVec // rule
	delayed  *prometheus.CounterVec // rule
	redisUp  prometheus.Gauge       // nil without redis_url
	appQPH   *prometheus.GaugeVec   // application
	regd     []prometheus.Collector // registered, for unregister
}

func newMetrics(redis bool) *metrics {
	m := &metrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_limiter_rejected_total",
			Help: "Queries and server connections refused (SQLSTATE 53400) by a [[limits]] rule.",
		}, []string{"rule"}),
		delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_limiter_delayed_total",
			Help: "Queries a [[limits]] rule with action \"delay\" held before admitting them.",
		}, []string{"rule"}),
		appQPH: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgguard_application_queries_per_hour",
			Help: "Queries in the last hour by application_name (past the cardinality cap: \"other\").",
		}, []string{"application"}),
	}
	if redis {
		m.redisUp = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgguard_limiter_redis_up",
			Help: "1 while limits and budget are shared fleet-wide through limiter.redis_url, 0 while Redis is unreachable and they are per instance.",
		})
		m.redisUp.Set(1)
	}
	return m
}

// register adds the collectors, the budget figures as functions of b, and
// the worker kill switch as a function of workersOff.
func (m *metrics) register(reg prometheus.Registerer, b *Budget, workersOff func() bool) error {
	cs := []prometheus.Collector{m.rejected, m.delayed, m.appQPH,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "pgguard_budget_awake_seconds_total",
			Help: "Modeled seconds the primary's Neon compute was awake this billing month (UTC calendar month; restarts at 0 each month).",
		}, func() float64 { return b.Snapshot().AwakeSeconds }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgguard_budget_cu_hours",
			Help: "Modeled compute used this month: budget.compute_units x awake hours.",
		}, func() float64 { return b.Snapshot().CUHours }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgguard_budget_used_ratio",
			Help: "Modeled CU-hours this month / budget.monthly_cu_hours (0 when the guard is off).",
		}, func() float64 { return b.Snapshot().UsedRatio }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgguard_budget_exhausted",
			Help: "1 while the month's budget is used up and budget.on_exhausted applies.",
		}, func() float64 {
			if b.Exhausted() {
				return 1
			}
			return 0
		}),
	}
	cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pgguard_workers_disabled",
		Help: "1 while the worker kill switch (disable_workers, DISABLE_WORKERS) refuses new transactions of worker = true rules.",
	}, func() float64 {
		if workersOff() {
			return 1
		}
		return 0
	}))
	if m.redisUp != nil {
		cs = append(cs, m.redisUp)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			m.unregister(reg)
			if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
				return fmt.Errorf("limiter metrics already registered (Close the previous Limiter first): %w", err)
			}
			return fmt.Errorf("limiter metrics: %w", err)
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
