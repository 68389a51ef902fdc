package dashboard

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Point is one sample of the history. Rates and quantiles cover the
// interval since the sample before; levels are the state at Time.
type Point struct {
	// Time is when the sample was taken, in Unix milliseconds.
	Time int64 `json:"t"`
	// QPS is queries per second relayed (every database).
	QPS float64 `json:"qps"`
	// P95MS is the 95th percentile of query duration (pgguard_query_duration_seconds).
	P95MS float64 `json:"p95_ms"`
	// WaitP95MS is the 95th percentile of pool wait (pgguard_pool_wait_seconds).
	WaitP95MS float64 `json:"wait_p95_ms"`
	// Client sessions by state and server connections, summed over pools.
	ClientsActive  int `json:"cl_active"`
	ClientsWaiting int `json:"cl_waiting"`
	ClientsIdle    int `json:"cl_idle"`
	ServersActive  int `json:"sv_active"`
	ServersIdle    int `json:"sv_idle"`
	// RefusalsPerSec counts refusals (pgguard_client_refusals_total: 53300,
	// 53400, 25006, 28P01, ...) per second; ErrorsPerSec queries that ended
	// in an error (pgguard_query_errors_total).
	RefusalsPerSec float64 `json:"refusals_per_s"`
	ErrorsPerSec   float64 `json:"errors_per_s"`
	// CUHours is the budget model's CU-hours this month (0 without a limiter).
	CUHours float64 `json:"cu_hours"`
}

// trendMinutes is how many minutes a shape's trend covers; trendShapes is
// how many of the busiest shapes (by total time) are followed per sample.
const (
	trendMinutes = 30
	trendShapes  = 50
)

// trend is one query shape's calls per minute over the last trendMinutes.
type trend struct {
	calls   int64               // cumulative calls at the last sample
	minute  int64               // Unix minute of the newest bucket
	buckets [trendMinutes]int64 // calls in minute m at m % trendMinutes
	seen    time.Time           // last sample that listed the shape
}

// add counts n calls in minute m (>= tr.minute), clearing skipped minutes.
func (tr *trend) add(m, n int64) {
	for k := tr.minute + 1; k <= m && k <= tr.minute+trendMinutes; k++ {
		tr.buckets[k%trendMinutes] = 0
	}
	tr.minute = max(tr.minute, m)
	tr.buckets[m%trendMinutes] += n
}

// series returns the calls per minute of the trendMinutes ending at minute
// now, oldest first.
func (tr *trend) series(now int64) []int64 {
	out := make([]int64, trendMinutes)
	for i := range out {
		m := now - trendMinutes + 1 + int64(i)
		if m <= tr.minute && m > tr.minute-trendMinutes && m >= 0 {
			out[i] = tr.buckets[m%trendMinutes]
		}
	}
	return out
}

// waitRead is one sample's cumulative pool-wait histogram per database.
type waitRead struct {
	at time.Time
	by map[string]*hist
}

// sampler keeps the history ring, the shape trends and the pool-wait reads
// of the last minute. The sampling goroutine writes; requests read under mu.
type sampler struct {
	mu     sync.Mutex
	ring   []Point // ring buffer: next is the oldest once full
	next   int
	full   bool
	trends map[string]*trend // by fingerprint
	waits  []waitRead        // the last minute's reads, oldest first

	// Owned by the sampling goroutine: the previous sample's cumulative reads.
	prevAt                 time.Time
	prevQuery, prevWait    *hist
	prevQueries            uint64
	prevRefusals, prevErrs float64
}

func newSampler(points int) *sampler {
	return &sampler{ring: make([]Point, points), trends: map[string]*trend{}}
}

// add appends p, overwriting the oldest point once the ring is full.
func (s *sampler) add(p Point) {
	s.mu.Lock()
	s.ring[s.next] = p
	s.next = (s.next + 1) % len(s.ring)
	s.full = s.full || s.next == 0
	s.mu.Unlock()
}

// since returns the points taken after t (Unix milliseconds), oldest first.
func (s *sampler) since(t int64) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Point
	if s.full {
		out = append(out, s.ring[s.next:]...)
	}
	out = append(out, s.ring[:s.next]...)
	for i, p := range out {
		if p.Time > t {
			return out[i:]
		}
	}
	return []Point{}
}

