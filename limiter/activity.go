package limiter

import (
	"sync"
	"time"
)

// What keeps a compute awake, as the proxy reports it. Neon counts a compute
// active while a query runs and while a session sits idle inside a
// transaction block, and every new session wakes it; an open idle session
// does not keep it awake. The proxy tells each server connection's Activity
// when a query is sent (Query) and when the server is ready again (Ready);
// the model turns that into spans: a query is active from its send to its
// ReadyForQuery, a transaction block from its first ReadyForQuery 'T' to the
// one that says 'I'. The compute is awake over the union of the spans, each
// extended by suspend_after.
//
// Cost: the calls take the connection's own mutex (uncontended: its pump and
// its client take turns) and append to a short list; the budget's lock is
// taken when that list fills (gaps longer than coalesceGap, or another
// application on the connection) and by the sweep, which runs before every
// read of the figures and at the janitor's tick. The sweep also counts a
// span still open up to now, so a 20-minute query shows in the figures while
// it runs, and is one span however many sweeps cut it.

// Kind is a kind of activity that keeps a Neon compute awake.
type Kind uint8

const (
	// KindQuery is a query running on a server connection.
	KindQuery Kind = iota
	// KindTransaction is a server connection idle inside a transaction block.
	KindTransaction
	// KindConnection is a new server connection: opening it wakes the compute.
	KindConnection
	numKinds
)

var kindNames = [numKinds]string{"queries", "transactions", "connections"}

// String returns "queries", "transactions" or "connections".
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return "unknown"
}

// NoApplication is the application a server connection's wake event is
// booked to when no client used the connection within connGrace of opening it.
const NoApplication = "(none)"

const (
	// coalesceGap: activity of one application on one connection less than
	// this apart is delivered as one segment. The gap is inside the awake
	// time either way (it is shorter than suspend_after), so only the gap
	// statistics of the pollers report lose it.
	coalesceGap = 250 * time.Millisecond
	// maxSegs bounds the segments a connection holds between sweeps.
	maxSegs = 16
	// connGrace is how long a new connection's wake event waits for the
	// first client's application_name before it is booked to NoApplication.
	connGrace = time.Second
)

// segment is one application's activity on one connection from a to b,
// delivered to the model in one piece. dur splits b-a by kind: a gap
// coalesced into the segment counts to the kind before it, as the tail of an
// awake period does.
type segment struct {
	app                                string
	a, b                               time.Time
	dur                                [numKinds]time.Duration
	last                               Kind // the kind at b
	queries, transactions, connections int64
}

// Activity is one server connection to a primary, as the budget model sees
// it. Limiter.Connected returns it; the proxy calls Query, Ready and Close
// from whichever goroutine holds the connection at the time (calls must not
// overlap; the proxy makes them under the connection's own lock). A nil
// Activity (no limiter, or a connection to the fallback) does nothing.
type Activity struct {
	b  *Budget
	db string

	mu     sync.Mutex // guards the rest; taken before Budget.mu, never after
	app    string     // application of the open span, or of the last one
	since  time.Time  // start of the open span; zero when the server is idle
	kind   Kind       // of the open span
	inTx   bool       // the last ReadyForQuery said 'T' or 'E'
	nq     int64      // queries answered in the open span, not yet in a segment
	ntx    int64      // transaction blocks begun in it
	connAt time.Time  // the connection's wake event, awaiting an application
	segs   []segment  // not yet merged into the model
	closed bool
}

// Connected records a server connection opened to database's primary at t: a
// wake event (call it only for connections that succeeded; one refused
// because the compute is suspended or over quota woke nothing). app is the
// application it was opened for, or "" when not known: the event is then
// booked to the first application that sends a query on it. The returned
// Activity tracks what runs on the connection until Close.
func (l *Limiter) Connected(database, app string, t time.Time) *Activity {
	if l == nil {
		return nil
	}
	b := l.budget
	a := &Activity{b: b, db: database}
	if app == "" {
		a.connAt = t // counted now for the compute, later for an application
		b.merge(database, []segment{{a: t, b: t, last: KindConnection}}, t)
	} else {
		a.app = app
		b.merge(database, []segment{{app: app, a: t, b: t, last: KindConnection, connections: 1}}, t)
	}
	b.regMu.Lock()
	b.acts[a] = struct{}{}
	b.regMu.Unlock()
	return a
}

// ObserveConnect records a server connection opened to database's primary
// at t and closed without running anything for a client (a failover probe):
// a wake event booked to app.
func (l *Limiter) ObserveConnect(database, app string, t time.Time) {
	if l == nil {
		return
	}
	l.budget.merge(database, []segment{{app: app, a: t, b: t, last: KindConnection, connections: 1}}, t)
}

