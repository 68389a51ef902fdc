package dashboard

import (
	"slices"
	"testing"
)

func TestRingKeepsTheNewest(t *testing.T) {
	s := newSampler(3)
	if got := s.since(0); got == nil || len(got) != 0 {
		t.Fatalf("empty ring: %v, want []", got)
	}
	for i := int64(1); i <= 5; i++ {
		s.add(Point{Time: i})
	}
	times := func(ps []Point) (out []int64) {
		for _, p := range ps {
			out = append(out, p.Time)
		}
		return out
	}
	if got := times(s.since(0)); !slices.Equal(got, []int64{3, 4, 5}) {
		t.Errorf("since(0) = %v, want the three newest, oldest first", got)
	}
	if got := times(s.since(4)); !slices.Equal(got, []int64{5}) {
		t.Errorf("since(4) = %v", got)
	}
	if got := s.since(5); len(got) != 0 {
		t.Errorf("since(newest) = %v", got)
	}
}

func TestTrendMinutes(t *testing.T) {
	tr := &trend{minute: 1000}
	tr.add(1000, 3)
	tr.add(1000, 2)
	tr.add(1002, 4) // minute 1001 had none
	got := tr.series(1002)
	if len(got) != trendMinutes || !slices.Equal(got[trendMinutes-3:], []int64{5, 0, 4}) || sum(got) != 9 {
		t.Fatalf("series = %v", got)
	}
	// Minutes without a sample read as 0, also on the way to now.
	if got := tr.series(1004); !slices.Equal(got[trendMinutes-5:], []int64{5, 0, 4, 0, 0}) {
		t.Errorf("series two minutes later = %v", got)
	}
	// After more than trendMinutes, old buckets are cleared, not reused.
	tr.add(1002+trendMinutes+1, 7)
	if got := tr.series(1002 + trendMinutes + 1); sum(got) != 7 || got[trendMinutes-1] != 7 {
		t.Errorf("series after a long pause = %v", got)
	}
}

func sum(xs []int64) (n int64) {
	for _, x := range xs {
		n += x
	}
	return n
}
