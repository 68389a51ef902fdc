// Package querylog times and logs every query pgguard relays. The proxy hands
// a Record to Logger.Log on its hot path; Log never blocks and never parses.
// One writer goroutine fingerprints the query text with pg_query (literals
// become $n), keeps per-shape statistics with p50/p95/p99 from a DDSketch,
// writes one JSON line per query and warns on the main log about slow ones.
// Raw literals and parameter values reach the log only with log_parameters.
package querylog

import (
	"encoding/hex"
	"strings"
	"time"
	"unicode/utf8"
)

// Record is one finished query (a simple Query, or an extended-protocol
// execution up to its Sync), passed by value to Logger.Log. Its strings and
// Params must not be modified after Log: the proxy copies them out of its
// read buffers (see Logger.Intern for Query).
type Record struct {
	// Time is when the query reached the server (after any pool wait).
	Time time.Time
	// Database is the database name the client connected to.
	Database string
	// User is the client's user name.
	User string
	// Application is the client's application_name.
	Application string
	// ClientAddr is the client's address.
	ClientAddr string
	// Upstream is "primary" or "fallback".
	Upstream string
	// Query is the raw text as sent (for the extended protocol: the Parse text).
	Query string
	// Params are the Bind parameter values in text or binary form, nil for
	// NULL. The proxy fills them only when log_parameters is on.
	Params [][]byte
	// Duration runs from Time to the query's completion, excluding pool wait.
	Duration time.Duration
	// Wait is the time spent queued for a server connection.
	Wait time.Duration
	// Rows is the row count from the command tag (or DataRows seen).
	Rows int64
	// Tag is the command tag, e.g. "SELECT 3".
	Tag string
	// SQLState is the ErrorResponse code, empty on success.
	SQLState string
	// Error is the ErrorResponse primary message (never its Detail, which
	// carries key values), empty on success.
	Error string
	// Extended is true for the extended query protocol (Parse/Bind/Execute).
	Extended bool
	// Cache is "hit" when the result cache answered the query (Upstream is
	// then empty: no server ran it).
	Cache string
	// Client is the client connection's id (as in SHOW CLIENTS), 0 when
	// unknown: the advisor follows one client's queries with it (N+1 loops).
	Client uint32
	// TxStatus is the transaction status of the ReadyForQuery that ended
	// the query: 'I' idle, 'T' in a transaction block, 'E' in a failed one;
	// 0 when unknown (read as 'I').
	TxStatus byte
	// Args is a hash of the query's literal values and Bind parameters
	// (with a per-process seed, never reversible), 0 when unknown: queries
	// of one shape with equal Args would share a result cache entry.
	Args uint64
}

// txString returns TxStatus for the log: "" for idle or unknown.
func (r *Record) txString() string {
	switch r.TxStatus {
	case 'T':
		return "T"
	case 'E':
		return "E"
	}
	return ""
}

// argsString returns Args as 16 hex digits, "" when 0.
func (r *Record) argsString() string {
	if r.Args == 0 {
		return ""
	}
	return fpHex(r.Args)
}

// failed reports whether the query ended in an error.
func (r *Record) failed() bool { return r.SQLState != "" || r.Error != "" }

// paramValues renders Params for JSON: nil for NULL, the text for valid
// UTF-8, "\x" and hex for binary values.
func paramValues(params [][]byte) []any {
	out := make([]any, len(params))
	for i, p := range params {
		switch {
		case p == nil:
			out[i] = nil
		case utf8.Valid(p):
			out[i] = string(p)
		default:
			out[i] = `\x` + hex.EncodeToString(p)
		}
	}
	return out
}

// safeError returns an error message fit for the log without
// log_parameters: data exceptions (class 22) and syntax errors (42601) quote
// the offending value or token, so quoted text in them is masked.
func safeError(sqlstate, msg string) string {
	if !strings.HasPrefix(sqlstate, "22") && sqlstate != "42601" {
		return msg
	}
	if strings.IndexByte(msg, '"') < 0 {
		return msg
	}
	var b strings.Builder
	in := false
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		switch {
		case c == '"':
			if !in {
				b.WriteString(`"?`)
			}
			in = !in
			if !in {
				b.WriteByte('"')
			}
		case !in:
			b.WriteByte(c)
		}
	}
	return b.String()
}
