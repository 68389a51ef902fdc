package fleet

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metricSet are the fleet's metrics: counters and the Redis gauge live;
// lease gauges are read at scrape time (collector).
type metricSet struct {
	redisUp  prometheus.Gauge
	refusals *prometheus.CounterVec
}

var (
	fleetConnsDesc = prometheus.NewDesc("pgguard_fleet_server_connections",
		"Server connections (leases) the whole fleet holds to the database's primary, as Redis last said.", []string{"database"}, nil)
	fleetCapDesc = prometheus.NewDesc("pgguard_fleet_max_connections",
		"fleet_max_connections of the database (0: no fleet cap).", []string{"database"}, nil)
	leasesDesc = prometheus.NewDesc("pgguard_fleet_leases",
		"Leases of the fleet cap this instance holds (its open and opening server connections).", []string{"database"}, nil)
	limitDesc = prometheus.NewDesc("pgguard_fleet_lease_limit",
		"Leases this instance may hold now: the cap, its fair share while another instance waits, or its static share.", []string{"database"}, nil)
	staticDesc = prometheus.NewDesc("pgguard_fleet_static",
		"1 while the static share binds (the fleet's Redis unreachable, or back for less than lease_ttl).", []string{"database"}, nil)
	instancesDesc = prometheus.NewDesc("pgguard_fleet_instances",
		"Live instances holding or renewing leases on the database's primary, as Redis last said.", []string{"database"}, nil)
)

func newMetrics(f *Fleet, reg prometheus.Registerer) *metricSet {
	m := &metricSet{
		redisUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgguard_fleet_redis_up",
			Help: "1 while the fleet's Redis answers (leases, heartbeats, fleet-wide switches), 0 while unreachable or not configured."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgguard_fleet_lease_refusals_total",
			Help: "Server connections not opened for want of a lease of the fleet cap (the client queued)."}, []string{"database"}),
	}
	if reg != nil {
		reg.MustRegister(m.redisUp, m.refusals, collector{f})
	}
	return m
}

// collector reports the lease gauges at scrape time.
type collector struct{ f *Fleet }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fleetConnsDesc, fleetCapDesc, leasesDesc, limitDesc, staticDesc, instancesDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.f.allLeases() {
		s := l.Status()
		static := 0.0
		if s.Static {
			static = 1
		}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.Database)
		}
		g(fleetConnsDesc, float64(s.FleetTotal))
		g(fleetCapDesc, float64(s.Cap))
		g(leasesDesc, float64(s.Held))
		g(limitDesc, float64(s.Limit))
		g(staticDesc, static)
		g(instancesDesc, float64(s.Instances))
	}
}
