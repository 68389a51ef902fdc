package limiter

import (
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// maxApps caps the applications counted, "other" included; later ones count as "other".
	maxApps = 1000
	// otherApp collects applications past maxApps.
	otherApp = "other"
)

// appCounter counts one application's queries: the hot path adds to n, and
// the janitor moves n into a ring of per-minute counts once per tick.
type appCounter struct {
	n    atomic.Int64 // queries since the last tick
	dead atomic.Bool  // evicted after an idle hour; sessions look the name up again
	name string
	// Owned by the janitor (appRates.mu held for writing).
	minutes  [60]int64 // ring indexed by Unix minute % 60
	minute   int64     // Unix minute of the newest slot; 0 before the first tick
	active   int64     // last Unix minute with a query
	hour     int64     // sum of minutes: queries in the last hour
	lastWarn time.Time
	gauge    prometheus.Gauge
}

// advance moves the ring to minute m, clearing the minutes skipped.
func (c *appCounter) advance(m int64) {
	if c.minute == 0 {
		c.minute, c.active = m, m
		return
	}
	for k := c.minute + 1; k <= m && k <= c.minute+60; k++ {
		c.minutes[k%60] = 0
	}
	c.minute = max(c.minute, m)
}

// appRates keeps queries per hour per application_name, with a WARN once per
// hour for an application above limiter.queries_per_hour_warn: the alert the
// post-mortem asked for ("worker queries > 1,000/hour").
type appRates struct {
	log  *slog.Logger
	vec  *prometheus.GaugeVec
	warn atomic.Int64 // queries_per_hour_warn; 0 disables

	mu   sync.RWMutex // guards apps, and the counters' janitor fields
	apps map[string]*appCounter
}

func newAppRates(log *slog.Logger, vec *prometheus.GaugeVec) *appRates {
	return &appRates{log: log, vec: vec, apps: map[string]*appCounter{}}
}

func (a *appRates) setWarn(n int) { a.warn.Store(int64(n)) }

// lookup returns the counter for an application, creating it while under
// the cap.
func (a *appRates) lookup(name string) *appCounter {
	a.mu.RLock()
	c := a.apps[name]
	a.mu.RUnlock()
	if c != nil {
		return c
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c = a.apps[name]; c != nil {
		return c
	}
	if len(a.apps) >= maxApps-1 { // keep room for "other"
		if name = otherApp; a.apps[name] != nil {
			return a.apps[name]
		}
	}
	c = &appCounter{name: name, gauge: a.vec.WithLabelValues(name)}
	a.apps[name] = c
	return c
}

// tick folds the queries since the last tick into the current minute,
// updates the gauges, warns, and forgets applications idle for an hour.
func (a *appRates) tick(now time.Time) {
	m := now.Unix() / 60
	warn := a.warn.Load()
	type hot struct {
		app string
		n   int64
	}
	var warnings []hot
	a.mu.Lock()
	for name, c := range a.apps {
		c.advance(m)
		if n := c.n.Swap(0); n > 0 {
			c.minutes[c.minute%60] += n
			c.active = c.minute
		}
		var sum int64
		for _, v := range c.minutes {
			sum += v
		}
		c.hour = sum
		c.gauge.Set(float64(sum))
		if warn > 0 && sum >= warn && (c.lastWarn.IsZero() || now.Sub(c.lastWarn) >= time.Hour) {
			c.lastWarn = now
			warnings = append(warnings, hot{name, sum})
		}
		if sum == 0 && m-c.active >= 60 && name != otherApp {
			c.dead.Store(true)
			delete(a.apps, name)
			a.vec.DeleteLabelValues(name)
		}
	}
	a.mu.Unlock()
	for _, w := range warnings {
		a.log.Warn("application above limiter.queries_per_hour_warn; a polling loop? cache its reads, poll less often, or add a [[limits]] rule for it",
			"application", w.app, "queries_last_hour", w.n, "queries_per_hour_warn", warn)
	}
}

// AppStatus is one application's query rate.
type AppStatus struct {
	// Application is the application_name ("other" past the cardinality cap).
	Application string `json:"application"`
	// QueriesLastHour counts the queries of the last hour (minute resolution).
	QueriesLastHour int64 `json:"queries_last_hour"`
	// AboveWarn is set when QueriesLastHour reaches limiter.queries_per_hour_warn.
	AboveWarn bool `json:"above_warn"`
}

// snapshot lists the applications, busiest first.
func (a *appRates) snapshot() []AppStatus {
	warn := a.warn.Load()
	a.mu.RLock()
	out := make([]AppStatus, 0, len(a.apps))
	for name, c := range a.apps {
		q := c.hour + c.n.Load()
		out = append(out, AppStatus{Application: name, QueriesLastHour: q, AboveWarn: warn > 0 && q >= warn})
	}
	a.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].QueriesLastHour != out[j].QueriesLastHour {
			return out[i].QueriesLastHour > out[j].QueriesLastHour
		}
		return out[i].Application < out[j].Application
	})
	return out
}
