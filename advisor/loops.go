package advisor

import (
	"cmp"
	"slices"
)

// N+1 loops. A client's unit of work is a transaction block, or a burst of
// queries less than loopGap apart. Inside one, a shape run at least minLoop
// times with differing arguments is a loop when the same shapes, at most
// loopPeriod of them, come between each two runs (the same loop body each
// time), or, inside a transaction block, whatever comes between. Its parent
// is the latest query of the unit before it that returned several rows: the
// list the loop walks. A connection serving page loads back to back repeats
// its shapes too, but rarely in lockstep: outside transaction blocks a loop
// without a parent must run 2 x minLoop times.

// chain is a run of one shape inside a unit being followed.
type chain struct {
	count      int
	period     int    // positions between two runs, set by the second run
	body       uint64 // the shapes between two runs, set by the second run
	lastPos    int
	first      int   // record index of the first run
	lastEnd    int64 // end of the latest run
	parent     int   // record index, -1 for none
	args       uint64
	argsDiffer bool
	inTx       bool
	firstDurNS int64
}

// loopClient is one client's unit under way.
type loopClient struct {
	inTx      bool
	end       int64
	pos       int
	lastMulti int                    // record index of the unit's latest query with rows > 1, -1 for none
	recent    [loopPeriod + 1]uint32 // the shapes of the unit's latest queries, by position modulo its size
	chains    map[uint32]*chain
}

type loopKey struct {
	app, shape uint32
	parent     int64 // shape index, -1 for none
}

type loopAgg struct {
	loops, iterations int64
	maxCount          int
	extraNS           int64
	parentRows        int64
	inTx              int64
}

func (p *pass) loops() []Loop {
	clients := map[uint32]*loopClient{}
	aggs := map[loopKey]*loopAgg{}
	finish := func(app uint16, shape uint32, ch *chain) {
		if ch.count < minLoop || (ch.args != 0 && !ch.argsDiffer) || (!ch.inTx && ch.parent < 0 && ch.count < 2*minLoop) {
			return
		}
		k := loopKey{app: uint32(app), shape: shape, parent: -1}
		if ch.parent >= 0 {
			k.parent = int64(p.recs[ch.parent].shape)
		}
		a := aggs[k]
		if a == nil {
			a = &loopAgg{}
			aggs[k] = a
		}
		a.loops++
		a.iterations += int64(ch.count)
		a.maxCount = max(a.maxCount, ch.count)
		// The extra round trips: everything from the end of the first run
		// to the end of the last, i.e. the loop's span but one query.
		a.extraNS += ch.lastEnd - p.recs[ch.first].t - ch.firstDurNS
		if ch.parent >= 0 {
			a.parentRows += int64(p.recs[ch.parent].rows)
		}
		if ch.inTx {
			a.inTx++
		}
	}
	closeUnit := func(app uint16, c *loopClient) {
		for s, ch := range c.chains {
			finish(app, s, ch)
		}
		clear(c.chains)
		c.pos, c.lastMulti = 0, -1
	}
	lastApp := map[uint32]uint16{}
	for i := range p.recs {
		r := &p.recs[i]
		if r.client == 0 {
			continue
		}
		c := clients[r.client]
		if c == nil {
			c = &loopClient{lastMulti: -1, chains: map[uint32]*chain{}}
			clients[r.client] = c
		}
		if c.pos > 0 && !c.inTx && r.t-c.end > int64(loopGap) {
			closeUnit(lastApp[r.client], c)
		}
		lastApp[r.client] = r.app
		pos := c.pos
		c.pos++
		ch := c.chains[r.shape]
		var body uint64
		if ch != nil && pos-ch.lastPos <= loopPeriod+1 {
			for q := ch.lastPos + 1; q < pos; q++ {
				body = (body ^ uint64(c.recent[q%len(c.recent)])) * 0x100000001b3
			}
		}
		if ch != nil && !c.inTx && ch.count > 1 && (pos-ch.lastPos != ch.period || body != ch.body) {
			finish(r.app, r.shape, ch) // another body: not the same loop
			delete(c.chains, r.shape)
			ch = nil
		}
		if ch != nil && (pos-ch.lastPos <= loopPeriod+1 || c.inTx) {
			if ch.count == 1 {
				ch.period, ch.body = pos-ch.lastPos, body
			}
			ch.count++
			ch.lastPos, ch.lastEnd = pos, r.end()
			ch.argsDiffer = ch.argsDiffer || r.args != ch.args
			ch.inTx = ch.inTx || c.inTx
		} else {
			if ch != nil {
				finish(r.app, r.shape, ch)
			}
			parent := c.lastMulti
			if parent >= 0 && p.recs[parent].shape == r.shape {
				parent = -1
			}
			c.chains[r.shape] = &chain{count: 1, lastPos: pos, first: i, lastEnd: r.end(), parent: parent,
				args: r.args, inTx: c.inTx, firstDurNS: int64(r.dur) * 1e3}
		}
		c.recent[pos%len(c.recent)] = r.shape
		if r.rows > 1 {
			c.lastMulti = i
		}
		c.inTx, c.end = r.has(fInTx), r.end()
	}
	for id, c := range clients {
		closeUnit(lastApp[id], c)
	}
	out := make([]Loop, 0, len(aggs))
	for k, a := range aggs {
		s := p.shapes[k.shape]
		l := Loop{
			Application: p.apps[k.app], Fingerprint: fpHex(s.fp), Query: s.query,
			Loops: a.loops, MeanCount: float64(a.iterations) / float64(a.loops), MaxCount: a.maxCount,
			InTransaction:   a.inTx*2 > a.loops,
			ExtraRoundTrips: a.iterations - a.loops, ExtraMS: float64(a.extraNS) / 1e6,
		}
		l.ExtraMSPerLoop = l.ExtraMS / float64(a.loops)
		l.Fix = "run it once for the whole list instead of once per row: fetch every key in one query (WHERE ... = ANY($1))"
		if k.parent >= 0 {
			ps := p.shapes[k.parent]
			l.Parent = &ParentQuery{Fingerprint: fpHex(ps.fp), Query: ps.query, MeanRows: float64(a.parentRows) / float64(a.loops)}
			l.Fix += ", or join it to the parent query"
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(x, y Loop) int {
		if c := cmp.Compare(y.ExtraMS, x.ExtraMS); c != 0 {
			return c
		}
		return cmp.Compare(x.Fingerprint, y.Fingerprint)
	})
	return out
}
