package advisor

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// The result cache's model: for every cacheable shape and every TTL of the
// ladder, an entry per distinct Args is filled by a miss and answers the
// same shape and arguments until its TTL passes or a write to a table the
// shape reads commits (the invalidations the real cache would have made).
// Queries inside a transaction block are neither answered nor stored, as
// the real cache does.

type cacheKey struct {
	shape uint32
	args  uint64
}

// simState is the per-shape output of simulateCache.
type simState struct {
	hits    [len(ttlLadder)]int64
	savedNS [len(ttlLadder)]int64
	wakes   [len(ttlLadder)]int64
}

// simulateCache fills p.hitMask, p.keys, p.approx and p.inval, and returns
// each shape's hits by TTL.
func (p *pass) simulateCache(wake []bool) []simState {
	n := len(p.shapes)
	out := make([]simState, n)
	p.hitMask = make([]uint8, len(p.recs))
	p.keys = make([]int, n)
	p.approx = make([]bool, n)
	p.inval = make([]int64, n)

	tableIx := map[string]int{}
	tix := func(name string) int {
		if i, ok := tableIx[name]; ok {
			return i
		}
		tableIx[name] = len(tableIx)
		return len(tableIx) - 1
	}
	// What each shape reads (cacheable shapes) and writes.
	cacheable := make([]bool, n)
	reads := make([][]int, n)
	writes := make([][]int, n)
	writesAll := make([]bool, n)
	for i, s := range p.shapes {
		in := s.analysis()
		if s.cacheable() {
			if _, cached := p.s.CachedShapes[s.fp]; !cached {
				cacheable[i] = true
			}
			for _, t := range in.Reads {
				reads[i] = append(reads[i], tix(t))
			}
		}
		writesAll[i] = in.Writes.All
		for _, t := range in.Writes.Tables {
			writes[i] = append(writes[i], tix(t))
		}
	}
	tableLast := make([]int64, len(tableIx)) // when a write to it last committed
	tableWrites := make([]int64, len(tableIx))
	var allLast, allWrites int64

	type pending struct {
		tables []int
		all    bool
	}
	clients := map[uint32]*pending{}
	inTx := map[uint32]bool{}
	commit := func(pw *pending, at int64) {
		if pw.all {
			allLast = at
			allWrites++
		}
		for _, t := range pw.tables {
			tableLast[t] = at
			tableWrites[t]++
		}
		pw.tables, pw.all = pw.tables[:0], false
	}

	entries := map[cacheKey]*[len(ttlLadder)]int64{}
	for i := range p.recs {
		r := &p.recs[i]
		wasInTx := r.client != 0 && inTx[r.client]
		if r.client != 0 {
			inTx[r.client] = r.has(fInTx)
		}
		// Writes: held until the unit ends, dropped on ROLLBACK.
		if !r.has(fHit) && !r.has(fFailed) && (writesAll[r.shape] || len(writes[r.shape]) > 0) {
			pw := clients[r.client]
			if pw == nil {
				pw = &pending{}
				clients[r.client] = pw
			}
			pw.all = pw.all || writesAll[r.shape]
			pw.tables = append(pw.tables, writes[r.shape]...)
		}
		if !r.has(fInTx) {
			if pw := clients[r.client]; pw != nil {
				if r.has(fRollback) {
					pw.tables, pw.all = pw.tables[:0], false
				} else {
					commit(pw, r.end())
				}
			}
		}
		if !cacheable[r.shape] || !r.has(fPrimary) || wasInTx || r.has(fInTx) || r.has(fFailed) {
			continue
		}
		key := cacheKey{r.shape, r.args}
		if r.args == 0 {
			p.approx[r.shape] = true
		}
		e := entries[key]
		if e == nil {
			if len(entries) >= maxKeys {
				p.approx[r.shape] = true
				continue
			}
			e = new([len(ttlLadder)]int64)
			entries[key] = e
			p.keys[r.shape]++
		}
		written := allLast
		for _, t := range reads[r.shape] {
			written = max(written, tableLast[t])
		}
		st := &out[r.shape]
		for k, ttl := range ttlLadder {
			if e[k] != 0 && e[k] <= r.t && r.t-e[k] < int64(ttl) && e[k] >= written {
				p.hitMask[i] |= 1 << k
				st.hits[k]++
				st.savedNS[k] += int64(r.dur) * 1e3
				if wake[i] {
					st.wakes[k]++
				}
				continue
			}
			e[k] = r.end()
		}
	}
	for i := range p.shapes {
		if !cacheable[i] {
			continue
		}
		p.inval[i] = allWrites
		for _, t := range reads[i] {
			p.inval[i] += tableWrites[t]
		}
	}
	return out
}

