package admin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/querylog"
)

// Console views of the query log, the limiter and the result cache. Each builds a Table from a
// snapshot; none holds a lock while the table is sent.

// showQueriesLimit is how many shapes SHOW QUERIES lists; GET /queries?limit=0
// has them all.
const showQueriesLimit = 50

// maxQueryText bounds the query column so that psql stays readable; the full
// text is in GET /queries.
const maxQueryText = 300

// queriesTable is SHOW QUERIES [total|calls|p95|mean]: the busiest query
// shapes, sorted descending by sortBy.
func queriesTable(st *querylog.Stats, sortBy string) Table {
	t := Table{Columns: []string{"fingerprint", "query", "calls", "errors", "rows", "total_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}}
	for _, s := range st.Snapshot(sortBy, showQueriesLimit) {
		t.Rows = append(t.Rows, []string{s.Fingerprint, oneLine(s.Query, maxQueryText),
			i64(s.Calls), i64(s.Errors), i64(s.Rows),
			f3(s.TotalMS), f3(s.MeanMS), f3(s.P50MS), f3(s.P95MS), f3(s.P99MS), f3(s.MaxMS)})
	}
	return t
}

// querySorts are the orders SHOW QUERIES accepts, as querylog.Stats.Snapshot does.
var querySorts = []string{"total", "calls", "p95", "mean"}

// limitsTable is SHOW LIMITS: the limiter's own overview (rules with their
// buckets and connection slots, applications, budget, pollers).
func limitsTable(l *limiter.Limiter) Table {
	cols, rows := l.StatsRows()
	return Table{Columns: cols, Rows: rows}
}

// cacheTable is SHOW CACHE: each [[cache]] rule's hits, misses,
// invalidations and bytes, then a total whose note says where entries live.
func cacheTable(c *cache.Cache) Table {
	cols, rows := c.StatsRows()
	return Table{Columns: cols, Rows: rows}
}

// limiterStatus returns the limiter's typed status.
func limiterStatus(l *limiter.Limiter) limiter.Status {
	st, _ := l.Status().(limiter.Status)
	return st
}

// applicationsTable is SHOW APPLICATIONS: queries per hour by
// application_name, busiest first, against limiter.queries_per_hour_warn.
func applicationsTable(l *limiter.Limiter) Table {
	st := limiterStatus(l)
	t := Table{Columns: []string{"application_name", "queries_last_hour", "queries_per_hour_warn", "above_warn"}}
	for _, a := range st.Applications {
		t.Rows = append(t.Rows, []string{a.Application, i64(a.QueriesLastHour), strconv.Itoa(st.QueriesPerHourWarn), yesNo(a.AboveWarn)})
	}
	return t
}

// budgetTable is SHOW BUDGET: the Neon Active Time model's figures for the
// month, one per row, then each endpoint and a line per application from the
// polling-pattern report (SHOW POLLERS has its columns).
func budgetTable(l *limiter.Limiter) Table {
	st := limiterStatus(l)
	b := st.Budget
	t := Table{Columns: []string{"key", "value"}}
	add := func(k, v string) { t.Rows = append(t.Rows, []string{k, v}) }
	add("month", b.Month)
	add("awake", secs(b.AwakeSeconds).String())
	add("cu_hours", f3(b.CUHours))
	add("projected_cu_hours", f3(b.ProjectedCUHours))
	add("monthly_cu_hours", fmtG(b.MonthlyCUHours))
	add("used", fmt.Sprintf("%.1f%%", 100*b.UsedRatio))
	add("alert_at", fmt.Sprintf("%.0f%%", 100*b.AlertAt))
	add("exhausted", yesNo(b.Exhausted))
	add("on_exhausted", b.OnExhausted)
	add("compute_units", fmtG(b.ComputeUnits))
	add("suspend_after", b.SuspendAfter)
	add("fleet", yesNo(b.Fleet)+" (redis: "+st.Redis+")")
	for _, e := range b.Endpoints {
		v := secs(e.AwakeSeconds).String() + " awake this month"
		if e.AwakeNow {
			v += ", awake now"
		} else {
			v += ", suspended now"
		}
		if !e.LastWake.IsZero() {
			v += ", last woken " + e.LastWake.UTC().Format(time.RFC3339) + " by " + wakeCause(e.LastWakeBy)
		}
		add("endpoint "+e.Endpoint, v)
	}
	for _, p := range st.Pollers {
		v := fmt.Sprintf("%d queries, %d transactions, %d connections, median gap %s, alone keeps the compute awake %s of %s (%.0f%%) by %s",
			p.Queries, p.Transactions, p.Connections, roundDur(p.MedianGap), p.AwakeTime.Round(time.Second), p.Window.Round(time.Minute),
			100*p.AwakeFraction, limiter.AwakeByString(p))
		if p.KeepsAwake {
			v += ": KEEPS IT FROM SUSPENDING"
		}
		add("poller "+p.Application, v)
	}
	return t
}

// wakeCause names the application of a wake-up for people.
func wakeCause(app string) string {
	switch app {
	case "":
		return "(a new server connection, no client yet)"
	case limiter.NoApplication:
		return "(no client: a server connection nobody used)"
	}
	return app
}

// pollersTable is SHOW POLLERS: each application's activity pattern on the
// primary over the last day, the ones keeping a compute awake first, with
// what kept it awake (running queries, open transactions, new connections).
func pollersTable(l *limiter.Limiter) Table {
	t := Table{Columns: []string{"application_name", "endpoint", "queries", "median_gap", "max_gap", "awake", "awake_pct", "keeps_awake", "window",
		"transactions", "connections", "awake_queries", "awake_transactions", "awake_connections", "kept_awake_by"}}
	for _, p := range limiterStatus(l).Pollers {
		t.Rows = append(t.Rows, []string{p.Application, p.Endpoint, i64(p.Queries), roundDur(p.MedianGap).String(), roundDur(p.MaxGap).String(),
			p.AwakeTime.Round(time.Second).String(), fmt.Sprintf("%.1f", 100*p.AwakeFraction), yesNo(p.KeepsAwake), p.Window.Round(time.Minute).String(),
			i64(p.Transactions), i64(p.Connections), p.AwakeQueries.Round(time.Second).String(), p.AwakeTransactions.Round(time.Second).String(),
			p.AwakeConnections.Round(time.Second).String(), p.KeptAwakeBy})
	}
	return t
}

// oneLine collapses whitespace runs (newlines included) to one space and cuts
// s to at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		s = string(r[:n-1]) + "…"
	}
	return s
}

func i64(n int64) string    { return strconv.FormatInt(n, 10) }
func f3(v float64) string   { return strconv.FormatFloat(v, 'f', 3, 64) }
func fmtG(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
func secs(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Second)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// roundDur rounds d to a precision that reads well: ms below a second, s below
// an hour, else minutes.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Hour:
		return d.Round(time.Second)
	}
	return d.Round(time.Minute)
}
