// Package metrics defines pgguard's Prometheus metrics on a registry of its
// own, created once. Hot-path code holds pre-resolved children (per database)
// so recording costs an atomic add, never a label lookup.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every metric pgguard exports.
type Metrics struct {
	// Registry is pgguard's own registry; other packages register their collectors here.
	Registry *prometheus.Registry

	QueryDuration  *prometheus.HistogramVec // database, upstream
	Queries        *prometheus.CounterVec   // database, application
	QueryErrors    *prometheus.CounterVec   // database, sqlstate
	PoolWait       *prometheus.HistogramVec // database
	PoolMax        *prometheus.GaugeVec     // database
	UpstreamActive *prometheus.GaugeVec     // database, upstream
	Switches       *prometheus.CounterVec   // database
	ReadOnly       prometheus.Gauge
	Bytes          *prometheus.CounterVec // direction
	ClientRefusals *prometheus.CounterVec // sqlstate: connections refused before or at login
	UpstreamFull   *prometheus.CounterVec // database: dials the upstream refused as full (53300), retried
	ClientsReaped  *prometheus.CounterVec // reason
	Cancelled      *prometheus.CounterVec // reason: queries pgguard cancelled
	FallbackWrites *prometheus.CounterVec // database, table
	ClientsPinned  *prometheus.CounterVec // reason
	LeakWarnings   *prometheus.CounterVec // application
	Panics         *prometheus.CounterVec // side: client or server

	// SessionsLearned counts learn queries answered (proxy/learn.go).
	SessionsLearned prometheus.Counter
}

// New creates the metrics on a fresh registry, with Go runtime and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		QueryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                           "pgguard_query_duration_seconds",
			Help:                           "Time from a query (or extended-protocol execution) reaching the server to its ReadyForQuery, excluding pool wait.",
			Buckets:                        []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 160,
		}, []string{"database", "upstream"}),
		Queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_queries_total",
			Help: "Queries relayed, by database and application_name (applications past the cardinality cap count as \"other\").",
		}, []string{"database", "application"}),
		QueryErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_query_errors_total",
			Help: "Queries that ended in an ErrorResponse, by SQLSTATE.",
		}, []string{"database", "sqlstate"}),
		PoolWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                           "pgguard_pool_wait_seconds",
			Help:                           "Time clients waited for a server connection.",
			Buckets:                        []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 160,
		}, []string{"database"}),
		PoolMax: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgguard_pool_max_connections",
			Help: "Server connection limit per database: pool.size + pool.max_overflow.",
		}, []string{"database"}),
		UpstreamActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgguard_upstream_active",
			Help: "1 for the upstream (primary or fallback) new server connections go to.",
		}, []string{"database", "upstream"}),
		Switches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_upstream_switches_total",
			Help: "Switches between primary and fallback.",
		}, []string{"database"}),
		ReadOnly: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgguard_read_only",
			Help: "1 while the read-only kill switch is on.",
		}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_bytes_total",
			Help: "Bytes relayed, by direction (client_to_server, server_to_client).",
		}, []string{"direction"}),
		UpstreamFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_upstream_refusals_total",
			Help: "Server connections the upstream refused as full (SQLSTATE 53300, or Neon's \"too many connections\"); the waiting client stays queued and the dial is retried with backoff.",
		}, []string{"database"}),
		ClientRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_client_refusals_total",
			Help: "Client connections or requests refused by pgguard, by SQLSTATE.",
		}, []string{"sqlstate"}),
		ClientsPinned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_clients_pinned_total",
			Help: "Transaction-mode clients pinned to one server for the rest of their session, by reason (LISTEN, SQL PREPARE, session advisory lock, cursor WITH HOLD, temporary table, temporary object).",
		}, []string{"reason"}),
		SessionsLearned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgguard_sessions_learned_total",
			Help: "Session states pgguard read from a server after a unit of work that may have changed settings its text does not show (a user function, DO, CALL, set_config with computed arguments).",
		}),
		LeakWarnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_leak_warnings_total",
			Help: "Sessions that held a server connection idle past pool.leak_warn_after, by application_name.",
		}, []string{"application"}),
		ClientsReaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_clients_closed_total",
			Help: "Client sessions closed by pgguard, by reason (client_idle_timeout, idle_transaction_timeout, login_timeout, shutdown, kill, cancel_timeout, server_unresponsive, failback).",
		}, []string{"reason"}),
		Cancelled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_queries_cancelled_total",
			Help: "Queries pgguard sent a CancelRequest for, by reason (query_timeout); the session goes on.",
		}, []string{"reason"}),
		FallbackWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_fallback_writes_total",
			Help: "Statements that wrote on a writable fallback (failover.fallback_read_only = false), by database and table; these rows are not on the primary and pgguard does not reconcile them.",
		}, []string{"database", "table"}),
		Panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgguard_panics_total",
			Help: "Internal errors (panics) in a connection's goroutine; that connection was closed and the process served on. By side: client or server.",
		}, []string{"side"}),
	}
	r.MustRegister(m.Panics, m.QueryDuration, m.Queries, m.QueryErrors, m.PoolWait, m.PoolMax,
		m.UpstreamActive, m.Switches, m.ReadOnly, m.Bytes, m.ClientRefusals, m.UpstreamFull, m.ClientsReaped, m.Cancelled, m.FallbackWrites, m.ClientsPinned, m.SessionsLearned, m.LeakWarnings)
	// Exported at 0 from the start, so that an alert on its increase sees
	// the first panic (a series born at 1 has no increase to rate).
	m.Panics.WithLabelValues("client")
	m.Panics.WithLabelValues("server")
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
