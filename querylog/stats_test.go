package querylog

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

func testInfo(i int) *shapeInfo {
	fp := uint64(i)*0x9E3779B97F4A7C15 + 1
	return &shapeInfo{fp: fp, hex: fpHex(fp), norm: fmt.Sprintf("SELECT c%d FROM t WHERE x = $1", i)}
}

func TestStatsQuantiles(t *testing.T) {
	s := newStats(10)
	info := testInfo(1)
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, 10000)
	for i := range vals {
		d := time.Duration(math.Exp(rng.Float64()*math.Log(1e5)) * float64(100*time.Microsecond)) // 0.1 ms .. 10 s, log-uniform
		vals[i] = ms(d)
		s.add(info, &Record{Duration: d})
	}
	slices.Sort(vals)
	ss := s.Snapshot("", 0)[0]
	checkQuantile(t, "p50", ss.P50MS, vals, 0.50)
	checkQuantile(t, "p95", ss.P95MS, vals, 0.95)
	checkQuantile(t, "p99", ss.P99MS, vals, 0.99)
	if ss.MaxMS != vals[len(vals)-1] || ss.Calls != 10000 {
		t.Errorf("max %v calls %d", ss.MaxMS, ss.Calls)
	}
}

func TestStatsSortLimitReset(t *testing.T) {
	s := newStats(10)
	// shape 1: many fast calls; 2: few slow; 3: one very slow; 4: medium.
	for range 100 {
		s.add(testInfo(1), &Record{Duration: time.Millisecond})
	}
	for range 10 {
		s.add(testInfo(2), &Record{Duration: 50 * time.Millisecond})
	}
	s.add(testInfo(3), &Record{Duration: 300 * time.Millisecond})
	for i := range 20 {
		s.add(testInfo(4), &Record{Duration: time.Duration(i+1) * time.Millisecond, SQLState: "57014"})
	}
	order := func(sortBy string) string {
		var out string
		for _, ss := range s.Snapshot(sortBy, 0) {
			out += ss.Query[7:9]
		}
		return out
	}
	for sortBy, want := range map[string]string{"total": "c2c3c4c1", "": "c2c3c4c1", "calls": "c1c4c2c3", "p95": "c3c2c4c1", "mean": "c3c2c4c1"} {
		if got := order(sortBy); got != want {
			t.Errorf("sort %q: %s, want %s", sortBy, got, want)
		}
	}
	if top := s.Snapshot("calls", 2); len(top) != 2 || top[1].Errors != 20 || top[1].P95MS == 0 {
		t.Errorf("limit 2: %+v", top)
	}
	s.SetMaxShapes(2)
	if s.Len() != 2 || s.Evicted() != 2 {
		t.Errorf("shrink: Len %d Evicted %d", s.Len(), s.Evicted())
	}
	s.Reset()
	if s.Len() != 0 || len(s.Snapshot("", 0)) != 0 || s.Evicted() != 2 {
		t.Errorf("reset: Len %d Evicted %d", s.Len(), s.Evicted())
	}
	s.add(testInfo(5), &Record{Duration: time.Millisecond})
	if s.Len() != 1 {
		t.Error("add after Reset")
	}
}

// TestStatsMemory feeds 100,000 distinct shapes, three calls each (1, 10 and
// 100 ms, so each sketch spans two decades), into a 5,000-shape bound.
func TestStatsMemory(t *testing.T) {
	const shapes, bound = 100_000, 5000
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	infos := make([]*shapeInfo, shapes)
	for i := range infos {
		infos[i] = testInfo(i)
	}
	before := heap()
	s := newStats(bound)
	for i, info := range infos {
		for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond} {
			s.add(info, &Record{Duration: d, Rows: 1})
		}
		infos[i] = nil // only the Stats may keep it
	}
	after := heap()
	if s.Len() != bound || s.Evicted() != shapes-bound {
		t.Fatalf("Len %d Evicted %d, want %d and %d", s.Len(), s.Evicted(), bound, shapes-bound)
	}
	snap := s.Snapshot("calls", 0)
	if len(snap) != bound || snap[0].Calls != 3 {
		t.Fatalf("snapshot of %d, first %+v", len(snap), snap[0])
	}
	t.Logf("heap in use after %d shapes into max_shapes=%d: %.1f MiB (%.1f MiB for the stats, %d B per shape)",
		shapes, bound, float64(after)/(1<<20), (float64(after)-float64(before))/(1<<20), (int64(after)-int64(before))/bound)
	runtime.KeepAlive(s)
}
