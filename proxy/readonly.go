package proxy

import (
	"bytes"

	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/querylog"
	"github.com/pgguard/pgguard/readonly"
)

// The read-only guard: while the switch is on, every Query and Parse is
// classified and writes are refused with 25006; a Bind of a statement prepared before
// the switch is judged by that statement's text. The second layer,
// default_transaction_read_only on every server transaction, is applied with
// the session parameters (syncSQL).

// mustReadOnly reports whether server b must refuse writes itself, whatever
// its client asked for (startup parameters, options=-c, SET): the kill
// switch is on, the budget's on_exhausted = "read_only" acts, or b is a
// connection to the fallback while failover.fallback_read_only is on. Its
// syncs then force default_transaction_read_only on (syncSQL), and a
// server that reports it off is synced again before its next transaction.
func (b *backend) mustReadOnly() bool {
	cfg := b.db.p.cfg.Load()
	return cfg.ReadOnly || b.upstream == failover.Fallback.String() && cfg.Failover.FallbackReadOnly ||
		b.db.p.Limiter.Budget().Action() == "read_only"
}

// classifier is shared by all clients; its cache is bounded.
var classifier = readonly.New(16384)

// guard classifies a client message while the switch is on.
func (p *Proxy) guard(typ byte, body []byte, c *client) readonly.Verdict {
	var sql []byte
	switch typ {
	case 'Q':
		sql = queryText(body)
	case 'P':
		_, rest, ok := cbytes(body)
		if !ok {
			return readonly.Verdict{}
		}
		sql = queryText(rest)
	case 'B':
		_, rest, _ := cbytes(body)
		name, _, ok := cbytes(rest)
		st := c.stmt(name)
		if !ok || len(name) == 0 || st == nil {
			return readonly.Verdict{}
		}
		sql = queryText(st.parse)
	default:
		return readonly.Verdict{}
	}
	if startsWithSelect(sql) {
		c.zeroed = querylog.ZeroNumbers(c.zeroed[:0], sql)
		sql = c.zeroed
	}
	return classifier.ClassifyBytes(sql)
}

// startsWithSelect reports whether sql's first word is SELECT. Only then are
// numbers normalized: in SET (default_transaction_read_only = 1 or 0) and
// EXPLAIN options (ANALYZE 1 or 0) a number's value decides read or write.
func startsWithSelect(sql []byte) bool {
	i := 0
	for i < len(sql) && (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r') {
		i++
	}
	return len(sql)-i > 6 && bytes.EqualFold(sql[i:i+6], []byte("select")) && !isWordByte(sql[i+6])
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80
}

func readOnlyError(reason string) *Error {
	return &Error{Severity: "ERROR", Code: codeReadOnlyTx,
		Message: "cannot execute " + reason + ": pgguard is in read-only mode (read_only is on)",
		Hint:    "writes are refused until an operator turns it off: SET read_only = off in the admin console, POST /read-only off, or read_only = false in the config and reload"}
}

// raiseSQL is a statement that makes the server raise e, so the error takes
// its place in the reply stream and aborts the transaction as PostgreSQL would.
func raiseSQL(e *Error) string {
	return "DO $pgguard$BEGIN RAISE EXCEPTION USING ERRCODE = " + quoteLiteral(e.Code) +
		", MESSAGE = " + quoteLiteral(e.Message) + ", HINT = " + quoteLiteral(e.Hint) + "; END$pgguard$"
}
