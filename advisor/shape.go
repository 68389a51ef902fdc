package advisor

import (
	"math"
	"math/bits"
	"sync"

	"github.com/pgguard/pgguard/cache/analyze"
)

// shape is one query shape the advisor has seen. fp and query never change;
// the analysis is made once, when Advise first needs it.
type shape struct {
	fp    uint64
	query string // normalized text ($n for literals)
	other bool   // the bucket of shapes past maxShapes

	once sync.Once
	info analyze.Info
}

// analysis returns what the result cache's analyzer says of the shape:
// whether it may be cached, what it reads and what it writes.
func (s *shape) analysis() *analyze.Info {
	s.once.Do(func() {
		if s.other {
			s.info = analyze.Info{Refusal: "is not one shape", Writes: analyze.Targets{All: false}}
			return
		}
		s.info = analyze.Analyze(s.query)
	})
	return &s.info
}

// cacheable reports whether a [[cache]] rule could cache the shape without
// trusted functions.
func (s *shape) cacheable() bool {
	in := s.analysis()
	return in.Refusal == "" && len(in.Functions) == 0 && len(in.Reads) > 0
}

// histogram is a duration histogram of quarter-octave buckets from 1 µs:
// a quantile is known within about 9%.
type histogram [112]uint32

func histBucket(us uint32) int {
	if us <= 1 {
		return 0
	}
	// 4 buckets per octave: the index of the highest bit and the two below.
	l := 31 - bits.LeadingZeros32(us)
	frac := 0
	if l >= 2 {
		frac = int((us >> (l - 2)) & 3)
	} else if l == 1 {
		frac = int(us&1) * 2
	}
	return min(1+4*l+frac, len(histogram{})-1)
}

// bucketMid returns the middle of bucket i in µs.
func bucketMid(i int) float64 {
	if i == 0 {
		return 1
	}
	l := (i - 1) / 4
	frac := (i - 1) % 4
	lo := float64(uint64(1)<<l) * (1 + float64(frac)/4)
	return lo * (1 + 1.0/8)
}

func (h *histogram) add(us uint32) { h[histBucket(us)]++ }

// quantileMS returns the q quantile in milliseconds.
func (h *histogram) quantileMS(q float64, n int64) float64 {
	if n <= 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(n))), 1) // nearest rank
	var seen int64
	for i, c := range h {
		if seen += int64(c); seen >= rank {
			return bucketMid(i) / 1000
		}
	}
	return 0
}
