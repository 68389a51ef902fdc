package limiter

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxStatusApps bounds the applications listed in Status and StatsRows.
const maxStatusApps = 100

// Status is the limiter's section of GET /status.
type Status struct {
	// Redis is "off" (no limiter.redis_url), "suspended" (SUSPEND_REDIS),
	// "fleet" (shared through Redis) or "per_instance" (Redis unreachable).
	Redis string `json:"redis"`
	// DisableWorkers is the worker kill switch.
	DisableWorkers     WorkersSwitch  `json:"disable_workers"`
	Rules              []RuleStatus   `json:"rules"`
	QueriesPerHourWarn int            `json:"queries_per_hour_warn"`
	Applications       []AppStatus    `json:"applications"` // busiest first, at most 100
	Budget             BudgetStatus   `json:"budget"`
	Pollers            []PollerReport `json:"pollers"`
}

// RuleStatus is one [[limits]] rule and its state on this instance.
type RuleStatus struct {
	Name             string  `json:"name"`
	Match            string  `json:"match"`
	QueriesPerSecond float64 `json:"queries_per_second,omitempty"`
	QueriesPerMinute float64 `json:"queries_per_minute,omitempty"`
	QueriesPerHour   float64 `json:"queries_per_hour,omitempty"`
	Burst            int     `json:"burst"`
	Action           string  `json:"action"`
	MaxDelay         string  `json:"max_delay,omitempty"`
	MaxConnections   int     `json:"max_connections,omitempty"`
	Priority         int     `json:"priority"`
	Worker           bool    `json:"worker,omitempty"`
	// Tokens left in the per-instance bucket (the fleet's live in Redis).
	Tokens float64 `json:"tokens"`
	// Connections held by the rule's clients, and sessions waiting for one.
	Connections int   `json:"connections"`
	Waiting     int   `json:"waiting"`
	Admitted    int64 `json:"admitted"`
	Delayed     int64 `json:"delayed"`
	Rejected    int64 `json:"rejected"`
}

// redisMode names where the limits live now.
func (l *Limiter) redisMode() string {
	switch {
	case l.mode != "redis":
		return l.mode
	case l.redis.Up.Load():
		return "fleet"
	}
	return "per_instance"
}

// RedisMode returns where the limits live now: "off" (no limiter.redis_url),
// "suspended" (SUSPEND_REDIS), "fleet" or "per_instance" (Redis
// unreachable). Nil-safe: "off".
func (l *Limiter) RedisMode() string {
	if l == nil {
		return "off"
	}
	return l.redisMode()
}

// Status returns a JSON-able snapshot for /status. Nil-safe.
func (l *Limiter) Status() any {
	if l == nil {
		return nil
	}
	return l.status()
}

func (l *Limiter) status() Status {
	now := l.clock.Now()
	st := Status{Redis: l.redisMode(), DisableWorkers: l.workersStatus(), Budget: l.budget.Snapshot(), Pollers: l.budget.Pollers()}
	if cfg := l.cfg.Load(); cfg != nil {
		st.QueriesPerHourWarn = cfg.Limiter.QueriesPerHourWarn
	}
	for _, r := range *l.set.Load() {
		rs := RuleStatus{
			Name: r.name, Match: r.matchString(),
			QueriesPerSecond: r.cfg.QueriesPerSecond, QueriesPerMinute: r.cfg.QueriesPerMinute, QueriesPerHour: r.cfg.QueriesPerHour,
			Burst: int(r.burst), Action: "delay", MaxConnections: r.maxConns, Priority: r.priority, Worker: r.worker,
			Admitted: r.st.admitted.Load(), Delayed: r.st.delayed.Load(), Rejected: r.st.rejected.Load(),
		}
		if r.reject {
			rs.Action = "reject"
		} else {
			rs.MaxDelay = r.maxDelay.String()
		}
		if r.hasRate() {
			r.st.mu.Lock()
			rs.Tokens = round2(r.st.bucket.level(now))
			r.st.mu.Unlock()
		}
		rs.Connections, rs.Waiting = r.st.sem.state()
		st.Rules = append(st.Rules, rs)
	}
	st.Applications = l.apps.snapshot()
	if len(st.Applications) > maxStatusApps {
		st.Applications = st.Applications[:maxStatusApps]
	}
	return st
}

