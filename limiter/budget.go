package limiter

import (
	"context"
	"log/slog"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgguard/pgguard/config"
)

// Values of budget.on_exhausted, as returned by Budget.Action.
const (
	ActionAlert             = "alert"               // log only
	ActionReadOnly          = "read_only"           // the proxy turns read-only
	ActionRejectLowPriority = "reject_low_priority" // Admit refuses priority <= 0
	ActionFallback          = "fallback"            // the proxy routes to the fallback
)

// maxPending bounds the awake spans kept for Redis while it is unreachable.
const maxPending = 4096

// maxAwakeSpans bounds the awake periods a compute keeps apart; past it the
// older half is folded into one sum (spans arriving for that time then count
// from the end of the folded ones on).
const maxAwakeSpans = 4096

// Budget models the Neon compute Active Time of the primaries and the
// month's CU-hours against budget.monthly_cu_hours.
//
// Neon suspends a compute after suspend_after without activity and bills CU x
// hours while it is awake. The model: the proxy reports spans of activity
// (queries from send to answer, transaction blocks held open, new server
// connections as instants; see Activity), and a compute is awake over the
// union of the spans, each extended by suspend_after. Activity arriving
// exactly suspend_after after the previous one finds it still awake (the gap
// must exceed suspend_after for a suspend). Every endpoint (the primary URL's
// host, "-pooler" stripped) is one compute; databases sharing an endpoint
// share its awake time. The month is the UTC calendar month. Without Redis the
// figures start at 0 when pgguard starts; with it they are the fleet's.
type Budget struct {
	log   *slog.Logger
	clock Clock
	redis *redisStore // nil: per instance

	exhausted atomic.Bool
	refuseLow atomic.Bool                // exhausted with reject_low_priority
	action    atomic.Pointer[string]     // on_exhausted while exhausted, else ""
	refused   atomic.Pointer[LimitError] // the reject_low_priority refusal

	mu        sync.Mutex
	cfg       config.Budget
	dbCompute map[string]string // database → endpoint key
	computes  map[string]*compute
	month     time.Time // start of the month accounted (UTC)
	alerted   bool      // alert_at WARN sent this month
	exLogged  bool      // exhaustion WARN sent this month

	suspendNS atomic.Int64 // suspend_after, for Activity without the lock

	regMu sync.Mutex // guards acts; taken alone
	acts  map[*Activity]struct{}
}

func newBudget(log *slog.Logger, clock Clock) *Budget {
	b := &Budget{log: log, clock: clock, computes: map[string]*compute{}, acts: map[*Activity]struct{}{}}
	empty := ""
	b.action.Store(&empty)
	b.suspendNS.Store(int64(5 * time.Minute))
	return b
}

// configure applies [budget] and the databases' endpoints.
func (b *Budget) configure(cfg *config.Config, now time.Time) {
	b.mu.Lock()
	b.cfg = cfg.Budget
	if b.cfg.SuspendAfter.Duration <= 0 {
		b.cfg.SuspendAfter = config.D(5 * time.Minute)
	}
	b.suspendNS.Store(int64(b.cfg.SuspendAfter.Duration))
	b.refused.Store(nil) // rebuilt with the new figures if still exhausted
	if b.month.IsZero() {
		b.month = monthStart(now)
	}
	b.dbCompute = map[string]string{}
	for name, d := range cfg.Databases {
		if d == nil {
			continue
		}
		key := endpointKey(d.Primary, name)
		b.dbCompute[name] = key
		b.computeLocked(key)
	}
	ev := b.evaluateLocked(now)
	b.mu.Unlock()
	ev.emit(b.log)
}

