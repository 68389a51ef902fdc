package limiter

import (
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
)

// Rate kinds, in bucket order.
const (
	perSecond = iota
	perMinute
	perHour
	nRates
)

var (
	rateKeys = [nRates]string{"queries_per_second", "queries_per_minute", "queries_per_hour"}
	rateSpan = [nRates]float64{1, 60, 3600}
)

// rule is one compiled [[limits]] entry. It is immutable; a reload builds a
// new rule that points at the same ruleState.
type rule struct {
	name     string
	cfg      config.Limit
	db, user string
	app      string
	addr     netip.Prefix // valid when client_addr is set
	hasAddr  bool
	rates    [nRates]float64 // tokens per second; 0 = no limit of that kind
	burst    float64
	reject   bool          // action "reject"
	maxDelay time.Duration // 0 for reject
	maxConns int
	priority int
	worker   bool // worker = true: refused while disable_workers is on
	st       *ruleState
}

func compileRule(c config.Limit, st *ruleState) *rule {
	r := &rule{
		name: c.Name, cfg: c,
		db: c.Database, user: c.User, app: c.ApplicationName,
		burst:    float64(max(c.Burst, 1)),
		reject:   c.Action == "reject",
		maxConns: c.MaxConnections,
		priority: c.Priority,
		worker:   c.Worker,
		st:       st,
	}
	for i, q := range [nRates]float64{c.QueriesPerSecond, c.QueriesPerMinute, c.QueriesPerHour} {
		r.rates[i] = q / rateSpan[i]
	}
	if !r.reject {
		r.maxDelay = c.MaxDelay.Duration
		if r.maxDelay == 0 {
			r.maxDelay = config.DefaultMaxDelay
		}
	}
	if c.ClientAddr != "" {
		if p, err := netip.ParsePrefix(c.ClientAddr); err == nil {
			r.addr, r.hasAddr = p.Masked(), true
		} else if a, err := netip.ParseAddr(c.ClientAddr); err == nil {
			a = a.Unmap()
			r.addr, r.hasAddr = netip.PrefixFrom(a, a.BitLen()), true
		} else { // Validate rejects this; match nothing rather than everything
			r.hasAddr = true
		}
	}
	return r
}

// matches reports whether c meets every non-empty match key.
func (r *rule) matches(c Client) bool {
	if r.db != "" && r.db != c.Database || r.user != "" && r.user != c.User || r.app != "" && r.app != c.Application {
		return false
	}
	if r.hasAddr {
		return r.addr.IsValid() && c.Addr.IsValid() && r.addr.Contains(c.Addr.Unmap())
	}
	return true
}

func (r *rule) hasRate() bool { return r.rates != [nRates]float64{} }

// matchString describes the match keys, e.g. `application_name=worker`.
func (r *rule) matchString() string {
	var b []string
	for _, kv := range [][2]string{{"database", r.db}, {"user", r.user}, {"application_name", r.app}, {"client_addr", r.cfg.ClientAddr}} {
		if kv[1] != "" {
			b = append(b, kv[0]+"="+kv[1])
		}
	}
	if len(b) == 0 {
		return "any client"
	}
	return strings.Join(b, " ")
}

// rateString is e.g. "queries_per_minute = 10 (burst 5)" for rate kind i.
func (r *rule) rateString(i int) string {
	return rateKeys[i] + " = " + fmtFloat(r.configured()[i]) + " (burst " + fmtFloat(r.burst) + ")"
}

// configured is the rates as written in the config.
func (r *rule) configured() [nRates]float64 {
	return [nRates]float64{r.cfg.QueriesPerSecond, r.cfg.QueriesPerMinute, r.cfg.QueriesPerHour}
}

// rateError is the refusal of a query that would have to wait `wait` for
// rate kind bind.
func (r *rule) rateError(bind int, wait time.Duration) *LimitError {
	if bind < 0 {
		bind = r.firstRate()
	}
	msg := `rate limit "` + r.name + `" exceeded: ` + r.rateString(bind)
	if !r.reject {
		msg += ", next query slot in " + roundDur(wait).String() + ", beyond max_delay = " + r.maxDelay.String()
	}
	msg += "; raise limits." + rateKeys[bind] + " or lower the client's query rate"
	return &LimitError{Rule: r.name, Setting: "limits." + rateKeys[bind], Message: msg}
}

func (r *rule) firstRate() int {
	for i, v := range r.rates {
		if v > 0 {
			return i
		}
	}
	return perSecond
}

// connError is the refusal of a server connection after waiting `waited`.
func (r *rule) connError(waited time.Duration, cause error) *LimitError {
	return &LimitError{
		Rule:    r.name,
		Setting: "limits.max_connections",
		Message: `connection limit "` + r.name + `" reached: max_connections = ` + strconv.Itoa(r.maxConns) +
			" server connections held by its clients, waited " + roundDur(waited).String() +
			"; raise limits.max_connections or have the clients hold connections for less time",
		Cause: cause,
	}
}

// ruleState is what survives a reload of a rule with the same name: the
// local bucket, the connection semaphore and the counters.
type ruleState struct {
	name     string
	redisKey string

	mu     sync.Mutex // guards bucket
	bucket bucket

	sem connSem

	admitted, delayed, rejected atomic.Int64
	mDelayed, mRejected         prometheus.Counter
}

func newRuleState(name string, m *metrics) *ruleState {
	st := &ruleState{
		name:      name,
		redisKey:  "pgguard:limiter:rule:" + name,
		mDelayed:  m.delayed.WithLabelValues(name),
		mRejected: m.rejected.WithLabelValues(name),
	}
	st.sem.cap = -1
	return st
}

// update applies r's settings: the connection cap, and the bucket's depth
// and rate kinds.
func (st *ruleState) update(r *rule, now time.Time) {
	if r.maxConns > 0 {
		st.sem.setCap(r.maxConns)
	} else { // no cap any more: let waiters through
		st.sem.setCap(math.MaxInt)
	}
	st.mu.Lock()
	st.bucket.reshape(r.rates, r.burst, now)
	st.mu.Unlock()
}

// retire lets a removed rule's waiters through and drops its metric series;
// sessions holding slots release them into the orphaned semaphore harmlessly.
func (st *ruleState) retire(m *metrics) {
	st.sem.setCap(math.MaxInt)
	m.delayed.DeleteLabelValues(st.name)
	m.rejected.DeleteLabelValues(st.name)
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// roundDur keeps messages readable: 5.75s, 120ms.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d
}
