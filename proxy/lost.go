package proxy

import (
	"fmt"
	"strings"
)

// What a client is told when its server connection ends under it. It must
// never hear "rolled back" about work that may have committed: a COMMIT
// whose reply was lost, or a statement run outside a transaction block (its
// own implicit transaction commits as it ends), has an unknown outcome, as
// PostgreSQL drivers say (SQLSTATE 08007 transaction_resolution_unknown).
// pgguard never sends such a statement again on its own.

// codeResolutionUnknown is 08007 transaction_resolution_unknown.
const codeResolutionUnknown = "08007"

// lostOutcome is what became of a client's work on a server connection that ended.
type lostOutcome uint8

const (
	lostNothing    lostOutcome = iota // no transaction open, nothing running
	lostRolledBack                    // a transaction was open and nothing sent could have committed it
	lostUnknown                       // something sent may have committed
)

// lostOutcome judges, from what b still owed when it ended (mu held,
// before the queue is cleared), whether the client's work may have
// committed. b.txStatus is the status before the oldest outstanding
// request. A request could commit when it started outside a transaction
// block, or when its text (known when the query log is on) may end one;
// without the text it could.
func (b *backend) lostOutcome() lostOutcome {
	running := false
	for _, r := range b.queue.outstanding() {
		if !r.forwarded() {
			continue // pgguard's own sync or reset commits nothing of the client's
		}
		running = true
		if b.txStatus == 'I' || r.text == "" || mayEndTransaction(r.text) {
			return lostUnknown
		}
	}
	if running || b.open || b.txStatus != 'I' {
		return lostRolledBack
	}
	return lostNothing
}

// endWords are the words of statements that may commit a transaction:
// COMMIT and END, PREPARE TRANSACTION, and procedures and DO blocks (which
// may COMMIT inside). A text with none of them cannot.
var endWords = []string{"commit", "end", "prepare", "call", "do"}

// mayEndTransaction reports whether text holds one of endWords as a word,
// ignoring case (a false positive only makes the outcome "unknown").
func mayEndTransaction(text string) bool {
	for i := 0; i < len(text); {
		for i < len(text) && !isWordByte(text[i]) {
			i++
		}
		j := i
		for j < len(text) && isWordByte(text[j]) {
			j++
		}
		for _, e := range endWords {
			if strings.EqualFold(text[i:j], e) {
				return true
			}
		}
		i = j
	}
	return false
}

// lostError is the FATAL error of a client whose server connection to host
// ended: how (why, e.g. "was lost") and what became of its work.
func lostError(db *database, host, why string, o lostOutcome) *Error {
	prefix := fmt.Sprintf("server connection to %s for database %q %s", host, db.name, why)
	switch o {
	case lostUnknown:
		return &Error{Severity: "FATAL", Code: codeResolutionUnknown,
			Message: prefix + "; a statement was sent and its reply never came: whether it committed is unknown; pgguard did not retry it",
			Hint:    "check whether the transaction's changes are there before running it again"}
	case lostRolledBack:
		return fatalf(codeConnectionFailure, "%s; the open transaction was rolled back", prefix)
	}
	return fatalf(codeConnectionFailure, "%s; no transaction was open", prefix)
}

// noteFatal remembers the client a FATAL ErrorResponse of the server goes
// to (mu held, on the pump): to, unless pgguard replaces the error (repl).
func (b *backend) noteFatal(to *client, repl *Error) {
	if b.serverEnded && to != nil && repl == nil && b.fatalTo == nil {
		b.fatalTo = to
	}
}

// tellLost ends client c, whose server connection ended (died, on the
// pump). When the server's own FATAL went to c (told; pg_terminate_backend,
// a compute's suspend, a shutdown), c reads it and then end-of-file, as on
// a direct connection, with nothing after it; else pgguard's error (lost)
// says what became of its work. A client whose work may have committed
// (08007) always hears pgguard's word on it. The socket is closed at once
// either way, so a driver's idle-connection check sees it without a query.
func (b *backend) tellLost(c *client, err error, lost *Error, told bool) {
	if !told {
		c.serverLost(b, err, lost)
		return
	}
	b.fwd.flush() // the FATAL, if a read held it back (rerun.go)
	lost.Cause = err
	c.closing.CompareAndSwap(nil, lost) // a send under way does not try another server
	c.conn.Close()
}
