package limiter

import (
	"testing"
	"time"
)

func TestGapBucket(t *testing.T) {
	prev := -1
	for _, d := range []time.Duration{0, time.Millisecond, 1414 * time.Microsecond, 1415 * time.Microsecond, 2 * time.Millisecond,
		50 * time.Millisecond, time.Second, time.Minute, 5 * time.Minute, time.Hour, 3 * time.Hour, 48 * time.Hour} {
		b := gapBucket(d)
		if b < prev || b >= gapBuckets {
			t.Fatalf("gapBucket(%v) = %d after %d", d, b, prev)
		}
		prev = b
	}
	if gapBucket(time.Minute) == gapBucket(90*time.Second) {
		t.Error("60 s and 90 s share a bucket")
	}
}

// An irregular pattern: the median is the bucket mean, MaxGap exact, and
// the slots older than a day drop out.
func TestPollerReport(t *testing.T) {
	const S = 5 * time.Minute
	var p poller
	at := day0
	for i := range 100 { // gaps alternating 10 s and 20 s, then one of 2 h
		p.add(&segment{a: at, b: at, last: KindQuery, queries: 1}, S)
		at = at.Add(time.Duration(10+10*(i%2)) * time.Second)
	}
	at = at.Add(2 * time.Hour)
	p.add(&segment{a: at, b: at, last: KindQuery, queries: 1}, S)
	r := p.report(at, S)
	if r.Queries != 101 || r.MaxGap != 2*time.Hour+20*time.Second || r.KeepsAwake {
		t.Fatalf("%+v", r)
	}
	if r.MedianGap < 10*time.Second || r.MedianGap > 20*time.Second {
		t.Fatalf("median %v", r.MedianGap)
	}
	// 99 gaps (50 x 10 s + 49 x 20 s), then S after the 100th; the last
	// query's tail has not started (now is its time).
	if want := 1480*time.Second + S; r.AwakeTime != want {
		t.Fatalf("awake %v, want %v", r.AwakeTime, want)
	}
	later := p.report(at.Add(30*time.Hour), S)
	if later.Queries != 0 || later.AwakeTime != 0 {
		t.Fatalf("a day later: %+v", later)
	}
}
