package limiter

import (
	"encoding/json"
	"math/bits"
	"time"
)

const (
	// maxPollers caps the applications tracked per endpoint; later ones are "other".
	maxPollers = 256
	// pollSlots is the current hour and the 24 before it.
	pollSlots = 25
	// gapBuckets is the gap histogram size: half-octaves from 1 ms, the last
	// bucket holding gaps of 2^23 ms (2.3 h) and more.
	gapBuckets = 48
)

// poller is one application's query pattern towards one endpoint, in hourly
// slots over the last day. Guarded by Budget.mu.
type poller struct {
	app   string
	last  time.Time
	slots [pollSlots]pollSlot
}

// pollSlot holds one hour of a poller's figures.
type pollSlot struct {
	hour    int64 // Unix hour held; a slot is reset when reused for a newer hour
	queries int64
	maxGap  time.Duration
	awake   time.Duration // awake time inside this hour caused by the app's own queries (closed spans)
	gapN    [gapBuckets]uint32
	gapMS   [gapBuckets]uint32 // sum of the gaps in ms, saturating; the bucket's mean is the median estimate
}

func unixHour(t time.Time) int64 { return t.Unix() / 3600 }

// slot returns hour h's slot, nil when h is older than the slot's hour.
func (p *poller) slot(h int64) *pollSlot {
	s := &p.slots[h%pollSlots]
	if s.hour > h {
		return nil
	}
	if s.hour != h {
		*s = pollSlot{hour: h}
	}
	return s
}

func gapBucket(d time.Duration) int {
	ms := d.Milliseconds()
	if ms <= 0 {
		return 0
	}
	l := bits.Len64(uint64(ms)) - 1 // 2^l <= ms < 2^(l+1)
	i := 1 + 2*l
	if uint64(ms)*10000 >= (uint64(1)<<l)*14142 { // past 2^l·√2
		i++
	}
	return min(i, gapBuckets-1)
}

// observe records a query at t. Its gap to the previous query, and the awake
// time that previous query caused on its own (until t or suspend_after
// later, whichever comes first), are booked in the slots.
func (p *poller) observe(t time.Time, S time.Duration) {
	if !p.last.IsZero() && !t.Before(p.last) {
		gap := t.Sub(p.last)
		if s := p.slot(unixHour(t)); s != nil {
			i := gapBucket(gap)
			s.gapN[i]++
			ms := uint64(s.gapMS[i]) + uint64(max(gap.Milliseconds(), 0))
			s.gapMS[i] = uint32(min(ms, 1<<32-1))
			s.maxGap = max(s.maxGap, gap)
		}
		p.addAwake(p.last, p.last.Add(min(gap, S)))
	}
	if s := p.slot(unixHour(t)); s != nil {
		s.queries++
	}
	if t.After(p.last) {
		p.last = t
	}
}

// addAwake books [a, b) into the hourly slots it crosses.
func (p *poller) addAwake(a, b time.Time) {
	for h := unixHour(a); ; h++ {
		hs := time.Unix(h*3600, 0)
		he := hs.Add(time.Hour)
		if seg := earlier(b, he).Sub(later(a, hs)); seg > 0 {
			if s := p.slot(h); s != nil {
				s.awake += seg
			}
		}
		if !he.Before(b) {
			return
		}
	}
}

// PollerReport is one application's query pattern over the last day: the
// window runs from the top of the hour 24 hours ago to now.
type PollerReport struct {
	// Application is the application_name ("other" past the cardinality cap).
	Application string
	// Endpoint is the compute the queries went to.
	Endpoint string
	// Queries counts the application's queries that reached the primary.
	Queries int64
	// MedianGap and MaxGap are the time between its consecutive queries
	// (median within about 20% unless the gaps are regular, when it is exact).
	MedianGap, MaxGap time.Duration
	// AwakeTime is how long its queries alone would have kept the compute
	// awake in the window (each query: until the next, at most
	// suspend_after), whatever the other applications did.
	AwakeTime time.Duration
	// AwakeFraction is AwakeTime / Window.
	AwakeFraction float64
	// KeepsAwake is set when its queries never leave a gap longer than
	// suspend_after (it has two or more, the last within suspend_after): on
	// its own it keeps the compute from ever suspending.
	KeepsAwake bool
	// Window is the span reported on.
	Window time.Duration
}

// MarshalJSON writes durations in seconds.
func (r PollerReport) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Application   string  `json:"application"`
		Endpoint      string  `json:"endpoint"`
		Queries       int64   `json:"queries"`
		MedianGap     float64 `json:"median_gap_seconds"`
		MaxGap        float64 `json:"max_gap_seconds"`
		AwakeSeconds  float64 `json:"awake_seconds"`
		AwakeFraction float64 `json:"awake_fraction"`
		KeepsAwake    bool    `json:"keeps_compute_awake"`
		Window        float64 `json:"window_seconds"`
	}{r.Application, r.Endpoint, r.Queries, r.MedianGap.Seconds(), r.MaxGap.Seconds(),
		r.AwakeTime.Seconds(), r.AwakeFraction, r.KeepsAwake, r.Window.Seconds()})
}

// report sums the slots of the window ending at now.
func (p *poller) report(now time.Time, S time.Duration) PollerReport {
	h0 := unixHour(now)
	ws := time.Unix((h0-24)*3600, 0)
	r := PollerReport{Application: p.app, Window: now.Sub(ws)}
	var n, ms [gapBuckets]uint64
	var total uint64
	for i := range p.slots {
		s := &p.slots[i]
		if s.hour < h0-24 || s.hour > h0 {
			continue
		}
		r.Queries += s.queries
		r.MaxGap = max(r.MaxGap, s.maxGap)
		r.AwakeTime += s.awake
		for j := range s.gapN {
			n[j] += uint64(s.gapN[j])
			ms[j] += uint64(s.gapMS[j])
			total += uint64(s.gapN[j])
		}
	}
	if !p.last.IsZero() { // the open tail after the last query
		if tail := earlier(now, p.last.Add(S)).Sub(later(p.last, ws)); tail > 0 {
			r.AwakeTime += tail
		}
	}
	if total > 0 {
		rank, seen := (total+1)/2, uint64(0)
		for j := range n {
			if seen += n[j]; seen >= rank {
				r.MedianGap = time.Duration(ms[j]/n[j]) * time.Millisecond
				break
			}
		}
	}
	if r.Window > 0 {
		r.AwakeFraction = float64(r.AwakeTime) / float64(r.Window)
	}
	r.KeepsAwake = r.Queries >= 2 && total > 0 && r.MaxGap <= S && !now.After(p.last.Add(S))
	return r
}
