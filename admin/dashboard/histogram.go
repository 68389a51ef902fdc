package dashboard

import (
	"math"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// hist is a cumulative histogram read from a Prometheus histogram: every
// child of a vector merged, or those of one label value. It keeps the native
// buckets when the metric has them (pgguard's do: bucket factor 1.1, about
// 9% wide), else the classic ones. Quantiles over an interval come from the
// difference of two reads (sub), as Prometheus's histogram_quantile over a
// rate would give them.
type hist struct {
	count  uint64
	native bool
	schema int32            // native: bucket i is (2^((i-1)/2^schema), 2^(i/2^schema)]
	zero   uint64           // native: observations in the zero bucket
	zeroTh float64          // native: the zero bucket's upper bound
	pos    map[int32]uint64 // native: positive bucket index → count
	// classic: upper bounds and cumulative counts, ascending; +Inf implied by count.
	bounds []float64
	cum    []uint64
}

// readHists reads every child of c and merges them by the value of label
// (all into "" when label is ""). Non-histogram metrics are ignored.
func readHists(c prometheus.Collector, label string) map[string]*hist {
	ch := make(chan prometheus.Metric, 8)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	out := map[string]*hist{}
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil || d.Histogram == nil {
			continue
		}
		key := ""
		if label != "" {
			for _, lp := range d.Label {
				if lp.GetName() == label {
					key = lp.GetValue()
				}
			}
		}
		h := fromDTO(d.Histogram)
		if prev := out[key]; prev != nil {
			prev.merge(h)
		} else {
			out[key] = h
		}
	}
	return out
}

// readHist reads every child of c merged into one histogram.
func readHist(c prometheus.Collector) *hist {
	if h := readHists(c, "")[""]; h != nil {
		return h
	}
	return &hist{}
}

// fromDTO converts a written histogram.
func fromDTO(d *dto.Histogram) *hist {
	h := &hist{count: d.GetSampleCount()}
	if d.Schema != nil && len(d.PositiveSpan) > 0 { // native (an empty one has a no-op span)
		h.native, h.schema = true, d.GetSchema()
		h.zero, h.zeroTh = d.GetZeroCount(), d.GetZeroThreshold()
		h.pos = map[int32]uint64{}
		var idx int32
		var n int64
		k := 0
		for _, sp := range d.PositiveSpan {
			idx += sp.GetOffset()
			for j := uint32(0); j < sp.GetLength() && k < len(d.PositiveDelta); j++ {
				n += d.PositiveDelta[k]
				k++
				if n > 0 {
					h.pos[idx] = uint64(n)
				}
				idx++
			}
		}
		return h
	}
	for _, b := range d.Bucket {
		if math.IsInf(b.GetUpperBound(), +1) {
			continue
		}
		h.bounds = append(h.bounds, b.GetUpperBound())
		h.cum = append(h.cum, b.GetCumulativeCount())
	}
	return h
}

// reduced returns h at the lower resolution s (<= h.schema), h itself when
// it is already there: each step merges buckets 2j-1 and 2j into bucket j.
func (h *hist) reduced(s int32) *hist {
	if h.schema <= s {
		return h
	}
	r := *h
	for r.schema > s {
		next := make(map[int32]uint64, len(r.pos))
		for i, n := range r.pos {
			next[(i+1)>>1] += n
		}
		r.pos, r.schema = next, r.schema-1
	}
	return &r
}

// aligned returns a and b at a common resolution (copies where lowered), or
// false when they cannot be added or subtracted. Neither changes: reads kept
// by the sampler are shared between requests.
func aligned(a, b *hist) (*hist, *hist, bool) {
	if a.native != b.native {
		return a, b, false
	}
	if a.native {
		s := min(a.schema, b.schema)
		return a.reduced(s), b.reduced(s), true
	}
	return a, b, slices.Equal(a.bounds, b.bounds)
}

// merge adds o into h, a fresh read of another child of the same vector.
func (h *hist) merge(o *hist) {
	a, b, ok := aligned(h, o)
	if !ok {
		return // differently shaped children: keep the first
	}
	*h = *a // h's maps and slices are its own (a fresh read, or a's copies)
	h.count += b.count
	if h.native {
		h.zero += b.zero
		h.zeroTh = max(h.zeroTh, b.zeroTh)
		for i, n := range b.pos {
			h.pos[i] += n
		}
		return
	}
	for i := range h.cum {
		h.cum[i] += b.cum[i]
	}
}

// sub returns the observations h has and prev had not: the interval between
// two reads. A nil or incompatible prev, or one with more observations
// (a reset), counts as empty. Neither h nor prev changes.
func (h *hist) sub(prev *hist) *hist {
	if prev == nil || prev.count > h.count {
		return h
	}
	a, b, ok := aligned(h, prev)
	if !ok {
		return h
	}
	d := &hist{count: a.count - b.count, native: a.native, schema: a.schema, zeroTh: a.zeroTh}
	if a.native {
		d.zero = a.zero - min(a.zero, b.zero)
		d.pos = make(map[int32]uint64, len(a.pos))
		for i, n := range a.pos {
			if p := b.pos[i]; n > p {
				d.pos[i] = n - p
			}
		}
		return d
	}
	d.bounds = a.bounds
	d.cum = make([]uint64, len(a.cum))
	for i := range a.cum {
		d.cum[i] = a.cum[i] - min(a.cum[i], b.cum[i])
	}
	return d
}

// quantile returns the q-quantile (0 < q < 1) in the histogram's unit, 0
// when it is empty. Native buckets interpolate exponentially within a
// bucket, classic ones linearly (as PromQL's histogram_quantile does); a
// rank in the classic +Inf bucket gives the highest finite bound.
func (h *hist) quantile(q float64) float64 {
	if h == nil || h.count == 0 {
		return 0
	}
	rank := q * float64(h.count)
	if h.native {
		seen := float64(h.zero)
		if seen >= rank {
			return h.zeroTh * rank / seen
		}
		idx := make([]int32, 0, len(h.pos))
		for i := range h.pos {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		scale := math.Exp2(float64(-h.schema)) // log2 width of one bucket
		for _, i := range idx {
			n := float64(h.pos[i])
			if seen+n >= rank {
				frac := (rank - seen) / n
				return math.Exp2((float64(i) - 1 + frac) * scale)
			}
			seen += n
		}
		if len(idx) == 0 {
			return h.zeroTh
		}
		return math.Exp2(float64(idx[len(idx)-1]) * scale)
	}
	lower, below := 0.0, 0.0
	for i, ub := range h.bounds {
		c := float64(h.cum[i])
		if c >= rank {
			if c == below {
				return ub
			}
			return lower + (ub-lower)*(rank-below)/(c-below)
		}
		lower, below = ub, c
	}
	return lower
}