// endpointKey names the compute behind a primary URL: its host, with Neon's
// "-pooler" suffix removed from the endpoint ID so that pooled and direct
// URLs count as one compute.
func endpointKey(primary, database string) string {
	u, err := url.Parse(primary)
	if err != nil || u.Hostname() == "" {
		return database
	}
	h := u.Hostname()
	if first, rest, ok := strings.Cut(h, "."); ok && strings.HasSuffix(first, "-pooler") {
		h = strings.TrimSuffix(first, "-pooler") + "." + rest
	}
	return h
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func (b *Budget) suspend() time.Duration { return b.cfg.SuspendAfter.Duration }

func (b *Budget) computeLocked(key string) *compute {
	c := b.computes[key]
	if c == nil {
		c = &compute{key: key, pollers: map[string]*poller{}, floor: b.month}
		b.computes[key] = c
	}
	return c
}

// observe records an instant of query activity on database's primary at t.
func (b *Budget) observe(database, app string, t time.Time) {
	b.merge(database, []segment{{app: app, a: t, b: t, last: KindQuery, queries: 1}}, t)
}

// merge adds segments of activity on database's primary to its compute and
// to their applications' poller statistics, then re-evaluates the budget.
func (b *Budget) merge(database string, segs []segment, now time.Time) {
	b.mu.Lock()
	b.rollLocked(now)
	key, ok := b.dbCompute[database]
	if !ok {
		key = database
	}
	c := b.computeLocked(key)
	S := b.suspend()
	for i := range segs {
		sg := &segs[i]
		c.noteWake(sg)
		c.add(sg.a, sg.b, S, b.redis != nil)
		if sg.app != "" {
			c.pollerFor(sg.app).add(sg, S)
		}
	}
	ev := b.evaluateLocked(now)
	b.mu.Unlock()
	ev.emit(b.log)
}

// rollLocked starts a new billing month when now is past the current one.
func (b *Budget) rollLocked(now time.Time) {
	ms := monthStart(now)
	if !ms.After(b.month) {
		return
	}
	b.month = ms
	for _, c := range b.computes {
		c.roll(ms)
	}
	b.alerted, b.exLogged = false, false
}

// awakeLocked sums the endpoints' awake time this month.
func (b *Budget) awakeLocked(now time.Time) time.Duration {
	var d time.Duration
	for _, c := range b.computes {
		d += c.awake(now)
	}
	return d
}

// budgetEvent is what evaluateLocked decided to log, emitted after unlocking.
type budgetEvent struct {
	alert, exhausted bool
	attrs            []any
}

func (e budgetEvent) emit(log *slog.Logger) {
	if e.alert {
		log.Warn("Neon compute budget reached budget.alert_at", e.attrs...)
	}
	if e.exhausted {
		log.Warn("Neon compute budget exhausted; applying budget.on_exhausted", e.attrs...)
	}
}

// evaluateLocked updates the exhausted state and decides the month's WARNs.
func (b *Budget) evaluateLocked(now time.Time) budgetEvent {
	b.rollLocked(now)
	var ev budgetEvent
	monthly := b.cfg.MonthlyCUHours
	cu := b.cfg.ComputeUnits * b.awakeLocked(now).Hours()
	ratio := 0.0
	if monthly > 0 {
		ratio = cu / monthly
	}
	ex := monthly > 0 && ratio >= 1
	if monthly > 0 && ratio >= b.cfg.AlertAt && !b.alerted {
		b.alerted, ev.alert = true, true
	}
	if ex && !b.exLogged {
		b.exLogged, ev.exhausted = true, true
	}
	if ex && (!b.exhausted.Load() || b.refused.Load() == nil) {
		b.refused.Store(b.refusalLocked())
	}
	act := ""
	if ex {
		act = b.cfg.OnExhausted
	}
	b.action.Store(&act)
	b.refuseLow.Store(ex && act == ActionRejectLowPriority)
	b.exhausted.Store(ex)
	if ev.alert || ev.exhausted {
		ev.attrs = []any{"month", b.month.Format("2006-01"), "cu_hours", round2(cu), "monthly_cu_hours", monthly,
			"used", strconv.Itoa(int(ratio*100)) + "%", "on_exhausted", b.cfg.OnExhausted,
			"projected_cu_hours", round2(b.projected(cu, now)), "keeps_compute_awake", b.keepersLocked(now)}
	}
	return ev
}

func (b *Budget) refusalLocked() *LimitError {
	return &LimitError{
		Rule:    "budget",
		Setting: "budget.monthly_cu_hours",
		Message: "Neon compute budget exhausted: budget.monthly_cu_hours = " + fmtFloat(b.cfg.MonthlyCUHours) +
			" CU-hours are used up for " + b.month.Format("2006-01") +
			` and budget.on_exhausted = "reject_low_priority" refuses clients of priority 0 or less; raise budget.monthly_cu_hours or give this client a [[limits]] rule with priority > 0`,
	}
}

// refusal is Admit's error while reject_low_priority applies.
func (b *Budget) refusal() error {
	if e := b.refused.Load(); e != nil {
		return e
	}
	return &LimitError{Rule: "budget", Setting: "budget.monthly_cu_hours", // not reached: stored before refuseLow
		Message: "Neon compute budget exhausted; raise budget.monthly_cu_hours"}
}

// projected extrapolates this month's CU-hours to the whole month.
func (b *Budget) projected(cu float64, now time.Time) float64 {
	el := now.Sub(b.month)
	if el < time.Hour {
		return 0
	}
	return cu * float64(b.month.AddDate(0, 1, 0).Sub(b.month)) / float64(el)
}

// keepersLocked names the applications currently keeping a compute awake,
// each with the kind of activity that does most of it: "etl (queries)".
func (b *Budget) keepersLocked(now time.Time) string {
	var names []string
	for _, c := range b.computes {
		for _, p := range c.pollers {
			if r := p.report(now, b.suspend()); r.KeepsAwake {
				names = append(names, r.Application+" ("+r.KeptAwakeBy+")")
			}
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// evaluate re-checks the budget at the janitor's tick, so that a new month
// ends an exhaustion even when no query reaches the primary.
func (b *Budget) evaluate(now time.Time) {
	b.mu.Lock()
	ev := b.evaluateLocked(now)
	b.mu.Unlock()
	ev.emit(b.log)
}

// Exhausted reports whether this month's CU-hours reached
// budget.monthly_cu_hours (never when that is 0).
func (b *Budget) Exhausted() bool { return b != nil && b.exhausted.Load() }

// Action is the budget.on_exhausted action the proxy must apply now: "" while
// the budget is not exhausted, else ActionAlert, ActionReadOnly,
// ActionRejectLowPriority (applied by Session.Admit) or ActionFallback.
func (b *Budget) Action() string {
	if b == nil {
		return ""
	}
	return *b.action.Load()
}

// BudgetStatus is a snapshot of the budget model.
type BudgetStatus struct {
	Month            string           `json:"month"`              // "2026-04"
	AwakeSeconds     float64          `json:"awake_seconds"`      // this month, all endpoints
	CUHours          float64          `json:"cu_hours"`           // compute_units x awake hours
	ProjectedCUHours float64          `json:"projected_cu_hours"` // at this month's pace; 0 in its first hour
	MonthlyCUHours   float64          `json:"monthly_cu_hours"`
	UsedRatio        float64          `json:"used_ratio"` // CUHours / MonthlyCUHours; 0 when that is 0
	AlertAt          float64          `json:"alert_at"`
	Exhausted        bool             `json:"exhausted"`
	OnExhausted      string           `json:"on_exhausted"`
	ComputeUnits     float64          `json:"compute_units"`
	SuspendAfter     string           `json:"suspend_after"`
	Fleet            bool             `json:"fleet"` // figures include other instances (Redis)
	Endpoints        []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one compute's awake time.
type EndpointStatus struct {
	Endpoint     string    `json:"endpoint"`
	AwakeSeconds float64   `json:"awake_seconds"`        // this month
	AwakeNow     bool      `json:"awake_now"`            // activity within suspend_after, or under way
	LastActive   time.Time `json:"last_active,omitzero"` // end of the latest activity (now while some is under way)
	// LastWake is when the model last saw the compute wake (activity after
	// a gap over suspend_after, or the first seen), and LastWakeBy the
	// application whose activity woke it: NoApplication for a server
	// connection no client used, "" while not yet known.
	LastWake   time.Time `json:"last_wake,omitzero"`
	LastWakeBy string    `json:"last_wake_by,omitempty"`
}

// Snapshot returns the budget figures now. Nil-safe.
func (b *Budget) Snapshot() BudgetStatus {
	if b == nil {
		return BudgetStatus{}
	}
	now := b.clock.Now()
	b.sweep(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rollLocked(now)
	S := b.suspend()
	st := BudgetStatus{
		Month:          b.month.Format("2006-01"),
		MonthlyCUHours: b.cfg.MonthlyCUHours,
		AlertAt:        b.cfg.AlertAt,
		Exhausted:      b.exhausted.Load(),
		OnExhausted:    b.cfg.OnExhausted,
		ComputeUnits:   b.cfg.ComputeUnits,
		SuspendAfter:   S.String(),
	}
	var total time.Duration
	for _, c := range b.computes {
		a := c.awake(now)
		total += a
		st.Fleet = st.Fleet || !c.fleetAt.IsZero() && b.redis != nil && b.redis.Up.Load()
		st.Endpoints = append(st.Endpoints, EndpointStatus{
			Endpoint: c.key, AwakeSeconds: a.Seconds(), LastActive: c.last, AwakeNow: c.awakeAt(now),
			LastWake: c.lastWake, LastWakeBy: c.lastWakeBy,
		})
	}
	sort.Slice(st.Endpoints, func(i, j int) bool { return st.Endpoints[i].Endpoint < st.Endpoints[j].Endpoint })
	st.AwakeSeconds = total.Seconds()
	st.CUHours = b.cfg.ComputeUnits * total.Hours()
	st.ProjectedCUHours = b.projected(st.CUHours, now)
	if b.cfg.MonthlyCUHours > 0 {
		st.UsedRatio = st.CUHours / b.cfg.MonthlyCUHours
	}
	return st
}

// Pollers reports each application's activity pattern over the last day,
// the applications keeping a compute awake first.
func (b *Budget) Pollers() []PollerReport {
	if b == nil {
		return nil
	}
	now := b.clock.Now()
	b.sweep(now)
	b.mu.Lock()
	var out []PollerReport
	for _, c := range b.computes {
		for _, p := range c.pollers {
			if r := p.report(now, b.suspend()); r.Queries+r.Transactions+r.Connections > 0 || r.AwakeTime > 0 {
				r.Endpoint = c.key
				out = append(out, r)
			}
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.KeepsAwake != y.KeepsAwake {
			return x.KeepsAwake
		}
		if x.AwakeFraction != y.AwakeFraction {
			return x.AwakeFraction > y.AwakeFraction
		}
		return x.Application < y.Application
	})
	return out
}

// compute is one endpoint's awake model. Guarded by Budget.mu.
type compute struct {
	key     string
	periods []span        // this month's awake periods: sorted, disjoint, each [start, end of activity + suspend_after)
	sum     time.Duration // the lengths of periods
	folded  time.Duration // awake time of periods folded out of periods
	floor   time.Time     // activity counts from here on: the month's start or the end of the folded periods
	last    time.Time     // end of the latest activity
	pollers map[string]*poller

	lastWake   time.Time // start of the latest activity that found the compute asleep
	lastWakeBy string    // its application; "" until a client claims a new connection's wake

	pending    []span        // awake spans not yet merged into Redis
	fleetAwake time.Duration // fleet-wide awake this month, read at fleetAt
	localAt    time.Duration // this instance's figure at fleetAt
	fleetAt    time.Time     // zero: no fleet figure this month
}

// span is an interval [a, b).
type span struct{ a, b time.Time }

// noteWake records sg as the compute's latest wake-up when it starts while
// the model has the compute asleep. A new server connection's instant comes
// first without an application; the segment that books it to one (at the
// same instant, Activity.Query or attributeConn) names the cause.
func (c *compute) noteWake(sg *segment) {
	switch {
	case sg.a.Equal(c.lastWake) && c.lastWakeBy == "":
		c.lastWakeBy = sg.app
	case sg.a.After(c.lastWake) && !c.awakeAt(sg.a):
		c.lastWake, c.lastWakeBy = sg.a, sg.app
	}
}

// add records activity from a to b: the compute is awake from a until
// suspend_after past b. Spans may arrive in any order; overlaps count once.
func (c *compute) add(a, b time.Time, S time.Duration, fleet bool) {
	if b.After(c.last) {
		c.last = b
	}
	lo, hi := a, b.Add(S)
	if fleet {
		if n := len(c.pending); n > 0 && !lo.After(c.pending[n-1].b) && !lo.Before(c.pending[n-1].a) {
			c.pending[n-1].b = later(c.pending[n-1].b, hi)
		} else if n < maxPending {
			c.pending = append(c.pending, span{lo, hi})
		}
	}
	lo = later(lo, c.floor)
	if !hi.After(lo) {
		return
	}
	n := len(c.periods)
	if n == 0 || lo.After(c.periods[n-1].b) { // the usual case: after everything
		c.periods = append(c.periods, span{lo, hi})
		c.sum += hi.Sub(lo)
		c.fold()
		return
	}
	i := sort.Search(n, func(i int) bool { return !c.periods[i].b.Before(lo) }) // first that ends at or after lo
	j := i
	for ; j < n && !c.periods[j].a.After(hi); j++ { // those touching [lo, hi) merge with it
		lo, hi = earlier(lo, c.periods[j].a), later(hi, c.periods[j].b)
		c.sum -= c.periods[j].b.Sub(c.periods[j].a)
	}
	c.sum += hi.Sub(lo)
	if i == j {
		c.periods = append(c.periods, span{})
		copy(c.periods[i+1:], c.periods[i:])
	} else {
		c.periods = append(c.periods[:i+1], c.periods[j:]...)
	}
	c.periods[i] = span{lo, hi}
	c.fold()
}

// fold sums the older half of the awake periods once there are too many.
func (c *compute) fold() {
	if len(c.periods) <= maxAwakeSpans {
		return
	}
	h := len(c.periods) / 2
	for _, p := range c.periods[:h] {
		c.folded += p.b.Sub(p.a)
		c.sum -= p.b.Sub(p.a)
	}
	c.floor = c.periods[h-1].b
	c.periods = append([]span(nil), c.periods[h:]...)
}

// roll starts the month ms: an awake period running across the boundary
// counts from ms on.
func (c *compute) roll(ms time.Time) {
	kept := c.periods[:0]
	c.sum = 0
	for _, p := range c.periods {
		if p.b.After(ms) {
			p.a = later(p.a, ms)
			kept = append(kept, p)
			c.sum += p.b.Sub(p.a)
		}
	}
	c.periods = kept
	c.folded, c.floor = 0, ms
	c.fleetAwake, c.localAt, c.fleetAt = 0, 0, time.Time{}
}

// awakeLocal is this instance's awake time this month, up to now.
func (c *compute) awakeLocal(now time.Time) time.Duration {
	d := c.folded + c.sum
	for i := len(c.periods) - 1; i >= 0 && c.periods[i].b.After(now); i-- {
		d -= c.periods[i].b.Sub(later(c.periods[i].a, now))
	}
	return d
}

// awakeAt reports whether the compute is awake at t.
func (c *compute) awakeAt(t time.Time) bool {
	i := sort.Search(len(c.periods), func(i int) bool { return !c.periods[i].b.Before(t) })
	return i < len(c.periods) && !c.periods[i].a.After(t)
}

// awake is the best figure: the fleet's at its last read plus what this
// instance saw since, or this instance's own if larger.
func (c *compute) awake(now time.Time) time.Duration {
	local := c.awakeLocal(now)
	if c.fleetAt.IsZero() {
		return local
	}
	return max(local, c.fleetAwake+local-c.localAt)
}

// pollerFor returns the poller statistics for app, "other" past the cap.
func (c *compute) pollerFor(app string) *poller {
	p := c.pollers[app]
	if p == nil {
		if len(c.pollers) >= maxPollers {
			if app = otherApp; c.pollers[app] != nil {
				return c.pollers[app]
			}
		}
		p = &poller{app: app}
		c.pollers[app] = p
	}
	return p
}

// flush merges this instance's awake spans into the fleet's Redis bitmaps
// and reads the fleet figure back. Called by the janitor after a sweep, so
// that a span still open is carried up to now (plus suspend_after).
func (b *Budget) flush(ctx context.Context, now time.Time) {
	if b.redis == nil || !b.redis.Up.Load() {
		return
	}
	type job struct {
		c     *compute
		spans []span
	}
	b.mu.Lock()
	b.rollLocked(now)
	month := b.month
	jobs := make([]job, 0, len(b.computes))
	for _, c := range b.computes {
		jobs = append(jobs, job{c, c.pending})
		c.pending = nil
	}
	b.mu.Unlock()
	for i, j := range jobs {
		awake, err := b.redis.mergeAwake(ctx, j.c.key, month, j.spans, now)
		b.mu.Lock()
		if err != nil { // keep every span for the next try
			for _, k := range jobs[i:] {
				k.c.pending = append(k.spans, k.c.pending...)
				if n := len(k.c.pending); n > maxPending {
					k.c.pending = k.c.pending[n-maxPending:]
				}
			}
			b.mu.Unlock()
			return
		}
		if b.month.Equal(month) {
			j.c.fleetAwake, j.c.localAt, j.c.fleetAt = awake, j.c.awakeLocal(now), now
		}
		b.mu.Unlock()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }
