package advisor

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"
)

// Pollers. An application's queries on the primary less than pollCoalesce
// apart are one poll; at least minPolls polls at regular intervals (the
// middle half of the intervals within ±50% of the median) make a schedule.
// Its cost is the Active Time no other traffic covered: the model's awake
// time with and without its queries. A schedule costing less than 1% of the
// window's Active Time is no finding.

type appPolls struct {
	starts  []int64
	queries []int
	lastEnd int64
	cur     int // queries in the poll under way
}

// pollers finds the applications polling on a schedule, with the [[limits]]
// rule for each and what it would save; it also sets p.rejected, the
// queries those rules would have refused.
func (p *pass) pollers(awake time.Duration, w *Window, chosen []int) []Poller {
	polls := map[uint16]*appPolls{}
	pollOf := make([]int32, len(p.recs)) // per record: its poll's index in its application's
	for _, i := range p.order {
		r := &p.recs[i]
		a := polls[r.app]
		if a == nil {
			a = &appPolls{}
			polls[r.app] = a
		}
		if len(a.starts) == 0 || r.t-a.lastEnd > int64(pollCoalesce) {
			if len(a.starts) > 0 {
				a.queries = append(a.queries, a.cur)
			}
			a.starts = append(a.starts, r.t)
			a.cur = 0
		}
		a.cur++
		a.lastEnd = max(a.lastEnd, r.end())
		pollOf[i] = int32(len(a.starts) - 1)
	}
	var out []Poller
	p.rejected = make([]bool, len(p.recs))
	S := p.s.SuspendAfter
	for app, a := range polls {
		a.queries = append(a.queries, a.cur)
		if len(a.starts) < minPolls {
			continue
		}
		gaps := make([]int64, 0, len(a.starts)-1)
		for j := 1; j < len(a.starts); j++ {
			gaps = append(gaps, a.starts[j]-a.starts[j-1])
		}
		slices.Sort(gaps)
		med := gaps[len(gaps)/2]
		q1, q3 := gaps[len(gaps)/4], gaps[len(gaps)*3/4]
		if float64(q1) < 0.5*float64(med) || float64(q3) > 1.5*float64(med) {
			continue // no schedule
		}
		qs := slices.Clone(a.queries)
		slices.Sort(qs)
		perPoll := qs[len(qs)/2]
		burst := qs[min(len(qs)-1, len(qs)*95/100)]
		name := p.apps[app]
		alone, _ := p.awake(func(i int) bool { return p.recs[i].app == app })
		without, _ := p.awake(func(i int) bool { return p.recs[i].app != app })
		po := Poller{
			Application: name, Polls: int64(len(a.starts)), IntervalSeconds: time.Duration(med).Seconds(),
			QueriesPerPoll: perPoll, AwakeAloneSeconds: alone.Seconds(),
			AttributableSeconds: (awake - without).Seconds(),
		}
		var total int
		for _, q := range a.queries {
			total += q
		}
		po.QueriesPerHour = share(float64(total), w.Seconds/3600)
		po.KeepsAwake = time.Duration(gaps[len(gaps)-1]) <= S
		if po.AttributableSeconds <= 0.01*awake.Seconds() {
			continue // on a schedule, but other traffic keeps the compute awake anyway
		}
		po.AttributableCUHoursMonth = perMonth(p.cuHours(po.AttributableSeconds), w)
		// The rule: at most one poll per interval longer than suspend_after
		// (its observed pace when that is slower), refusing the rest.
		target := max(time.Duration(med), S+S/5)
		// A whole number of its intervals (a median a hair under the
		// schedule's does not add one).
		every := int32(max(math.Ceil(float64(target)/float64(med)-0.05), 1))
		target = roundNice(time.Duration(every) * time.Duration(med))
		perHour := math.Ceil(float64(perPoll) * float64(time.Hour) / float64(target))
		if existing, ok := p.s.LimitedApps[name]; ok {
			po.ExistingRule = existing
		}
		if name == "" { // a rule needs a match key: none to suggest
			po.Note = "clients without an application_name poll on a schedule: give them one (the connection string's application_name) so that a [[limits]] rule can match them"
			out = append(out, po)
			continue
		}
		rejected := p.simulateBucket(app, perHour, burst, chosen)
		var n int64
		for i, r := range rejected {
			if r {
				n++
				// The forecast applies the rules the TOML suggests.
				p.rejected[i] = po.ExistingRule == ""
			}
		}
		po.RuleQueriesSaved = n
		withRule, _ := p.awake(func(i int) bool { return !rejected[i] })
		po.RuleAwakeSavedSeconds = (awake - withRule).Seconds()
		// Polling at the rule's pace instead: one poll in every "every".
		slower, _ := p.awake(func(i int) bool { return p.recs[i].app != app || pollOf[i]%every == 0 })
		po.IntervalSavedSeconds = (awake - slower).Seconds()
		po.SuggestedIntervalSeconds = target.Seconds()
		po.IntervalCUHoursMonth = perMonth(p.cuHours(po.IntervalSavedSeconds), w)
		po.RuleCUHoursSavedMonth = perMonth(p.cuHours(po.RuleAwakeSavedSeconds), w)
		po.Note = pollerNote(&po, S, target)
		po.TOML = limitsTOML(name, perHour, burst, perPoll, target)
		out = append(out, po)
	}
	slices.SortFunc(out, func(x, y Poller) int {
		if c := cmp.Compare(y.AttributableSeconds, x.AttributableSeconds); c != 0 {
			return c
		}
		return cmp.Compare(x.Application, y.Application)
	})
	return out
}

