package dashboard

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// newVec is a histogram vector shaped like pgguard's query duration metric;
// native adds native buckets (factor 1.1, as metrics.New does).
func newVec(native bool) *prometheus.HistogramVec {
	o := prometheus.HistogramOpts{Name: "h", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}
	if native {
		o.NativeHistogramBucketFactor = 1.1
		o.NativeHistogramMaxBucketNumber = 160
	}
	return prometheus.NewHistogramVec(o, []string{"database"})
}

// exact returns the q-quantile of vs by rank, as the histogram should.
func exact(vs []float64, q float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[int(math.Ceil(q*float64(len(s))))-1]
}

func within(t *testing.T, what string, got, want, rel float64) {
	t.Helper()
	if math.Abs(got-want) > rel*want {
		t.Errorf("%s = %.6g, want %.6g within %.0f%%", what, got, want, 100*rel)
	}
}

func TestQuantileNative(t *testing.T) {
	v := newVec(true)
	r := rand.New(rand.NewPCG(1, 2))
	var vals []float64
	for i := range 20000 {
		x := 0.0002 * math.Exp(r.NormFloat64()) // lognormal around 0.2 ms
		db := []string{"a", "b"}[i%2]
		v.WithLabelValues(db).Observe(x)
		vals = append(vals, x)
	}
	h := readHist(v)
	if !h.native || h.count != 20000 {
		t.Fatalf("native %v count %d", h.native, h.count)
	}
	for _, q := range []float64{0.5, 0.95, 0.99} {
		within(t, "merged quantile", h.quantile(q), exact(vals, q), 0.1)
	}
	by := readHists(v, "database")
	if len(by) != 2 || by["a"].count != 10000 {
		t.Fatalf("by database: %v", by)
	}

	// An interval: only what came after the first read counts.
	var later []float64
	for range 5000 {
		x := 0.05 * math.Exp(r.NormFloat64()/4) // around 50 ms
		v.WithLabelValues("a").Observe(x)
		later = append(later, x)
	}
	d := readHist(v).sub(h)
	if d.count != 5000 {
		t.Fatalf("interval count %d", d.count)
	}
	within(t, "interval p95", d.quantile(0.95), exact(later, 0.95), 0.1)
}

func TestQuantileClassic(t *testing.T) {
	v := newVec(false)
	for range 100 {
		v.WithLabelValues("a").Observe(0.003) // (.0025, .005]
	}
	h := readHist(v)
	if h.native {
		t.Fatal("classic histogram read as native")
	}
	if got := h.quantile(0.5); got <= 0.0025 || got > 0.005 {
		t.Errorf("p50 %g outside its bucket (.0025, .005]", got)
	}
	v.WithLabelValues("a").Observe(100) // +Inf bucket
	d := readHist(v).sub(h)
	if d.count != 1 || d.quantile(0.99) != 30 {
		t.Errorf("interval: count %d p99 %g, want 1 and the highest bound 30", d.count, d.quantile(0.99))
	}
}

func TestHistReduceAndReset(t *testing.T) {
	// Bucket 2j-1 and 2j of schema s make bucket j of schema s-1.
	h := (&hist{native: true, schema: 3, count: 4, pos: map[int32]uint64{-3: 1, -2: 1, 1: 1, 2: 1}}).reduced(2)
	if h.schema != 2 || h.pos[-1] != 2 || h.pos[1] != 2 || len(h.pos) != 2 {
		t.Fatalf("reduced: schema %d %v", h.schema, h.pos)
	}
	// A finer earlier read against a coarser later one still subtracts.
	prev := &hist{native: true, schema: 3, count: 2, pos: map[int32]uint64{1: 1, 2: 1}}
	cur := &hist{native: true, schema: 2, count: 5, pos: map[int32]uint64{1: 5}}
	if d := cur.sub(prev); d.count != 3 || d.pos[1] != 3 {
		t.Fatalf("sub across schemas: %+v", d)
	}
	if prev.schema != 3 || len(prev.pos) != 2 {
		t.Fatalf("sub changed the earlier read: %+v", prev)
	}
	// Fewer observations than before is a reset: the whole read counts.
	if d := prev.sub(cur); d != prev {
		t.Fatalf("reset: %+v", d)
	}
	if (&hist{}).quantile(0.95) != 0 || (*hist)(nil).quantile(0.5) != 0 {
		t.Fatal("empty histogram quantile not 0")
	}
}