// cacheCandidates ranks the cacheable shapes by the primary time their hits
// would have saved at the suggested TTL, then by the wake-ups.
func (p *pass) cacheCandidates(st []shapeStat, sim []simState, base time.Duration, w *Window) ([]CacheCandidate, []int) {
	chosen := make([]int, len(p.shapes)) // ladder index per shape, -1: not suggested
	for i := range chosen {
		chosen[i] = -1
	}
	var out []CacheCandidate
	var shapeOf []int
	for i, s := range p.shapes {
		calls := st[i].calls
		if calls < minCacheCalls || !s.cacheable() {
			continue
		}
		if _, cached := p.s.CachedShapes[s.fp]; cached {
			continue
		}
		sm := &sim[i]
		best := 0.0
		for k := range ttlLadder {
			best = max(best, float64(sm.hits[k])/float64(calls))
		}
		k := 0
		for ; k < len(ttlLadder)-1; k++ {
			if float64(sm.hits[k])/float64(calls) >= best-0.05 {
				break
			}
		}
		ratio := float64(sm.hits[k]) / float64(calls)
		if ratio < minHitRatio {
			continue
		}
		c := CacheCandidate{
			Fingerprint: fpHex(s.fp), Query: s.query, Applications: p.appNames(st[i].apps),
			Tables: s.analysis().Reads, Calls: calls, PrimaryMS: float64(st[i].primaryNS) / 1e6,
			Share: share(float64(st[i].primaryNS)/1e9, w.PrimarySeconds), Keys: p.keys[i],
			Invalidations: p.inval[i], TTL: ttlString(ttlLadder[k]), HitRatio: ratio, Hits: sm.hits[k],
			SavedPrimaryMS: float64(sm.savedNS[k]) / 1e6, WakeupsSaved: sm.wakes[k],
		}
		for j, ttl := range ttlLadder {
			c.ByTTL = append(c.ByTTL, TTLRatio{TTL: ttlString(ttl), HitRatio: float64(sm.hits[j]) / float64(calls)})
		}
		if p.approx[i] {
			c.Estimate = "some queries carried no argument hash (an older query log) or the simulation's key limit was reached: those count as one key, so the hit ratio may be high"
		}
		out = append(out, c)
		shapeOf = append(shapeOf, i)
		chosen[i] = k
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(x, y int) int {
		if c := cmp.Compare(out[y].SavedPrimaryMS, out[x].SavedPrimaryMS); c != 0 {
			return c
		}
		if c := cmp.Compare(out[y].WakeupsSaved, out[x].WakeupsSaved); c != 0 {
			return c
		}
		return cmp.Compare(out[x].Fingerprint, out[y].Fingerprint)
	})
	sorted := make([]CacheCandidate, 0, len(out))
	names := map[string]int{}
	for rank, j := range idx {
		c := out[j]
		si := shapeOf[j]
		if rank >= maxCandidates {
			chosen[si] = -1
			continue
		}
		k := chosen[si]
		without, _ := p.awake(func(i int) bool { return !(int(p.recs[i].shape) == si && p.hitMask[i]&(1<<k) != 0) })
		c.AwakeSavedSeconds = (base - without).Seconds()
		c.TOML = cacheTOML(ruleName(names, c.Tables), &c, p.s.Databases > 1, p.dbOf(si))
		sorted = append(sorted, c)
	}
	return sorted, chosen
}

// dbOf returns the database a shape ran in when it is one, else "".
func (p *pass) dbOf(shape int) string {
	db := -1
	for i := range p.recs {
		if int(p.recs[i].shape) != shape {
			continue
		}
		if db >= 0 && int(p.recs[i].db) != db {
			return ""
		}
		db = int(p.recs[i].db)
	}
	if db <= 0 {
		return ""
	}
	return p.dbs[db]
}

// ruleName names a rule after its first table, unique among names.
func ruleName(names map[string]int, tables []string) string {
	base := "shape"
	if len(tables) > 0 {
		base = tables[0]
	}
	names[base]++
	if n := names[base]; n > 1 {
		return fmt.Sprintf("%s_%d", base, n)
	}
	return base
}

// ttlString writes a TTL as config durations are written: "5m", "1h", "15s".
func ttlString(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