// Query records that app's client sent something the server runs from t on
// (a query, a batch, COPY data). Calls while a query of the same application
// is already running cost a lock and two comparisons.
func (a *Activity) Query(app string, t time.Time) {
	if a == nil {
		return
	}
	a.mu.Lock()
	if a.closed || !a.since.IsZero() && a.kind == KindQuery && a.app == app {
		a.mu.Unlock()
		return
	}
	a.endOpen(t)
	if !a.connAt.IsZero() {
		a.emit(app, a.connAt, a.connAt, KindConnection, 0, 0, 1)
		a.connAt = time.Time{}
	}
	a.app, a.since, a.kind = app, t, KindQuery
	a.flushIfFull(t)
	a.mu.Unlock()
}

// Ready records a ReadyForQuery at t: one query answered. more is set while
// the server still owes answers to queries sent after it (a pipeline): the
// query span goes on. Otherwise the server is idle inside a transaction
// block when inTx (status 'T' or 'E'), and idle when not. A ReadyForQuery
// with no span open (the answer to a query the proxy sent on its own, such
// as a reset) counts as an instant of activity.
func (a *Activity) Ready(t time.Time, more, inTx bool) {
	if a == nil {
		return
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	if a.since.IsZero() {
		a.since, a.kind = t, KindQuery
	}
	a.nq++
	switch {
	case more:
	case inTx:
		if a.kind != KindTransaction {
			if !a.inTx {
				a.ntx++
			}
			a.endOpen(t)
			a.since, a.kind = t, KindTransaction
		}
	default:
		a.endOpen(t)
	}
	if !more {
		a.inTx = inTx
	}
	a.flushIfFull(t)
	a.mu.Unlock()
}

// Close records that the connection ended at t: an open span ends with it.
func (a *Activity) Close(t time.Time) {
	if a == nil {
		return
	}
	a.b.regMu.Lock()
	delete(a.b.acts, a)
	a.b.regMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	a.endOpen(t)
	a.attributeConn(t, true)
	a.flush(t)
}

// endOpen ends the open span at t, as a segment (a.mu held).
func (a *Activity) endOpen(t time.Time) {
	if a.since.IsZero() {
		return
	}
	a.emit(a.app, a.since, later(t, a.since), a.kind, a.nq, a.ntx, 0)
	a.since, a.nq, a.ntx = time.Time{}, 0, 0
}

// checkpoint counts the open span up to now without ending it, and books a
// wake event no client claimed in time (a.mu held; the sweep).
func (a *Activity) checkpoint(now time.Time) {
	if !a.since.IsZero() && now.After(a.since) {
		a.emit(a.app, a.since, now, a.kind, a.nq, a.ntx, 0)
		a.since, a.nq, a.ntx = now, 0, 0
	}
	a.attributeConn(now, false)
}

// attributeConn books the unclaimed wake event to NoApplication once it is
// connGrace old, or at once when force.
func (a *Activity) attributeConn(now time.Time, force bool) {
	if !a.connAt.IsZero() && (force || now.Sub(a.connAt) >= connGrace) {
		a.emit(NoApplication, a.connAt, a.connAt, KindConnection, 0, 0, 1)
		a.connAt = time.Time{}
	}
}

// emit adds activity of app from s to e to the pending segments, extending
// app's latest one when it ended less than coalesceGap (and suspend_after)
// before s (a.mu held).
func (a *Activity) emit(app string, s, e time.Time, k Kind, queries, txs, conns int64) {
	gapMax := min(coalesceGap, time.Duration(a.b.suspendNS.Load()))
	for i := len(a.segs) - 1; i >= 0; i-- {
		sg := &a.segs[i]
		if sg.app != app {
			continue
		}
		if s.Sub(sg.b) > gapMax {
			break
		}
		end := later(sg.b, e)
		sg.dur[sg.last] += max(s.Sub(sg.b), 0) // the gap: the tail of what came before
		sg.dur[k] += max(end.Sub(later(s, sg.b)), 0)
		if !e.Before(sg.b) {
			sg.last = k
		}
		sg.b = end
		sg.queries += queries
		sg.transactions += txs
		sg.connections += conns
		return
	}
	sg := segment{app: app, a: s, b: e, last: k, queries: queries, transactions: txs, connections: conns}
	sg.dur[k] = e.Sub(s)
	a.segs = append(a.segs, sg)
}

// flushIfFull merges the pending segments once there are maxSegs (a.mu held).
func (a *Activity) flushIfFull(now time.Time) {
	if len(a.segs) >= maxSegs {
		a.flush(now)
	}
}

// flush merges the pending segments into the model (a.mu held).
func (a *Activity) flush(now time.Time) {
	if len(a.segs) == 0 {
		return
	}
	a.b.merge(a.db, a.segs, now)
	clear(a.segs)
	a.segs = a.segs[:0]
}

// sweep brings every connection's activity into the model up to now.
func (b *Budget) sweep(now time.Time) {
	b.regMu.Lock()
	acts := make([]*Activity, 0, len(b.acts))
	for a := range b.acts {
		acts = append(acts, a)
	}
	b.regMu.Unlock()
	for _, a := range acts {
		a.mu.Lock()
		if !a.closed {
			a.checkpoint(now)
			a.flush(now)
		}
		a.mu.Unlock()
	}
}
