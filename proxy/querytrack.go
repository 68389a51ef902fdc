package proxy

import (
	"bytes"
	"hash/maphash"
	"time"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/querylog"
)

// Query timing. Every sync point a client sends (a Query, or the Sync that
// ends an extended-protocol batch) is one query for the log and the
// statistics: the client goroutine notes its text, the send stamps it, and
// the pump completes it from CommandComplete/ErrorResponse and ends it at
// ReadyForQuery. Pool wait is kept apart from the duration.

// pendingQuery is a query noted by process, not yet sent.
type pendingQuery struct {
	text     string // interned; "" when there is no query log
	query    bool   // false for a sync that ran nothing (Parse/Describe/Sync)
	extended bool
	quiet    bool   // a Sync pgguard added: the client must not see its ReadyForQuery
	args     uint64 // hash of its literals or Bind parameters (query log only; see textArgs)
	// op is the client's SQL PREPARE or DEALLOCATE the sync point settles.
	op *stmtOp
	// For the result cache: the tables the statements before this sync
	// point may write, and the collector of a miss's reply.
	writes cache.Targets
	fill   *cacheFill
}

// inflightQuery is a query sent to a server, awaiting its ReadyForQuery
// (part of its request). Guarded by the backend's mu.
type inflightQuery struct {
	pendingQuery
	client   *client
	start    time.Time
	wait     time.Duration
	rows     int64
	tag      string
	sqlstate string
	errMsg   string
}

// noteQuery records a sync point's statement text (nil when the batch only
// synced).
func (c *client) noteQuery(text []byte, extended bool) {
	c.syncPoint(pendingQuery{text: c.intern(text), query: true, extended: extended, args: c.textArgs(text)})
}

// argsSeed keys the query log's Args hashes: per process, so a hash cannot
// be matched against guessed values elsewhere.
var argsSeed = maphash.MakeSeed()

// textArgs hashes a simple Query's text, literals included, for the query
// log's Args: texts of one shape with equal literals would share a result
// cache entry (the advisor's hit-ratio estimate). 0 without a query log.
func (c *client) textArgs(text []byte) uint64 {
	if c.p.QueryLog == nil {
		return 0
	}
	return maphash.Bytes(argsSeed, text) | 1
}

// bindArgs folds a Bind message's body (statement, formats and parameter
// values) into h, the batch's Args. 0 without a query log.
func (c *client) bindArgs(h uint64, body []byte) uint64 {
	if c.p.QueryLog == nil {
		return 0
	}
	return (h^maphash.Bytes(argsSeed, body))*0x9e3779b97f4a7c15 | 1
}

// syncPoint queues q for the send under way, with what the result cache
// needs to know of the statements before it.
func (c *client) syncPoint(q pendingQuery) {
	if cc := c.cached; cc != nil {
		q.writes = cc.takeWrites()
		q.fill, cc.missFill = cc.missFill, nil
	}
	c.queued = append(c.queued, q)
}

// intern returns text as a string for the query log, or "" without one.
// Unless parameters are logged, numbers are zeroed first: the log shows the
// normalized shape either way, and queries differing only in numbers then
// share one interned string instead of allocating one each.
func (c *client) intern(text []byte) string {
	ql := c.p.QueryLog
	if ql == nil {
		if c.db.fallbackWritable() { // for the account of writes on the fallback
			return string(querylog.ZeroNumbers(c.zeroed[:0], text))
		}
		return ""
	}
	if !ql.LogParameters() {
		c.zeroed = querylog.ZeroNumbers(c.zeroed[:0], text)
		text = c.zeroed
	}
	return ql.Intern(text)
}

// commandComplete notes what a client's command did to the session and the
// unit of work and, when its request h is known (nil: a batch not synced
// yet), its tag and row count (mu held).
func (b *backend) commandComplete(h *request, body []byte) {
	tag := queryText(body)
	switch string(tag) {
	case "ROLLBACK": // also what COMMIT of an aborted transaction says
		b.unitAborted = true
	case "DISCARD ALL", "DEALLOCATE ALL":
		b.stmtsDropped()
	}
	if string(tag) == "DISCARD ALL" && b.client != nil {
		b.client.listenDiscarded() // it includes UNLISTEN *
	}
	// For the result cache: did the unit's writes commit? (See unitWrites.)
	b.unitUndone = string(tag) == "ROLLBACK"
	b.unitCommitted = b.unitCommitted || string(tag) == "COMMIT"
	if h != nil && h.kind == reqClient {
		word, rows := commandTag(tag)
		h.tag = word
		h.rows += rows
	}
}

// commandTag splits a CommandComplete tag into its command word and row count.
func commandTag(tag []byte) (word string, rows int64) {
	w := tag
	if i := bytes.IndexByte(tag, ' '); i >= 0 {
		w = tag[:i]
	}
	if i := bytes.LastIndexByte(tag, ' '); i >= 0 {
		rows = digits(tag[i+1:])
	}
	return commandWord(w), rows
}

// report sends a finished query to the metrics and the query log.
func (b *backend) report(q inflightQuery, status byte, now time.Time) {
	d := now.Sub(q.start)
	db := b.db
	u := b.upstreamOf()
	db.queryDur[u].Observe(d.Seconds())
	if q.sqlstate != "" {
		db.p.metrics.QueryErrors.WithLabelValues(db.name, q.sqlstate).Inc()
	}
	if u == failover.Fallback {
		db.noteFallbackWrite(&q)
	}
	c := q.client
	if db.p.QueryLog == nil || q.text == "" {
		return
	}
	db.p.QueryLog.Log(querylog.Record{
		Time: q.start, Database: db.name, User: c.user, Application: c.app, ClientAddr: c.addr,
		Upstream: b.upstream, Query: q.text, Duration: d, Wait: q.wait, Rows: q.rows,
		Tag: q.tag, SQLState: q.sqlstate, Error: q.errMsg, Extended: q.extended,
		Client: c.id, TxStatus: status, Args: q.args,
	})
}

// digits parses a row count without allocating; 0 if b is not one.
func digits(b []byte) int64 {
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0
		}
		n = n*10 + int64(d-'0')
	}
	return n
}

// commandWord returns the command word of a tag without allocating for the
// common ones.
func commandWord(w []byte) string {
	for _, s := range commonTags {
		if string(w) == s {
			return s
		}
	}
	return string(w)
}

var commonTags = []string{"SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK", "SET", "COPY", "FETCH", "MERGE", "SHOW", "DO"}

// errorMessage returns an ErrorResponse's primary message ('M' field).
func errorMessage(body []byte) string {
	return string(errorField(body, 'M'))
}
