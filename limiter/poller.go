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

// poller is one application's activity pattern towards one endpoint, in
// hourly slots over the last day. Guarded by Budget.mu.
type poller struct {
	app      string
	last     time.Time // end of its latest activity booked
	lastKind Kind      // the kind of that activity, which its tail counts to
	slots    [pollSlots]pollSlot
}

// pollSlot holds one hour of a poller's figures.
type pollSlot struct {
	hour         int64 // Unix hour held; a slot is reset when reused for a newer hour
	queries      int64
	transactions int64
	connections  int64
	maxGap       time.Duration
	awake        [numKinds]time.Duration // awake time inside this hour caused by the app's own activity, by kind (closed spans)
	gapN         [gapBuckets]uint32
	gapMS        [gapBuckets]uint32 // sum of the gaps in ms, saturating; the bucket's mean is the median estimate
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

// add books a segment of the application's activity. The gap since its
// previous activity is recorded, and the awake time that activity caused on
// its own (until this one, at most suspend_after) is booked to its kind;
// then the segment's own time, by kind. Segments arrive about in time order;
// the part of one that overlaps activity already booked is not booked again.
func (p *poller) add(sg *segment, S time.Duration) {
	a := sg.a
	if !p.last.IsZero() {
		if a.After(p.last) {
			gap := a.Sub(p.last)
			if s := p.slot(unixHour(a)); s != nil && gap >= coalesceGap { // shorter ones are not counted, however delivered
				i := gapBucket(gap)
				s.gapN[i]++
				ms := uint64(s.gapMS[i]) + uint64(max(gap.Milliseconds(), 0))
				s.gapMS[i] = uint32(min(ms, 1<<32-1))
				s.maxGap = max(s.maxGap, gap)
			}
			var tail [numKinds]time.Duration
			tail[p.lastKind] = min(gap, S)
			p.addAwake(p.last, p.last.Add(tail[p.lastKind]), tail)
		} else {
			a = p.last
		}
	}
	if s := p.slot(unixHour(sg.b)); s != nil {
		s.queries += sg.queries
		s.transactions += sg.transactions
		s.connections += sg.connections
	}
	if sg.b.After(a) {
		p.addAwake(a, sg.b, sg.dur)
	}
	if p.last.IsZero() || !sg.b.Before(p.last) {
		p.last, p.lastKind = sg.b, sg.last
	}
}

// addAwake books [a, b) into the hourly slots it crosses, split between the
// kinds in the proportions of dur.
func (p *poller) addAwake(a, b time.Time, dur [numKinds]time.Duration) {
	var total time.Duration
	lastK := -1
	for k, d := range dur {
		if d > 0 {
			total += d
			lastK = k
		}
	}
	if lastK < 0 {
		return
	}
	for h := unixHour(a); ; h++ {
		hs := time.Unix(h*3600, 0)
		he := hs.Add(time.Hour)
		if seg := earlier(b, he).Sub(later(a, hs)); seg > 0 {
			if s := p.slot(h); s != nil {
				rest := seg
				for k := range lastK { // the last kind gets the rest: the shares add up to seg
					if dur[k] > 0 {
						share := min(rest, time.Duration(float64(seg)*float64(dur[k])/float64(total)))
						s.awake[k] += share
						rest -= share
					}
				}
				s.awake[lastK] += rest
			}
		}
		if !he.Before(b) {
			return
		}
	}
}

// PollerReport is one application's activity pattern over the last day:
// the window runs from the top of the hour 24 hours ago to now.
type PollerReport struct {
	// Application is the application_name ("other" past the cardinality
	// cap, NoApplication for a connection no client used).
	Application string
	// Endpoint is the compute the activity went to.
	Endpoint string
	// Queries counts the application's queries answered by the primary (a
	// sync point each: a simple Query, or an extended-protocol batch).
	Queries int64
	// Transactions counts the transaction blocks it opened there.
	Transactions int64
	// Connections counts the server connections opened for it (wake events).
	Connections int64
	// MedianGap and MaxGap are the idle time between the end of one of its
	// activities and the start of the next (median within about 20% unless
	// the gaps are regular, when it is exact; gaps under 250 ms are not
	// counted).
	MedianGap, MaxGap time.Duration
	// AwakeTime is how long its activity alone would have kept the compute
	// awake in the window (each span of activity: until the next, at most
	// suspend_after past its end), whatever the other applications did.
	AwakeTime time.Duration
	// AwakeQueries, AwakeTransactions and AwakeConnections split AwakeTime
	// by what kept the compute awake: running queries, transaction blocks
	// held open between queries, new connections. The suspend_after that
	// follows an activity counts to its kind.
	AwakeQueries, AwakeTransactions, AwakeConnections time.Duration
	// KeptAwakeBy names the kind with the most awake time: "queries",
	// "transactions" or "connections".
	KeptAwakeBy string
	// AwakeFraction is AwakeTime / Window.
	AwakeFraction float64
	// KeepsAwake is set when its activity never leaves a gap longer than
	// suspend_after, still keeps the compute awake now, and is more than one
	// instant (two or more queries, transactions or connections, or awake
	// longer than suspend_after): on its own it keeps the compute from
	// suspending.
	KeepsAwake bool
	// Window is the span reported on.
	Window time.Duration
}

// MarshalJSON writes durations in seconds.
func (r PollerReport) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Application       string  `json:"application"`
		Endpoint          string  `json:"endpoint"`
		Queries           int64   `json:"queries"`
		Transactions      int64   `json:"transactions"`
		Connections       int64   `json:"connections"`
		MedianGap         float64 `json:"median_gap_seconds"`
		MaxGap            float64 `json:"max_gap_seconds"`
		AwakeSeconds      float64 `json:"awake_seconds"`
		AwakeQueries      float64 `json:"awake_queries_seconds"`
		AwakeTransactions float64 `json:"awake_transactions_seconds"`
		AwakeConnections  float64 `json:"awake_connections_seconds"`
		KeptAwakeBy       string  `json:"kept_awake_by"`
		AwakeFraction     float64 `json:"awake_fraction"`
		KeepsAwake        bool    `json:"keeps_compute_awake"`
		Window            float64 `json:"window_seconds"`
	}{r.Application, r.Endpoint, r.Queries, r.Transactions, r.Connections, r.MedianGap.Seconds(), r.MaxGap.Seconds(),
		r.AwakeTime.Seconds(), r.AwakeQueries.Seconds(), r.AwakeTransactions.Seconds(), r.AwakeConnections.Seconds(),
		r.KeptAwakeBy, r.AwakeFraction, r.KeepsAwake, r.Window.Seconds()})
}