// simulateBucket replays app's queries on the primary through the
// limiter's token bucket (queries_per_hour = perHour, burst, action
// "reject") and returns the ones it would have refused. As in the proxy,
// a transaction block takes one token, at its start, and a query the
// suggested cache rules would have answered takes none.
func (p *pass) simulateBucket(app uint16, perHour float64, burst int, chosen []int) []bool {
	out := make([]bool, len(p.recs))
	rate := perHour / 3600 // tokens per second
	tokens := float64(burst)
	var last int64
	first := true
	for i := range p.recs {
		r := &p.recs[i]
		if r.app != app || !r.has(fPrimary) || p.prevInTx[i] || p.cachedBy(chosen, i) {
			continue
		}
		if !first {
			tokens = min(float64(burst), tokens+float64(r.t-last)/1e9*rate)
		}
		first, last = false, r.t
		if tokens >= 1-1e-9 {
			tokens--
			continue
		}
		out[i] = true
	}
	return out
}

func pollerNote(po *Poller, S, target time.Duration) string {
	interval := time.Duration(po.IntervalSeconds * float64(time.Second)).Round(time.Second / 10)
	s := fmt.Sprintf("%s polls every %s (%d queries a poll, %.0f an hour)", po.Application, interval, po.QueriesPerPoll, po.QueriesPerHour)
	if po.KeepsAwake {
		s += fmt.Sprintf("; on its own it keeps the compute from ever suspending (suspend_after = %s)", S)
	}
	if po.AttributableSeconds > 0 {
		s += fmt.Sprintf("; %.2f CU-hours a month of Active Time are its alone (what stopping it, or LISTEN/NOTIFY, saves); polling every %s instead saves %.2f", po.AttributableCUHoursMonth, target, po.IntervalCUHoursMonth)
	}
	s += fmt.Sprintf(". The rule refuses what exceeds one poll per %s (worker = true: DISABLE_WORKERS=true stops it)", target)
	if po.RuleAwakeSavedSeconds < 0.01*po.AttributableSeconds {
		s += "; while it keeps polling every " + interval.String() + ", the refused queries' neighbours still wake the compute, so the rule saves queries, not Active Time"
	}
	if po.ExistingRule != "" {
		s += "; already matched by [[limits]] rule " + po.ExistingRule
	}
	return s
}

// roundNice rounds d to three significant digits: 6.9999678s is 7s.
func roundNice(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	unit := time.Duration(math.Pow10(max(int(math.Floor(math.Log10(float64(d))))-2, 0)))
	return d.Round(unit)
}
