package advisor

import (
	"fmt"
	"slices"
)

// pool compares each database's pool with the server connections the
// traffic held at once: a query outside a transaction block holds one for
// its duration, a transaction block from its first query's start to its
// last one's end.
func (p *pass) pool() []PoolSizing {
	type span struct{ a, b int64 }
	type dbState struct {
		spans  []span
		waits  histogram
		queued int64
		maxUS  uint32
		n      int64
	}
	dbs := map[uint16]*dbState{}
	type open struct {
		start int64
		inTx  bool
	}
	clients := map[uint32]*open{}
	for i := range p.recs {
		r := &p.recs[i]
		if !r.has(fPrimary) {
			continue
		}
		d := dbs[r.db]
		if d == nil {
			d = &dbState{}
			dbs[r.db] = d
		}
		d.n++
		d.waits.add(r.wait)
		if r.wait > 0 {
			d.queued++
			d.maxUS = max(d.maxUS, r.wait)
		}
		c := clients[r.client]
		if r.client == 0 || c == nil {
			c = &open{}
			if r.client != 0 {
				clients[r.client] = c
			}
		}
		if !c.inTx {
			c.start = r.t
		}
		c.inTx = r.has(fInTx)
		if !c.inTx {
			d.spans = append(d.spans, span{c.start, r.end()})
		}
	}
	var out []PoolSizing
	for id, d := range dbs {
		name := p.dbs[id]
		size := p.s.PoolSize
		if n, ok := p.s.DatabasePoolSize[name]; ok {
			size = n
		}
		type ev struct {
			t int64
			d int
		}
		evs := make([]ev, 0, 2*len(d.spans))
		for _, s := range d.spans {
			evs = append(evs, ev{s.a, 1}, ev{s.b, -1})
		}
		slices.SortFunc(evs, func(x, y ev) int {
			if x.t != y.t {
				if x.t < y.t {
					return -1
				}
				return 1
			}
			return x.d - y.d // ends before starts at the same instant
		})
		// Peak, and the 99th percentile of concurrency weighted by time.
		cur, peak := 0, 0
		byLevel := map[int]int64{}
		for j, e := range evs {
			cur += e.d
			peak = max(peak, cur)
			if j+1 < len(evs) {
				byLevel[cur] += evs[j+1].t - e.t
			}
		}
		var busy int64
		for lvl, t := range byLevel {
			if lvl > 0 {
				busy += t
			}
		}
		p99, seen := 0, int64(0)
		for lvl := 1; lvl <= peak; lvl++ {
			seen += byLevel[lvl]
			if busy > 0 && float64(seen) >= 0.99*float64(busy) {
				p99 = lvl
				break
			}
		}
		ps := PoolSizing{
			Database: name, PoolSize: size, MaxOverflow: p.s.MaxOverflow,
			PeakConcurrent: peak, P99Concurrent: p99, Queued: d.queued,
			WaitP95MS: d.waits.quantileMS(0.95, d.n), MaxWaitMS: float64(d.maxUS) / 1e3,
			ComputeMaxConnections: neonMaxConnections(p.s.ComputeUnits),
		}
		if per := size + p.s.MaxOverflow; per > 0 {
			ps.MaxInstances = ps.ComputeMaxConnections / per
		}
		ps.Advice = poolAdvice(&ps)
		out = append(out, ps)
	}
	slices.SortFunc(out, func(x, y PoolSizing) int {
		if x.Database < y.Database {
			return -1
		}
		if x.Database > y.Database {
			return 1
		}
		return 0
	})
	return out
}

func poolAdvice(ps *PoolSizing) string {
	per := ps.PoolSize + ps.MaxOverflow
	fleet := fmt.Sprintf("each instance may open %d server connections (pool.size %d + max_overflow %d); %d instances fit under the compute's max_connections = %d (budget.compute_units)",
		per, ps.PoolSize, ps.MaxOverflow, ps.MaxInstances, ps.ComputeMaxConnections)
	switch {
	case ps.Queued > 0 && ps.PeakConcurrent >= ps.PoolSize && ps.WaitP95MS > 10:
		return fmt.Sprintf("queries queued for a server (%d, p95 wait %.1f ms) with all %d in use: pool.size = %d would have served the peak of %d; %s",
			ps.Queued, ps.WaitP95MS, ps.PoolSize, ps.PeakConcurrent+1, ps.PeakConcurrent, fleet)
	case ps.PeakConcurrent < ps.PoolSize/2:
		return fmt.Sprintf("at most %d server connections were busy at once (p99 %d): pool.size = %d would do, and fewer connections mean fewer compute wake-ups and slots; %s",
			ps.PeakConcurrent, ps.P99Concurrent, max(ps.PeakConcurrent+1, 2), fleet)
	}
	return fmt.Sprintf("pool.size %d fits the peak of %d busy server connections (p99 %d); %s", ps.PoolSize, ps.PeakConcurrent, ps.P99Concurrent, fleet)
}
