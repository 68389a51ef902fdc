package proxy

import (
	"bytes"

	"github.com/pgguard/pgguard/readonly"
)

// The read-only guard: while the switch is on, every Query and Parse is
// classified and writes are refused with 25006; a Bind of a statement prepared before
// the switch is judged by that statement's text. The second layer,
// default_transaction_read_only on every server transaction, is applied with
// the session parameters (syncSQL).

// classifier is shared by all clients; its cache is bounded.
var classifier = readonly.New(16384)

// guard classifies a client message while the switch is on.
func (p *Proxy) guard(typ byte, body []byte, c *client) readonly.Verdict {
	var sql []byte
	switch typ {
	case 'Q':
		sql = queryText(body)
	case 'P':
		_, rest, ok := cstring(body)
		if !ok {
			return readonly.Verdict{}
		}
		sql = queryText(rest)
	case 'B':
		_, rest, _ := cstring(body)
		name, _, ok := cstring(rest)
		st := c.stmt(name)
		if !ok || name == "" || st == nil {
			return readonly.Verdict{}
		}
		sql = queryText(st.parse)
	default:
		return readonly.Verdict{}
	}
	if startsWithSelect(sql) {
		c.roBuf = numbersToZero(c.roBuf[:0], sql)
		sql = c.roBuf
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

// numbersToZero copies sql with every numeric literal's digits replaced by
// 0, so queries that differ only in numbers ("WHERE aid = 4711", pgbench's
// and many ORMs' point reads) share one classifier cache entry. Only runs
// standing alone are replaced: digits touching a word (t2, $1, 1e5, 0x1F)
// or a fraction point are kept. In a SELECT neither
// validity nor read/write-ness can change with a number's value.
func numbersToZero(dst, sql []byte) []byte {
	for i := 0; i < len(sql); {
		j := i
		for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
			j++
		}
		// A run of digits standing alone: not inside a word (t2, $1), not
		// followed by one (00B0, 1e5, 0x1F) or by a fraction point.
		if j > i && (i == 0 || !isWordByte(sql[i-1])) && (j == len(sql) || !isWordByte(sql[j]) && sql[j] != '.') {
			dst = append(dst, '0')
			i = j
			continue
		}
		if j == i {
			j++
		}
		dst = append(dst, sql[i:j]...)
		i = j
	}
	return dst
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
