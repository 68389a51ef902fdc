package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
	"strings"

	"github.com/pgguard/pgguard/cache/analyze"
)

// Session is the client a statement comes from, as far as its results
// depend on it.
type Session struct {
	// Database and User are what the client connected to and as.
	Database, User string
	// Upstream identifies the database the statements run on (the
	// server's host, port and database name): generations, and so
	// invalidations, are per upstream, shared by every name that reaches
	// it. Empty: Database.
	Upstream string
	// Application is its application_name (rules match on it; it is not
	// part of the key).
	Application string
	// Settings are every session parameter the client chose, at startup
	// (options=-c included) or by SET since: search_path, role,
	// session_authorization, TimeZone, DateStyle, client_encoding,
	// extra_float_digits, ... A Value may be anything that identifies the
	// value, such as the SQL that establishes it. All but application_name
	// go into the key, in any order.
	Settings []Setting
}

// Setting is one session parameter.
type Setting struct {
	Name, Value string
}

// Statement is one execution the proxy may answer from the cache.
type Statement struct {
	// Text is the simple Query's text (with its literals), or the text of
	// the prepared statement an extended-protocol Bind names. Not retained.
	Text []byte
	// Extended: the execution came as Parse/Bind/Execute. The fields below
	// are for Extended only.
	Extended bool
	// Described: the client sent Describe for the portal, so the reply
	// holds a RowDescription (a simple Query's always does).
	Described bool
	// ParamTypes are the parameter type OIDs the statement's Parse gave
	// (0 for unspecified): they decide how values are read.
	ParamTypes []uint32
	// ParamFormats, Params and ResultFormats are the Bind's, as sent: a
	// nil element of Params is NULL.
	ParamFormats  []int16
	Params        [][]byte
	ResultFormats []int16
}

// Key identifies one cacheable execution: what Get looks up and Put stores.
// It carries what Get observed for the Put that follows; use one Key for
// one Get and at most one Put, from one goroutine.
type Key struct {
	rule      *Rule
	digest    [32]byte
	described bool // the reply holds a RowDescription
	db        string
	fields    []string // generation fields: epoch, reset, the database's, one per table read
	tables    []string

	// Set by Get for Put.
	observed bool     // Get read the generations
	fleet    bool     // ... from Redis (else from this instance)
	gens     []uint64 // their values, aligned with fields
}

// Rule returns the rule that made the statement cacheable.
func (k *Key) Rule() *Rule { return k.rule }

// MaxBytes is the largest reply the key's rule stores (max_entry_bytes).
func (k *Key) MaxBytes() int { return k.rule.maxBytes }

// Tables returns the tables whose writes invalidate the entry (sorted).
func (k *Key) Tables() []string { return k.tables }

// Generation fields. The epoch is a random value created with the
// generations, so that generations lost (Redis evicting or restarting
// empty) never match generations remembered in an entry; reset is bumped by
// Reset; then one field for the whole database and one per table.
const (
	fieldEpoch = "epoch"
	fieldReset = "reset"
	fieldAll   = "*"
)

// tableField names the generation of a table of db (fieldAll: of all).
func tableField(db, table string) string { return "t\x00" + db + "\x00" + table }

// keyVersion changes whenever the digest's composition does.
const keyVersion = "pgguard-cache-key-v2\x00"

// newKey composes the key of st for s under rule r; ok is false when the
// execution may not be cached (a bind value reading as the current time,
// format codes the server would refuse).
func newKey(r *Rule, s *Session, st *Statement, info *analyze.Info) (*Key, bool) {
	h := sha256.New()
	h.Write([]byte(keyVersion))
	proto := byte('Q')
	if st.Extended {
		proto = 'E'
	}
	h.Write([]byte{proto})
	writeString(h, s.Database)
	writeString(h, s.User)
	writeSettings(h, s.Settings)
	writeUint(h, info.Fingerprint)
	writeBytes(h, st.Text)
	described := !st.Extended || st.Described
	if described {
		h.Write([]byte{'T'})
	}
	if st.Extended {
		formats, ok := paramFormats(st.ParamFormats, len(st.Params))
		if !ok {
			return nil, false
		}
		writeUint(h, uint64(len(st.ParamTypes)))
		for _, t := range st.ParamTypes {
			writeUint(h, uint64(t))
		}
		writeUint(h, uint64(len(st.Params)))
		for i, p := range st.Params {
			writeUint(h, uint64(formats[i]))
			if p == nil {
				writeUint(h, 1<<63) // NULL, distinct from every length
				continue
			}
			if formats[i] == 0 && analyze.IsTimeLiteral(p) {
				return nil, false // 'now' as a date or time: the answer moves
			}
			writeBytes(h, p)
		}
		rf := st.ResultFormats
		if len(rf) == 0 {
			rf = []int16{0} // no codes: all text, as one code 0 says
		}
		writeUint(h, uint64(len(rf)))
		for _, f := range rf {
			writeUint(h, uint64(uint16(f)))
		}
	}
	up := s.Upstream
	if up == "" {
		up = s.Database
	}
	k := &Key{rule: r, db: up, tables: tablesOf(r, info), described: described}
	h.Sum(k.digest[:0])
	k.fields = make([]string, 0, 3+len(k.tables))
	k.fields = append(k.fields, fieldEpoch, fieldReset, tableField(up, fieldAll))
	for _, t := range k.tables {
		k.fields = append(k.fields, tableField(up, t))
	}
	return k, true
}

// paramFormats expands Bind's parameter format codes to one per parameter:
// none means all text, one applies to all (PostgreSQL docs, "Bind").
// Another count, or a code other than 0 and 1, is refused by the server.
func paramFormats(codes []int16, n int) ([]int16, bool) {
	switch len(codes) {
	case n:
	case 0, 1:
		c := int16(0)
		if len(codes) == 1 {
			c = codes[0]
		}
		codes = make([]int16, n)
		for i := range codes {
			codes[i] = c
		}
	default:
		return nil, false
	}
	for _, c := range codes {
		if c != 0 && c != 1 {
			return nil, false
		}
	}
	return codes, true
}

// tablesOf is what the entry depends on: the tables the statement reads and
// the rule's tables, sorted and unique.
func tablesOf(r *Rule, info *analyze.Info) []string {
	if len(r.tables) == 0 {
		return info.Reads
	}
	t := append(slices.Clone(info.Reads), r.tables...)
	slices.Sort(t)
	return slices.Compact(t)
}

// writeSettings hashes every setting but application_name, sorted by name
// (names ignore case, as in PostgreSQL).
func writeSettings(h hash.Hash, settings []Setting) {
	s := make([]Setting, 0, len(settings))
	for _, e := range settings {
		name := strings.ToLower(e.Name)
		if name != "application_name" {
			s = append(s, Setting{name, e.Value})
		}
	}
	slices.SortFunc(s, func(a, b Setting) int { return strings.Compare(a.Name, b.Name) })
	writeUint(h, uint64(len(s)))
	for _, e := range s {
		writeString(h, e.Name)
		writeString(h, e.Value)
	}
}

// Every variable-length part is length-prefixed, so no two different
// inputs hash the same bytes.
func writeUint(h hash.Hash, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	h.Write(b[:])
}

func writeBytes(h hash.Hash, b []byte) {
	writeUint(h, uint64(len(b)))
	h.Write(b)
}

func writeString(h hash.Hash, s string) {
	writeUint(h, uint64(len(s)))
	h.Write([]byte(s))
}
