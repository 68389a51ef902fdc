package advisor

import (
	"cmp"
	"slices"
	"sort"
	"time"
)

// Thresholds of the findings.
const (
	// minCacheCalls and minHitRatio: fewer calls, or a lower hit ratio at
	// the suggested TTL, is not worth a rule.
	minCacheCalls = 20
	minHitRatio   = 0.5
	// maxCandidates is how many cache candidates are listed.
	maxCandidates = 10
	// maxKeys bounds the cache simulation's entries; past it new keys
	// count as misses.
	maxKeys = 200_000
	// minLoop is the fewest runs of one shape that make a loop.
	minLoop = 5
	// loopGap: a client's queries less than this apart (outside
	// transaction blocks) are one burst of work, where loops are looked for.
	loopGap = 100 * time.Millisecond
	// loopPeriod: the most other queries between two runs of a loop's
	// shape (a loop body of up to three statements).
	loopPeriod = 3
	// pollCoalesce: an application's queries less than this apart are one poll.
	pollCoalesce = 250 * time.Millisecond
	// minPolls is the fewest polls that make a schedule.
	minPolls = 6
	month    = 30 * 24 * time.Hour
)

// ttlLadder are the TTLs the cache simulation tries.
var ttlLadder = [...]time.Duration{time.Second, 5 * time.Second, 15 * time.Second, time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour}

// pass holds what one Advise computes from a snapshot.
type pass struct {
	s      Settings
	recs   []rec
	shapes []*shape
	apps   []string
	dbs    []string

	act      []int64 // per record: start of the activity it stands for (earlier than t inside a transaction)
	prevInTx []bool  // per record: its client was inside a transaction block when it came
	order    []int32 // records by act

	hitMask  []uint8 // per record: bit k set when a cache at ttlLadder[k] would have answered it
	rejected []bool  // per record: a suggested [[limits]] rule would have refused it
	keys     []int   // per shape: distinct keys
	approx   []bool  // per shape: keys past maxKeys, or no Args
	inval    []int64 // per shape: committed writes to its tables
}

// Advise computes the findings over the queries held, judged against s.
func (a *Analyzer) Advise(s Settings) *Advice {
	if a == nil {
		return &Advice{Off: "the advisor is off: set querylog.advisor_records above 0 (default 50000) and restart"}
	}
	if s.SuspendAfter <= 0 {
		s.SuspendAfter = 5 * time.Minute
	}
	if s.Slow <= 0 {
		s.Slow = 500 * time.Millisecond
	}
	recs, shapes, apps, dbs, truncated := a.snapshot()
	_, seen := a.Len()
	p := &pass{s: s, recs: recs, shapes: shapes, apps: apps, dbs: dbs}
	adv := &Advice{}
	w := &adv.Window
	w.Queries, w.Observed, w.Truncated = len(recs), seen, truncated
	w.SuspendAfter = s.SuspendAfter.String()
	if len(recs) == 0 {
		return adv
	}
	w.From = recs[0].start()
	var last int64
	for i := range recs {
		last = max(last, recs[i].end())
		if recs[i].has(fPrimary) {
			w.PrimaryQueries++
			w.PrimarySeconds += float64(recs[i].dur) / 1e6
		}
	}
	w.To = time.Unix(0, last)
	w.Seconds = w.To.Sub(w.From).Seconds()
	p.activity()
	awake, wakeups := p.awake(nil)
	w.AwakeSeconds, w.Wakeups = awake.Seconds(), wakeups

	wake := p.wakes()
	stats := p.shapeStats(wake)
	sim := p.simulateCache(wake)
	var chosen []int
	adv.CacheCandidates, chosen = p.cacheCandidates(stats, sim, awake, w)
	adv.Slow = p.slowShapes(stats, w)
	adv.Loops = p.loops()
	adv.Pollers = p.pollers(awake, w, chosen)
	adv.Pool = p.pool()
	adv.Forecast = p.forecast(chosen, awake, w)
	adv.TOML = allTOML(adv)
	return adv
}

// forecast replays the window with every suggested rule: the cache
// candidates' hits and the pollers' refused queries no longer reach the
// primary.
func (p *pass) forecast(chosen []int, awake time.Duration, w *Window) Forecast {
	keep := func(i int) bool { return !p.cachedBy(chosen, i) && !p.rejected[i] }
	f := Forecast{PrimaryQueries: w.PrimaryQueries, AwakeSeconds: awake.Seconds()}
	for _, i := range p.order {
		if keep(int(i)) {
			f.PredictedPrimaryQueries++
		}
	}
	after, _ := p.awake(keep)
	f.PredictedAwakeSeconds = after.Seconds()
	f.CUHoursMonth = perMonth(p.cuHours(f.AwakeSeconds), w)
	f.PredictedCUHoursMonth = perMonth(p.cuHours(f.PredictedAwakeSeconds), w)
	return f
}

// cachedBy reports whether record i would have been a hit of the
// suggested cache rules (chosen: the ladder index per shape, -1 for none).
func (p *pass) cachedBy(chosen []int, i int) bool {
	k := chosen[p.recs[i].shape]
	return k >= 0 && p.hitMask[i]&(1<<k) != 0
}

// wakes marks the primary records that woke the compute: the first of each
// awake period.
func (p *pass) wakes() []bool {
	out := make([]bool, len(p.recs))
	S := int64(p.s.SuspendAfter)
	var hi int64
	open := false
	for _, i := range p.order {
		a, b := p.act[i], p.recs[i].end()+S
		if !open || a > hi {
			out[i] = true
			open, hi = true, b
			continue
		}
		hi = max(hi, b)
	}
	return out
}

