package dashboard

import (
	"context"
	"time"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// maxShapes is how many query shapes the page lists (the busiest by total time).
const maxShapes = 20

// Switch is a kill switch the page shows, with a toggle for admins when Set
// is not nil. The list is data: a new switch is one more entry where the
// list is built (admin.HTTP).
type Switch struct {
	// Name identifies it in JSON and in POST /switches/{name}, e.g. "read_only".
	Name string
	// Env is the environment variable that sets it at start, e.g. "READ_ONLY_MODE".
	Env string
	// Help says what happens while it is on.
	Help string
	// On reports its state.
	On func() bool
	// Set flips it at run time; who is logged. Nil when only a restart changes it.
	Set func(on bool, who string) error
}

// SwitchState is a Switch as the page sees it.
type SwitchState struct {
	Name     string `json:"name"`
	Env      string `json:"env"`
	Help     string `json:"help"`
	On       bool   `json:"on"`
	Settable bool   `json:"settable"`
}

// State is the document GET /dashboard/state serves.
type State struct {
	// Time is when it was built; the page's clock for the charts.
	Time          time.Time     `json:"time"`
	UptimeSeconds float64       `json:"uptime_seconds"`
	ReadOnly      bool          `json:"read_only"`
	Draining      bool          `json:"draining"`
	Paused        bool          `json:"paused"`
	Clients       int           `json:"clients"`
	Pools         []Pool        `json:"pools"`
	Switches      []SwitchState `json:"switches"`
	// Redis is the limiter's mode: "off", "suspended", "fleet" or
	// "per_instance"; "" without a limiter.
	Redis        string                `json:"redis,omitempty"`
	Queries      *Queries              `json:"queries,omitempty"`
	Applications *Applications         `json:"applications,omitempty"`
	Budget       *limiter.BudgetStatus `json:"budget,omitempty"`
	// Cache is the result cache, when [[cache]] rules are configured.
	Cache *cache.Status `json:"cache,omitempty"`
	// Fleet lists the instances on the fleet's Redis and their totals
	// against each fleet cap, when the fleet has a Redis.
	Fleet *fleet.View `json:"fleet,omitempty"`
	// Listeners are the channels transaction-mode clients LISTEN to
	// through pgguard (SHOW LISTENERS).
	Listeners []proxy.ListenerStatus `json:"listeners"`
	// Leaks are sessions holding a server idle past pool.leak_warn_after.
	Leaks                []proxy.ClientStatus `json:"leaks"`
	LeakWarnAfterSeconds float64              `json:"leak_warn_after_seconds"`
	History              History              `json:"history"`
}

// Pool is one database's pool with its pool wait over the last minute.
type Pool struct {
	proxy.PoolStatus
	// Cap is the server connection limit: pool size + max_overflow.
	Cap int `json:"cap"`
	// WaitP95MS is the 95th percentile of pool wait over the last minute;
	// WaitsLastMinute counts those waits.
	WaitP95MS       float64 `json:"wait_p95_ms"`
	WaitsLastMinute uint64  `json:"waits_last_minute"`
}

// Queries are the busiest query shapes.
type Queries struct {
	// SlowMS is querylog.slow; a shape whose p95 is above it is marked slow.
	SlowMS float64 `json:"slow_ms"`
	// Tracked counts the shapes kept; Dropped the query log records dropped.
	Tracked int     `json:"tracked"`
	Dropped uint64  `json:"dropped"`
	Shapes  []Shape `json:"shapes"`
}

// Shape is one query shape's statistics, its slow mark and its trend.
type Shape struct {
	querylog.ShapeStats
	Slow bool `json:"slow"`
	// Trend is calls per minute over the last 30 minutes, oldest first
	// (empty until the sampler follows the shape).
	Trend []int64 `json:"trend"`
}

// Applications are the per-application figures of the limiter.
type Applications struct {
	QueriesPerHourWarn  int                    `json:"queries_per_hour_warn"`
	SuspendAfterSeconds float64                `json:"suspend_after_seconds"`
	Apps                []limiter.AppStatus    `json:"apps"`
	Pollers             []limiter.PollerReport `json:"pollers"`
	Rules               []limiter.RuleStatus   `json:"rules"`
}

// History is the ring buffer's points after a given time.
type History struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	WindowSeconds   float64 `json:"window_seconds"`
	Points          []Point `json:"points"`
}

func (d *Dashboard) history(since int64) History {
	return History{IntervalSeconds: d.o.Interval.Seconds(), WindowSeconds: d.o.Window.Seconds(), Points: d.s.since(since)}
}

// state builds the State at now.
func (d *Dashboard) state(now time.Time, switches []Switch, since int64) State {
	p := d.o.Proxy
	cfg := p.Config()
	ps := p.Status()
	st := State{
		Time: now, UptimeSeconds: ps.UptimeSeconds, ReadOnly: ps.ReadOnly, Draining: ps.Draining, Paused: ps.Paused,
		Clients: ps.Clients, Leaks: ps.Leaks, LeakWarnAfterSeconds: cfg.Pool.LeakWarnAfter.Seconds(),
		History: d.history(since),
	}
	if st.Leaks == nil {
		st.Leaks = []proxy.ClientStatus{}
	}
	st.Listeners = nonNil(p.Listeners())
	waitNow := readHists(d.o.Metrics.PoolWait, "database")
	waitBase := d.s.waitBase()
	for _, pool := range ps.Pools {
		pl := Pool{PoolStatus: pool, Cap: pool.Size + pool.MaxOverflow}
		if h := waitNow[pool.Database]; h != nil {
			w := h.sub(waitBase[pool.Database])
			pl.WaitP95MS, pl.WaitsLastMinute = w.quantile(0.95)*1e3, w.count
		}
		st.Pools = append(st.Pools, pl)
	}
	for _, sw := range switches {
		st.Switches = append(st.Switches, SwitchState{Name: sw.Name, Env: sw.Env, Help: sw.Help, On: sw.On(), Settable: sw.Set != nil})
	}
	if ql := d.o.QueryLog; ql != nil {
		stats := ql.Stats()
		q := &Queries{SlowMS: float64(cfg.QueryLog.Slow.Duration) / float64(time.Millisecond), Tracked: stats.Len(), Dropped: ql.Dropped()}
		for _, s := range stats.Snapshot("total", maxShapes) {
			sh := Shape{ShapeStats: s, Slow: q.SlowMS > 0 && s.P95MS > q.SlowMS, Trend: d.s.trendOf(s.Fingerprint, now)}
			if sh.Trend == nil {
				sh.Trend = []int64{}
			}
			q.Shapes = append(q.Shapes, sh)
		}
		if q.Shapes == nil {
			q.Shapes = []Shape{}
		}
		st.Queries = q
	}
	if ls, ok := d.o.Limiter.Status().(limiter.Status); ok {
		st.Redis = ls.Redis
		st.Applications = &Applications{
			QueriesPerHourWarn: ls.QueriesPerHourWarn, SuspendAfterSeconds: cfg.Budget.SuspendAfter.Seconds(),
			Apps: nonNil(ls.Applications), Pollers: nonNil(ls.Pollers), Rules: nonNil(ls.Rules),
		}
		b := ls.Budget
		st.Budget = &b
	}
	if f := d.o.Fleet; f != nil && f.Mode() != "off" {
		v := f.View(context.Background())
		st.Fleet = &v
	}
	if cs, ok := d.o.Cache.Status().(cache.Status); ok && d.o.Cache.Enabled() {
		cs.Rules = nonNil(cs.Rules)
		st.Cache = &cs
	}
	return st
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
