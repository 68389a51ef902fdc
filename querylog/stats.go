package querylog

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

const (
	sketchAccuracy = 0.01
	// sketchMaxBins bounds a sketch at 16 KiB; at 1% accuracy 2048 bins span
	// a ratio of 1e17, so only sub-nanosecond values would ever be collapsed.
	sketchMaxBins = 2048
)

// sketchMapping is shared by every sketch; it is immutable.
var sketchMapping = func() mapping.IndexMapping {
	m, err := mapping.NewLogarithmicMapping(sketchAccuracy)
	if err != nil {
		panic(err)
	}
	return m
}()

// Stats keeps per-shape statistics for at most a bounded number of
// fingerprints, evicting the least recently used. It is safe for concurrent
// use: the Logger's writer goroutine adds, HTTP and admin readers snapshot.
type Stats struct {
	mu     sync.Mutex
	shapes map[uint64]*shapeStat
	lru    shapeStat // sentinel: lru.next is the most recently used
	max    int

	evicted atomic.Uint64
}

// shapeStat is one fingerprint's running totals; guarded by Stats.mu.
type shapeStat struct {
	info        shapeInfo
	calls       int64
	errors      int64
	rows        int64
	total       time.Duration
	max         time.Duration
	sketch      *ddsketch.DDSketch // seconds
	first, last time.Time
	prev, next  *shapeStat
}

// ShapeStats is a snapshot of one query shape. Times are in milliseconds.
type ShapeStats struct {
	// Fingerprint is the pg_query fingerprint as 16 hex digits.
	Fingerprint string `json:"fingerprint"`
	// Query is the normalized text (literals as $n).
	Query string `json:"query"`
	// Fallback is true when pg_query could not parse the text.
	Fallback bool `json:"fallback,omitempty"`
	// Calls counts executions; Errors those that ended in an ErrorResponse.
	Calls  int64 `json:"calls"`
	Errors int64 `json:"errors"`
	// Rows is the sum of rows over all calls.
	Rows int64 `json:"rows"`
	// TotalMS and MeanMS are total and mean execution time.
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	// P50MS, P95MS and P99MS are quantiles within 1% relative accuracy; MaxMS is exact.
	P50MS float64 `json:"p50_ms"`
	P95MS float64 `json:"p95_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
	// FirstSeen and LastSeen are the start times of the first and latest call.
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// newStats returns empty statistics keeping at most maxShapes shapes (default 5000 when <= 0).
func newStats(maxShapes int) *Stats {
	s := &Stats{shapes: make(map[uint64]*shapeStat)}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	s.max = orDefault(maxShapes)
	return s
}

func orDefault(maxShapes int) int {
	if maxShapes <= 0 {
		return 5000
	}
	return maxShapes
}

// add counts one record under the shape info.
func (s *Stats) add(info *shapeInfo, r *Record) {
	at := r.Time
	if at.IsZero() {
		at = time.Now()
	}
	d := max(r.Duration, 0)

	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.shapes[info.fp]
	if st == nil {
		st = s.newShape()
		st.info, st.first = *info, at
		s.shapes[info.fp] = st
	} else {
		s.unlink(st)
	}
	s.pushFront(st)
	st.calls++
	if r.failed() {
		st.errors++
	}
	st.rows += r.Rows
	st.total += d
	st.max = max(st.max, d)
	st.sketch.Add(d.Seconds())
	// Records from different connections may arrive slightly out of order.
	if at.Before(st.first) {
		st.first = at
	}
	if at.After(st.last) {
		st.last = at
	}
}

// newShape makes room for one more shape, reusing the evicted one's memory.
func (s *Stats) newShape() *shapeStat {
	var st *shapeStat
	for len(s.shapes) >= s.max {
		st = s.evictOldest()
	}
	if st == nil {
		return &shapeStat{sketch: ddsketch.NewDDSketch(sketchMapping,
			store.NewCollapsingLowestDenseStore(sketchMaxBins),
			store.NewCollapsingLowestDenseStore(sketchMaxBins))}
	}
	sk := st.sketch
	sk.Clear()
	*st = shapeStat{sketch: sk}
	return st
}

func (s *Stats) evictOldest() *shapeStat {
	st := s.lru.prev
	s.unlink(st)
	delete(s.shapes, st.info.fp)
	s.evicted.Add(1)
	return st
}

func (s *Stats) unlink(st *shapeStat) { st.prev.next, st.next.prev = st.next, st.prev }

func (s *Stats) pushFront(st *shapeStat) {
	st.prev, st.next = &s.lru, s.lru.next
	s.lru.next.prev = st
	s.lru.next = st
}

// SetMaxShapes changes the bound, evicting at once when it shrinks.
func (s *Stats) SetMaxShapes(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.max = orDefault(n)
	for len(s.shapes) > s.max {
		s.evictOldest()
	}
}

// Len returns the number of shapes held.
func (s *Stats) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.shapes)
}

// Evicted returns how many shapes were evicted to respect the bound since start.
func (s *Stats) Evicted() uint64 { return s.evicted.Load() }

// Reset forgets every shape. Evicted keeps counting.
func (s *Stats) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.shapes)
	s.lru.prev, s.lru.next = &s.lru, &s.lru
}

// Snapshot returns up to limit shapes (all when limit <= 0), sorted
// descending by sortBy: "total" (default), "calls", "p95" or "mean".
func (s *Stats) Snapshot(sortBy string, limit int) []ShapeStats {
	type row struct {
		ss ShapeStats
		st *shapeStat
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rows := make([]row, 0, len(s.shapes))
	for st := s.lru.next; st != &s.lru; st = st.next {
		ss := ShapeStats{
			Fingerprint: st.info.hex,
			Query:       st.info.norm,
			Fallback:    st.info.fallback,
			Calls:       st.calls,
			Errors:      st.errors,
			Rows:        st.rows,
			TotalMS:     ms(st.total),
			MeanMS:      ms(st.total) / float64(st.calls),
			MaxMS:       ms(st.max),
			FirstSeen:   st.first,
			LastSeen:    st.last,
		}
		if sortBy == "p95" {
			ss.P95MS = quantileMS(st.sketch, 0.95)
		}
		rows = append(rows, row{ss, st})
	}
	key := func(ss *ShapeStats) float64 {
		switch sortBy {
		case "calls":
			return float64(ss.Calls)
		case "p95":
			return ss.P95MS
		case "mean":
			return ss.MeanMS
		}
		return ss.TotalMS
	}
	slices.SortFunc(rows, func(a, b row) int {
		if c := cmp.Compare(key(&b.ss), key(&a.ss)); c != 0 {
			return c
		}
		return cmp.Compare(a.ss.Fingerprint, b.ss.Fingerprint)
	})
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	out := make([]ShapeStats, len(rows))
	for i := range rows {
		out[i] = rows[i].ss
		q, _ := rows[i].st.sketch.GetValuesAtQuantiles([]float64{0.5, 0.95, 0.99})
		if len(q) == 3 {
			out[i].P50MS, out[i].P95MS, out[i].P99MS = q[0]*1e3, q[1]*1e3, q[2]*1e3
		}
	}
	return out
}

func quantileMS(sk *ddsketch.DDSketch, q float64) float64 {
	v, err := sk.GetValueAtQuantile(q)
	if err != nil {
		return 0
	}
	return v * 1e3
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