// trendOf returns the shape's calls per minute ending at now, or nil when it
// is not followed.
func (s *sampler) trendOf(fingerprint string, now time.Time) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tr := s.trends[fingerprint]; tr != nil {
		return tr.series(now.Unix() / 60)
	}
	return nil
}

// waitBase returns the oldest pool-wait read of the last minute, nil before
// the first sample.
func (s *sampler) waitBase() map[string]*hist {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waits) == 0 {
		return nil
	}
	return s.waits[0].by
}

// sample takes one Point and updates the trends; d supplies the sources.
// The first call only takes the baseline reads.
func (s *sampler) sample(d *Dashboard, now time.Time) {
	m := d.o.Metrics
	query := readHist(m.QueryDuration)
	wait := readHist(m.PoolWait)
	waitBy := readHists(m.PoolWait, "database")
	refusals := counterSum(m.ClientRefusals)
	errs := counterSum(m.QueryErrors)
	p := Point{Time: now.UnixMilli()}
	var queries uint64
	for _, ps := range d.o.Proxy.Pools() {
		queries += ps.Queries
		p.ClientsActive += ps.ClientsActive
		p.ClientsWaiting += ps.ClientsWaiting
		p.ClientsIdle += ps.ClientsIdle
		p.ServersActive += ps.ServersActive
		p.ServersIdle += ps.ServersIdle
	}
	if d.o.Limiter != nil {
		p.CUHours = d.o.Limiter.Budget().Snapshot().CUHours
	}
	first := s.prevAt.IsZero()
	if !first {
		secs := now.Sub(s.prevAt).Seconds()
		p.QPS = float64(queries-min(queries, s.prevQueries)) / secs
		p.RefusalsPerSec = max(refusals-s.prevRefusals, 0) / secs
		p.ErrorsPerSec = max(errs-s.prevErrs, 0) / secs
		p.P95MS = query.sub(s.prevQuery).quantile(0.95) * 1e3
		p.WaitP95MS = wait.sub(s.prevWait).quantile(0.95) * 1e3
	}
	prevAt := s.prevAt
	s.prevAt, s.prevQuery, s.prevWait = now, query, wait
	s.prevQueries, s.prevRefusals, s.prevErrs = queries, refusals, errs
	if !first {
		s.add(p)
	}
	s.sampleShapes(d, now, prevAt)

	s.mu.Lock()
	s.waits = append(s.waits, waitRead{at: now, by: waitBy})
	for len(s.waits) > 1 && now.Sub(s.waits[1].at) >= time.Minute {
		s.waits = s.waits[1:]
	}
	s.mu.Unlock()
}

// sampleShapes adds the calls of the busiest shapes since the last sample
// to their trends, and forgets shapes not among them for trendMinutes. A
// shape first seen now counts its calls only if it is new since prevAt;
// older history is unknown. A shape back among the busiest after a while
// counts every call since it left in the current minute.
func (s *sampler) sampleShapes(d *Dashboard, now, prevAt time.Time) {
	if d.o.QueryLog == nil {
		return
	}
	shapes := d.o.QueryLog.Stats().Snapshot("total", trendShapes)
	minute := now.Unix() / 60
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range shapes {
		tr := s.trends[sh.Fingerprint]
		var n int64
		switch {
		case tr == nil:
			tr = &trend{minute: minute}
			s.trends[sh.Fingerprint] = tr
			if !prevAt.IsZero() && sh.FirstSeen.After(prevAt) {
				n = sh.Calls
			}
		case sh.Calls < tr.calls: // statistics reset
			n = sh.Calls
		default:
			n = sh.Calls - tr.calls
		}
		tr.calls, tr.seen = sh.Calls, now
		tr.add(minute, n)
	}
	for fp, tr := range s.trends {
		if now.Sub(tr.seen) > trendMinutes*time.Minute {
			delete(s.trends, fp)
		}
	}
}

// counterSum adds up every child of a counter vector.
func counterSum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 8)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	sum := 0.0
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil && d.Counter != nil {
			sum += d.Counter.GetValue()
		}
	}
	return sum
}