// StatsRows is the limiter's view for the admin console: one row per rule,
// application, endpoint budget and poller, readable in psql.
func (l *Limiter) StatsRows() (columns []string, rows [][]string) {
	columns = []string{"kind", "name", "detail"}
	if l == nil {
		return columns, nil
	}
	st := l.status()
	rows = append(rows, []string{"limiter", "redis", st.Redis})
	w := st.DisableWorkers
	wd := "off"
	if w.On {
		wd = "ON: new transactions of worker rules get 53400"
	}
	rules := "no rule has worker = true"
	if len(w.Rules) > 0 {
		rules = "worker rules: " + strings.Join(w.Rules, ", ")
	}
	wd += fmt.Sprintf(" (set by %s at %s; %s)", w.By, w.Since.UTC().Format(time.RFC3339), rules)
	rows = append(rows, []string{"limiter", "disable_workers", wd})
	for _, r := range st.Rules {
		var d []string
		if r.Worker {
			d = append(d, "worker")
		}
		for i, q := range []float64{r.QueriesPerSecond, r.QueriesPerMinute, r.QueriesPerHour} {
			if q > 0 {
				d = append(d, rateKeys[i]+"="+fmtFloat(q))
			}
		}
		if len(d) > 0 {
			d = append(d, "burst="+strconv.Itoa(r.Burst), "action="+r.Action)
			if r.MaxDelay != "" {
				d = append(d, "max_delay="+r.MaxDelay)
			}
			d = append(d, "tokens="+fmtFloat(r.Tokens))
		}
		if r.MaxConnections > 0 {
			d = append(d, fmt.Sprintf("connections=%d/%d waiting=%d", r.Connections, r.MaxConnections, r.Waiting))
		}
		d = append(d, fmt.Sprintf("priority=%d admitted=%d delayed=%d rejected=%d (%s)", r.Priority, r.Admitted, r.Delayed, r.Rejected, r.Match))
		rows = append(rows, []string{"rule", r.Name, strings.Join(d, " ")})
	}
	for _, a := range st.Applications {
		d := strconv.FormatInt(a.QueriesLastHour, 10) + " queries in the last hour"
		if a.AboveWarn {
			d += fmt.Sprintf(" (above queries_per_hour_warn = %d)", st.QueriesPerHourWarn)
		}
		rows = append(rows, []string{"application", a.Application, d})
	}
	b := st.Budget
	rows = append(rows, []string{"budget", b.Month, fmt.Sprintf("awake %s, %.2f of %g CU-hours (%.1f%%), projected %.1f, on_exhausted=%s%s",
		time.Duration(b.AwakeSeconds*float64(time.Second)).Round(time.Second), b.CUHours, b.MonthlyCUHours, 100*b.UsedRatio,
		b.ProjectedCUHours, b.OnExhausted, map[bool]string{true: " EXHAUSTED", false: ""}[b.Exhausted])})
	for _, e := range b.Endpoints {
		rows = append(rows, []string{"endpoint", e.Endpoint, fmt.Sprintf("awake %s this month, awake now: %t",
			time.Duration(e.AwakeSeconds*float64(time.Second)).Round(time.Second), e.AwakeNow)})
	}
	for _, p := range st.Pollers {
		d := fmt.Sprintf("%d queries, %d transactions, %d connections in %s, gap median %s max %s, alone keeps %s awake (%.0f%%; %s)",
			p.Queries, p.Transactions, p.Connections, p.Window.Round(time.Minute), roundDur(p.MedianGap), roundDur(p.MaxGap),
			p.AwakeTime.Round(time.Second), 100*p.AwakeFraction, AwakeByString(p))
		if p.KeepsAwake {
			d += ", KEEPS COMPUTE AWAKE"
		}
		rows = append(rows, []string{"poller", p.Application, d})
	}
	return columns, rows
}

// AwakeByString says what kept the compute awake for an application, the
// largest first: "transactions 1h0m0s, queries 5m0s" (kinds with none left
// out; "nothing" when all are).
func AwakeByString(p PollerReport) string {
	by := []struct {
		k Kind
		d time.Duration
	}{{KindQuery, p.AwakeQueries}, {KindTransaction, p.AwakeTransactions}, {KindConnection, p.AwakeConnections}}
	sort.SliceStable(by, func(i, j int) bool { return by[i].d > by[j].d })
	var parts []string
	for _, b := range by {
		if b.d.Round(time.Second) > 0 || b.d > 0 && len(parts) == 0 {
			parts = append(parts, b.k.String()+" "+roundDur(b.d).String())
		}
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}
