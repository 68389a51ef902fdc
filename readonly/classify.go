// Package readonly decides whether SQL text could write, for pgguard's
// read-only kill switch.
//
// While the switch is on, the proxy passes the text of every simple Query
// ('Q') and every Parse ('P') message to a Classifier and answers a write with
// SQLSTATE 25006 instead of forwarding it. The classifier parses the text
// with PostgreSQL's own grammar (pg_query, PostgreSQL 17) and walks the tree;
// it never matches text with patterns. It fails closed: text it cannot
// parse, and statement kinds it does not know to be reads, are writes. A
// string of several statements is a write if any of them is.
//
// Decisions beyond "DML and DDL write" (PostgreSQL itself allows several of
// these in a read-only transaction; the proxy is stricter on purpose):
//
//   - VACUUM, ANALYZE, REINDEX, CLUSTER, CHECKPOINT, LOAD: writes
//     (maintenance that changes the database or the server).
//   - LOCK in any mode, NOTIFY and pg_notify(): writes. LISTEN, UNLISTEN: reads.
//   - EXECUTE: a write, since the prepared statement's text is not at hand.
//     PREPARE is judged by the statement it prepares.
//   - EXPLAIN without ANALYZE only plans: a read whatever it explains.
//     EXPLAIN ANALYZE is judged by the statement it runs. (PostgreSQL 15
//     lets EXPLAIN ANALYZE CREATE TABLE AS / SELECT INTO create the table
//     in a read-only transaction; this layer refuses them.)
//   - COPY FROM, and COPY TO a server file or PROGRAM: writes. COPY TO
//     STDOUT is a read unless its query writes.
//   - SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE anywhere in a
//     query, and SELECT INTO: writes.
//   - default_transaction_read_only and transaction_read_only: SET to a
//     true value is a read; SET to anything else, SET ... TO DEFAULT, RESET,
//     RESET ALL and DISCARD ALL (which resets them) are writes, as are BEGIN,
//     START TRANSACTION, SET TRANSACTION and SET SESSION CHARACTERISTICS with
//     READ WRITE, and set_config() of either name with any value.
//   - nextval(), setval(), large-object writers, dblink writers: writes.
//   - PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED: writes.
//   - DISCARD PLANS/SEQUENCES/TEMP, SET and RESET of other parameters,
//     SHOW, transaction control, cursors, DEALLOCATE and empty text: reads.
//
// What it cannot see: the bodies of user-defined functions, procedures,
// rules and triggers. `SELECT f()` is a read here even when f writes; the
// server-side layer (default_transaction_read_only) refuses those.
//
// The parser assumes standard_conforming_strings = on and an ASCII-safe
// client encoding, as the server does by default. A session that changed
// either could make the server split the text differently from the parser:
//
//	SELECT 'a\'' ; DELETE FROM t; --'
//
// is one string literal with the standard setting, but a literal and a
// DELETE with standard_conforming_strings off (PostgreSQL docs, "String
// Constants"). So SET standard_conforming_strings to off and SET
// client_encoding to a client-only encoding are writes here, and
// CheckSetting lets the proxy vet startup parameters the same way.
package readonly

import (
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgguard/pgguard/internal/textcache"
)

// Verdict is the classification of one SQL text.
type Verdict struct {
	// Write is true when the text could write, or cannot be shown not to.
	Write bool
	// Reason names what writes, fit for a client error message, e.g.
	// "INSERT" or "SELECT ... FOR UPDATE". Empty for reads.
	Reason string
}

// reasonUnparseable is the Reason for text the parser rejects.
const reasonUnparseable = "unparseable statement"

// read is the Verdict for text that cannot write.
var read = Verdict{}

// write returns a write Verdict with the given reason.
func write(reason string) Verdict { return Verdict{Write: true, Reason: reason} }

// Classifier classifies SQL text and caches verdicts by exact text.
// It is safe for concurrent use; the zero value is not usable, call New.
type Classifier struct {
	cache *textcache.Cache[Verdict] // nil when caching is off
}

// New returns a Classifier that caches up to cacheSize verdicts (0 or less
// turns caching off). Texts longer than MaxCachedLen are never cached, so the
// cache holds at most cacheSize*MaxCachedLen bytes of text.
func New(cacheSize int) *Classifier {
	c := &Classifier{}
	if cacheSize > 0 {
		c.cache = textcache.New[Verdict](cacheSize)
	}
	return c
}

// MaxCachedLen is the longest text whose verdict is cached.
const MaxCachedLen = 16 << 10

// Classify returns the verdict for sql, which may hold several statements;
// it is a write if any of them is. A cache hit does not allocate.
func (c *Classifier) Classify(sql string) Verdict {
	if c.cache != nil {
		if v, ok := c.cache.Get(sql); ok {
			return v
		}
	}
	v := classify(sql)
	if c.cache != nil && len(sql) <= MaxCachedLen {
		// Clone so the cache neither pins a larger buffer the caller sliced
		// sql from nor shares memory the caller may reuse.
		c.cache.Put(strings.Clone(sql), v)
	}
	return v
}

// ClassifyBytes is Classify for a message body the caller will reuse; b is
// not retained. A cache hit does not allocate.
func (c *Classifier) ClassifyBytes(b []byte) Verdict {
	if c.cache != nil {
		if v, ok := c.cache.GetBytes(b); ok {
			return v
		}
	}
	sql := string(b)
	v := classify(sql)
	if c.cache != nil && len(sql) <= MaxCachedLen {
		c.cache.Put(sql, v)
	}
	return v
}

// reasonSelfCheck is the Reason for every text when the self-check failed.
const reasonSelfCheck = "classifier self-check failed"

// classify classifies sql uncached, failing closed if the self-check did.
func classify(sql string) Verdict {
	if !selfCheck() {
		return write(reasonSelfCheck)
	}
	return classifyText(sql)
}

// selfCheck confirms once that the tree walk still sees nested writes. The
// walk reflects over pg_query's generated structs; should a new version of
// them hide their fields, every text becomes a write rather than a read.
var selfCheck = sync.OnceValue(func() bool {
	for sql, write := range map[string]bool{
		"WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x": true,
		"SELECT (SELECT nextval('s'))":                          true,
		"SELECT * FROM (SELECT 1 FROM t FOR UPDATE) AS x":       true,
		"SELECT 1": false,
	} {
		if classifyText(sql).Write != write {
			return false
		}
	}
	return true
})

// classifyText parses sql and classifies each statement.
func classifyText(sql string) (v Verdict) {
	// The parser reads a C string: a NUL would hide the text after it.
	// PostgreSQL rejects such messages anyway.
	if strings.IndexByte(sql, 0) >= 0 {
		return write(reasonUnparseable)
	}
	tree, err := parse(sql)
	if err != nil {
		return write(reasonUnparseable)
	}
	defer func() {
		// A malformed tree must not take the proxy down.
		if recover() != nil {
			v = write(reasonUnparseable)
		}
	}()
	for _, raw := range tree.GetStmts() {
		if v := stmtVerdict(raw.GetStmt()); v.Write {
			return v
		}
	}
	return read
}

// errPanic reports a panic inside the parser call.
type errPanic struct{ val any }

func (e errPanic) Error() string { return "readonly: parser panicked" }

// parse calls pg_query.Parse, turning a panic into an error.
func parse(sql string) (tree *pg_query.ParseResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			tree, err = nil, errPanic{p}
		}
	}()
	return pg_query.Parse(sql)
}