// report sums the slots of the window ending at now.
func (p *poller) report(now time.Time, S time.Duration) PollerReport {
	h0 := unixHour(now)
	ws := time.Unix((h0-24)*3600, 0)
	r := PollerReport{Application: p.app, Window: now.Sub(ws)}
	var n, ms [gapBuckets]uint64
	var total uint64
	var by [numKinds]time.Duration
	for i := range p.slots {
		s := &p.slots[i]
		if s.hour < h0-24 || s.hour > h0 {
			continue
		}
		r.Queries += s.queries
		r.Transactions += s.transactions
		r.Connections += s.connections
		r.MaxGap = max(r.MaxGap, s.maxGap)
		for k := range by {
			by[k] += s.awake[k]
		}
		for j := range s.gapN {
			n[j] += uint64(s.gapN[j])
			ms[j] += uint64(s.gapMS[j])
			total += uint64(s.gapN[j])
		}
	}
	if !p.last.IsZero() { // the open tail after the latest activity
		if tail := earlier(now, p.last.Add(S)).Sub(later(p.last, ws)); tail > 0 {
			by[p.lastKind] += tail
		}
	}
	r.AwakeQueries, r.AwakeTransactions, r.AwakeConnections = by[KindQuery], by[KindTransaction], by[KindConnection]
	r.AwakeTime = r.AwakeQueries + r.AwakeTransactions + r.AwakeConnections
	if r.AwakeTime > 0 {
		top := KindQuery
		for k := range by {
			if by[k] > by[top] {
				top = Kind(k)
			}
		}
		r.KeptAwakeBy = top.String()
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
	r.KeepsAwake = !p.last.IsZero() && !now.After(p.last.Add(S)) && r.MaxGap <= S &&
		(r.Queries+r.Transactions+r.Connections >= 2 || r.AwakeTime > S)
	return r
}