// perMonth scales a figure over the window to a 30-day month. The window
// counts with the suspend_after its last query keeps the compute awake.
func perMonth(v float64, w *Window) float64 {
	span := w.Seconds
	if d, err := time.ParseDuration(w.SuspendAfter); err == nil {
		span += d.Seconds()
	}
	if span <= 0 {
		return 0
	}
	return v * month.Seconds() / span
}

// cuHours turns awake seconds into CU-hours.
func (p *pass) cuHours(seconds float64) float64 { return seconds / 3600 * p.s.ComputeUnits }

// activity sets each primary record's activity start: its own start, or,
// when the client's previous query left a transaction block open, that
// query's end (Neon counts a session idle in a transaction as active).
func (p *pass) activity() {
	p.act = make([]int64, len(p.recs))
	p.prevInTx = make([]bool, len(p.recs))
	type cl struct {
		inTx bool
		end  int64
	}
	clients := map[uint32]*cl{}
	for i := range p.recs {
		r := &p.recs[i]
		p.act[i] = r.t
		if r.client == 0 || !r.has(fPrimary) {
			continue
		}
		c := clients[r.client]
		if c == nil {
			c = &cl{}
			clients[r.client] = c
		}
		p.prevInTx[i] = c.inTx
		if c.inTx && c.end < r.t {
			p.act[i] = c.end
		}
		c.inTx, c.end = r.has(fInTx), r.end()
	}
	p.order = make([]int32, 0, len(p.recs))
	for i := range p.recs {
		if p.recs[i].has(fPrimary) {
			p.order = append(p.order, int32(i))
		}
	}
	sort.SliceStable(p.order, func(x, y int) bool { return p.act[p.order[x]] < p.act[p.order[y]] })
}

// awake returns the modeled Active Time of the primary records for which
// keep returns true (all when keep is nil), and how many times they woke
// the compute: the union of [activity, end + suspend_after).
func (p *pass) awake(keep func(i int) bool) (time.Duration, int64) {
	S := int64(p.s.SuspendAfter)
	var total, lo, hi int64
	var wakeups int64
	open := false
	for _, i := range p.order {
		if keep != nil && !keep(int(i)) {
			continue
		}
		a, b := p.act[i], p.recs[i].end()+S
		if open && a <= hi {
			hi = max(hi, b)
			continue
		}
		if open {
			total += hi - lo
		}
		lo, hi, open = a, b, true
		wakeups++
	}
	if open {
		total += hi - lo
	}
	return time.Duration(total), wakeups
}

// shapeStat is one shape's figures over the window.
type shapeStat struct {
	calls     int64 // on the primary
	hits      int64 // answered by the cache already
	primaryNS int64
	maxUS     uint32
	hist      histogram
	apps      map[uint16]int64
	wakeups   int64 // times one of its queries woke the compute
}

func (p *pass) shapeStats(wake []bool) []shapeStat {
	st := make([]shapeStat, len(p.shapes))
	for i := range p.recs {
		r := &p.recs[i]
		s := &st[r.shape]
		if s.apps == nil {
			s.apps = map[uint16]int64{}
		}
		s.apps[r.app]++
		if r.has(fHit) {
			s.hits++
			continue
		}
		if !r.has(fPrimary) {
			continue
		}
		s.calls++
		s.primaryNS += int64(r.dur) * 1e3
		s.maxUS = max(s.maxUS, r.dur)
		s.hist.add(r.dur)
	}
	for i, w := range wake {
		if w {
			st[p.recs[i].shape].wakeups++
		}
	}
	return st
}

// appNames returns the applications of a shape, busiest first.
func (p *pass) appNames(m map[uint16]int64) []string {
	ids := make([]uint16, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(x, y uint16) int {
		if c := cmp.Compare(m[y], m[x]); c != 0 {
			return c
		}
		return cmp.Compare(p.apps[x], p.apps[y])
	})
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, p.apps[id])
	}
	return out
}

// slowShapes lists the shapes whose p95 is above Settings.Slow.
func (p *pass) slowShapes(st []shapeStat, w *Window) []SlowShape {
	var out []SlowShape
	for i := range st {
		s := &st[i]
		if s.calls == 0 || p.shapes[i].other {
			continue
		}
		p95 := min(s.hist.quantileMS(0.95, s.calls), float64(s.maxUS)/1e3)
		if p95 <= float64(p.s.Slow)/1e6 {
			continue
		}
		out = append(out, SlowShape{
			Fingerprint: fpHex(p.shapes[i].fp), Query: p.shapes[i].query, Applications: p.appNames(s.apps),
			Calls: s.calls, P95MS: p95, MeanMS: float64(s.primaryNS) / float64(s.calls) / 1e6,
			MaxMS: float64(s.maxUS) / 1e3, PrimaryMS: float64(s.primaryNS) / 1e6,
			Share: share(float64(s.primaryNS)/1e9, w.PrimarySeconds),
		})
	}
	slices.SortFunc(out, func(x, y SlowShape) int { return cmp.Compare(y.PrimaryMS, x.PrimaryMS) })
	return out
}

func share(part, whole float64) float64 {
	if whole <= 0 {
		return 0
	}
	return part / whole
}

func fpHex(fp uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[fp&0xf]
		fp >>= 4
	}
	return string(b[:])
}
