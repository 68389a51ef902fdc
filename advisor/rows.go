package advisor

import (
	"fmt"
	"strconv"
	"strings"
)

// Rows renders the advice as one table for the admin console (SHOW ADVICE):
// a row per finding, its evidence and the change to make.
func (a *Advice) Rows() (columns []string, rows [][]string) {
	columns = []string{"kind", "subject", "evidence", "change"}
	add := func(kind, subject, evidence, change string) {
		rows = append(rows, []string{kind, subject, evidence, change})
	}
	if a.Off != "" {
		add("off", "", a.Off, "querylog.advisor_records = 50000")
		return columns, rows
	}
	w := &a.Window
	add("window", fmt.Sprintf("%d queries over %.0f s", w.Queries, w.Seconds),
		fmt.Sprintf("%d on the primary (%.1f s of query time); modeled Active Time %.0f s, %d wake-ups (suspend_after %s)%s",
			w.PrimaryQueries, w.PrimarySeconds, w.AwakeSeconds, w.Wakeups, w.SuspendAfter, truncNote(w)), "")
	for i, c := range a.CacheCandidates {
		add("cache", fmt.Sprintf("#%d %s", i+1, oneLine(c.Query)),
			fmt.Sprintf("%d calls from %s, %.0f ms on the primary (%.0f%%); %.0f%% hits at ttl %s (%d keys, %d invalidating writes): saves %d queries, %.0f ms, %d wake-ups, %.0f s awake",
				c.Calls, strings.Join(c.Applications, ", "), c.PrimaryMS, 100*c.Share, 100*c.HitRatio, c.TTL, c.Keys, c.Invalidations,
				c.Hits, c.SavedPrimaryMS, c.WakeupsSaved, c.AwakeSavedSeconds),
			c.TOML)
	}
	for _, l := range a.Loops {
		parent := "no parent query"
		if l.Parent != nil {
			parent = fmt.Sprintf("parent %s (%.1f rows)", oneLine(l.Parent.Query), l.Parent.MeanRows)
		}
		add("n+1", l.Application+": "+oneLine(l.Query),
			fmt.Sprintf("%d loops of %.1f queries (max %d)%s; %s; %d extra round trips, %.1f ms each loop",
				l.Loops, l.MeanCount, l.MaxCount, map[bool]string{true: " in transaction blocks"}[l.InTransaction], parent,
				l.ExtraRoundTrips, l.ExtraMSPerLoop),
			l.Fix)
	}
	for _, p := range a.Pollers {
		add("poller", p.Application,
			fmt.Sprintf("%s; awake alone %.0f s, its own %.0f s; the rule refuses %d queries, saves %.0f s awake (%.2f CU-h/month)",
				p.Note, p.AwakeAloneSeconds, p.AttributableSeconds, p.RuleQueriesSaved, p.RuleAwakeSavedSeconds, p.RuleCUHoursSavedMonth),
			p.TOML)
	}
	for _, s := range a.Slow {
		add("slow", oneLine(s.Query),
			fmt.Sprintf("p95 %.0f ms (mean %.0f, max %.0f) over %d calls from %s; %.0f%% of the primary's query time",
				s.P95MS, s.MeanMS, s.MaxMS, s.Calls, strings.Join(s.Applications, ", "), 100*s.Share),
			"look at its plan (EXPLAIN ANALYZE): an index, or a replica for reporting reads")
	}
	for _, p := range a.Pool {
		add("pool", p.Database,
			fmt.Sprintf("peak %d busy server connections (p99 %d), pool.size %d; %d queries queued, p95 wait %.1f ms",
				p.PeakConcurrent, p.P99Concurrent, p.PoolSize, p.Queued, p.WaitP95MS),
			p.Advice)
	}
	f := &a.Forecast
	add("forecast", "every suggested rule applied",
		fmt.Sprintf("primary queries %d -> %d; Active Time %.0f s -> %.0f s (%.2f -> %.2f CU-hours a month)",
			f.PrimaryQueries, f.PredictedPrimaryQueries, f.AwakeSeconds, f.PredictedAwakeSeconds, f.CUHoursMonth, f.PredictedCUHoursMonth),
		"")
	return columns, rows
}

func truncNote(w *Window) string {
	if !w.Truncated {
		return ""
	}
	return "; older queries (" + strconv.FormatInt(w.Observed-int64(w.Queries), 10) + ") fell out of the advisor's ring"
}

// oneLine collapses whitespace and shortens a query for a table cell.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}
