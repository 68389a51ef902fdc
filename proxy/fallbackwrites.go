package proxy

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/cache/analyze"
	"github.com/pgguard/pgguard/failover"
)

// Writes on a writable fallback (failover.fallback_read_only = false) exist
// only there: pgguard does not copy them to the primary, so after failback
// the two diverge. They are accounted here, per table and per statement
// shape, from the statements the fallback ran (finished without error;
// including any its transaction later rolled back; writes inside functions
// are not seen): a WARN line the first time each shape writes, a counter
// per table (pgguard_fallback_writes_total), SHOW FAILOVER, /status, and a
// summary at failback. The query log's upstream field finds every one.
//
// And no session goes on writing there after failback: a session holding a
// fallback server connection (session mode, or pinned) is closed between
// transactions once the primary is back in use (closeRetiredSessions).

// maxFallbackKeys bounds the tables and shapes remembered per database;
// past it they count as "(other)".
const maxFallbackKeys = 100

// unknownTable counts writes whose tables cannot be told (DDL, CALL, DO,
// text not at hand).
const unknownTable = "(unknown)"

// fallbackWrites is one database's account of writes served by its fallback.
type fallbackWrites struct {
	mu     sync.Mutex
	total  uint64
	first  time.Time
	last   time.Time
	tables map[string]uint64
	shapes map[string]uint64
	logged map[string]bool // shapes already logged since the last failback
}

// FallbackWrites is a snapshot of a database's writes on its fallback, for
// /status and SHOW FAILOVER.
type FallbackWrites struct {
	// Total statements that wrote on the fallback since pgguard started.
	Total uint64 `json:"total"`
	// First and Last are when the first and the latest were served.
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
	// Tables counts them per table written; Shapes per normalized statement.
	Tables map[string]uint64 `json:"tables,omitempty"`
	Shapes map[string]uint64 `json:"shapes,omitempty"`
}

func (fw *fallbackWrites) snapshot() FallbackWrites {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return FallbackWrites{Total: fw.total, First: fw.first, Last: fw.last, Tables: maps.Clone(fw.tables), Shapes: maps.Clone(fw.shapes)}
}

// writeTags are the command tags of statements that change rows.
var writeTags = map[string]bool{"INSERT": true, "UPDATE": true, "DELETE": true, "MERGE": true}

// noteFallbackWrite accounts q, finished on a fallback server connection,
// if it wrote (called by report, on the pump).
func (db *database) noteFallbackWrite(q *inflightQuery) {
	if q.sqlstate != "" || db.p.cfg.Load().Failover.FallbackReadOnly {
		return // refused by the server, or nothing can have been written
	}
	if !writeTags[q.tag] && (q.text == "" || !classifier.Classify(q.text).Write) {
		return // a read (the classifier's verdicts are cached by text)
	}
	var tables []string
	if q.text != "" {
		w := analyze.Analyze(q.text).Writes
		switch {
		case w.All:
			tables = []string{unknownTable}
		default:
			tables = w.Tables
		}
		if len(tables) == 0 && q.tag == "COPY" && classifier.Classify(q.text).Write {
			tables = []string{unknownTable}
		}
	} else if writeTags[q.tag] {
		tables = []string{unknownTable}
	}
	if len(tables) == 0 {
		return
	}
	shape := q.text
	if shape == "" {
		shape = q.tag
	}
	fw := &db.fbWrites
	fw.mu.Lock()
	now := time.Now()
	if fw.tables == nil {
		fw.tables, fw.shapes, fw.logged = map[string]uint64{}, map[string]uint64{}, map[string]bool{}
	}
	if fw.total == 0 {
		fw.first = now
	}
	fw.total++
	fw.last = now
	for _, t := range tables {
		t = boundedKey(fw.tables, t)
		fw.tables[t]++
		db.p.metrics.FallbackWrites.WithLabelValues(db.name, t).Inc()
	}
	shape = boundedKey(fw.shapes, shape)
	fw.shapes[shape]++
	first := !fw.logged[shape] && len(fw.logged) < maxFallbackKeys
	if first {
		fw.logged[shape] = true
	}
	fw.mu.Unlock()
	if first {
		db.p.log.Warn("a write was served by the fallback: it exists only there and pgguard does not copy it to the primary",
			"database", db.name, "tables", tables, "statement", shape, "application_name", q.client.app)
	}
}

// boundedKey returns k, or "(other)" once m holds maxFallbackKeys others.
func boundedKey(m map[string]uint64, k string) string {
	if _, ok := m[k]; ok || len(m) < maxFallbackKeys {
		return k
	}
	return "(other)"
}

// failedBack logs, when traffic returns to the primary, what the fallback
// was written meanwhile.
func (db *database) failedBack() {
	fw := &db.fbWrites
	fw.mu.Lock()
	total, tables := fw.total, maps.Clone(fw.tables)
	clear(fw.logged)
	fw.mu.Unlock()
	if total == 0 {
		return
	}
	names := slices.Sorted(maps.Keys(tables))
	db.p.log.Warn("back on the primary: writes served by the fallback are not on the primary, and pgguard does not reconcile them; "+
		"find them in the query log (upstream = \"fallback\"), in SHOW FAILOVER and pgguard_fallback_writes_total",
		"database", db.name, "fallback_writes_since_start", total, "tables", names)
}

// closeRetiredSessions closes, between their transactions, the sessions
// that hold a server connection to the fallback while the primary is in
// use (session mode, or a pinned transaction-mode client): after failback
// none goes on reading or writing there. Called by the janitor.
func (p *Proxy) closeRetiredSessions(clients []*client) {
	for _, c := range clients {
		if c.db == nil || c.db.fallback == nil {
			continue
		}
		if b := c.server.Load(); b == nil || b.upstreamOf() != failover.Fallback || c.db.active() != failover.Primary {
			continue
		}
		st := c.linkState()
		if st.b == nil || st.running || st.inTransaction {
			continue
		}
		p.metrics.ClientsReaped.WithLabelValues("failback").Inc()
		p.log.Info("closing a session that holds a server connection to the upstream no longer in use", "client", c.id,
			"application_name", c.app, "database", c.db.name, "upstream", st.b.upstream)
		c.closeWith(fatalf(codeConnectionFailure,
			"database %q is served by its primary again: this session's server connection is to the fallback, so pgguard closed it between transactions; reconnect to continue on the primary",
			c.db.name))
	}
}

// noticeFallback tells the client, once per session and with
// failover.fallback_notice on, that its statements are served by the
// fallback: a NoticeResponse (PostgreSQL docs 55.2.6, sent at any time),
// ahead of the replies.
func (c *client) noticeFallback() {
	c.fallbackNoticed = true
	cfg := c.p.cfg.Load()
	if !cfg.Failover.FallbackNotice {
		return
	}
	mode := "read-only (failover.fallback_read_only = true)"
	if !cfg.Failover.FallbackReadOnly {
		mode = "read-write: writes made there are not on the primary and pgguard does not copy them"
	}
	n := pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000",
		Message: fmt.Sprintf("database %q is served by its fallback %s while its primary cannot be reached: reads may be stale; it is %s",
			c.db.name, c.db.hostOf(failover.Fallback.String()), mode)}
	if buf, err := n.Encode(nil); err == nil {
		c.write(buf)
	}
}

// fallbackWritable reports whether db's writes go to a writable fallback
// now: the statements' texts are then kept for the account even without a
// query log (client.intern).
func (db *database) fallbackWritable() bool {
	return db.fallback != nil && !db.p.cfg.Load().Failover.FallbackReadOnly && db.active() == failover.Fallback
}
