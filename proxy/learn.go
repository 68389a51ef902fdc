package proxy

import (
	"bytes"
	"encoding/binary"
	"regexp"
	"slices"
	"strings"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/pgguard/pgguard/cache/analyze"
)

// Learning a session's state from its server. Some statements may change
// session settings where their text does not show it: a function that is
// not built in (a PL/pgSQL function calling set_config(..., false)), DO,
// CALL, a set_config whose arguments are computed. In transaction mode,
// after the unit of work that ran one ends, and before the server goes to
// another client, the pump asks the server on the connection already open
// (one round trip, only after such units; the client's next query is
// pipelined behind it) which settings the session holds, and what else it
// holds that cannot move (temporary tables and other objects in pg_temp, session advisory locks, SQL
// prepared statements, cursors WITH HOLD, LISTEN). The answer becomes the
// client's tracked parameters (sessionWant.custom, from which the
// parameter sync and the cache key derive), or pins the client.
//
// Custom settings without a definition (placeholders such as app.tenant)
// are not listed in pg_settings: their names come from the client's and
// the server's tracked ones, the statement's text, and the string
// literals and SET commands in the source of the database's own functions.
// A name built at run time ('app.' || x) is not found: documented.

// learnQuery asks the server for its session-level settings and for state
// that pins (one row with a NULL name). %s is the array of candidate
// placeholder names.
const learnQuery = `SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'
UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM (SELECT DISTINCT pg_catalog.lower(n) AS n FROM pg_catalog.unnest(%s::text[] || ARRAY(
 SELECT coalesce(m[1], m[2]) FROM pg_catalog.pg_proc p, pg_catalog.regexp_matches(p.prosrc,
  $pgg$'([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)'|set\s+(?:session\s+)?([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)$pgg$, 'gi') m
 WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace AND p.pronamespace <> 'information_schema'::pg_catalog.regnamespace AND p.prolang > 13)) n) c
 WHERE n NOT IN (SELECT pg_catalog.lower(name) FROM pg_catalog.pg_settings) AND pg_catalog.current_setting(n, true) <> ''
UNION ALL SELECT NULL, CASE
 WHEN EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) THEN 'temporary table'
 WHEN EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema())
  OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema())
  OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace = pg_catalog.pg_my_temp_schema()) THEN 'temporary object'
 WHEN EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) THEN 'session advisory lock'
 WHEN EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'SQL PREPARE'
 WHEN EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'cursor WITH HOLD'
 WHEN EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) THEN 'LISTEN' END`

// learnSQL is the learn query for b's linked client c (mu held).
func learnSQL(c *client, b *backend) string {
	names := slices.Clone(b.learnNames)
	for _, set := range [2]kvs{c.want.custom, b.custom} {
		for _, e := range set {
			names = append(names, e.k)
		}
	}
	var sb strings.Builder
	sb.WriteString("ARRAY[")
	for i, n := range names {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(quoteLiteral(n))
	}
	sb.WriteString("]")
	return strings.Replace(learnQuery, "%s", sb.String(), 1)
}

// startLearn sends the learn query for b's linked client, from the pump
// at the ReadyForQuery that ended the unit (mu held); held is that
// ReadyForQuery when it waits for the commit position (replica.go), which
// is asked for once the session is learned. Nothing is
// outstanding and the client has sent nothing since (whoever writes to a
// server pushes its request first, under mu), so this write cannot
// overtake or interleave with the client's; and everything sent before was
// read by the server, so the socket has room for it.
func (b *backend) startLearn(held []byte) bool {
	c := b.client
	sql := learnSQL(c, b)
	b.learnDue, b.learnNames = false, b.learnNames[:0]
	b.queue.push(request{kind: reqLearn, held: held, inflightQuery: inflightQuery{pendingQuery: pendingQuery{fill: &cacheFill{max: learnMax}}, start: time.Now()}})
	b.unnamedOwner = nil // a Query destroys the unnamed statement
	if _, err := b.out.Write(appendQuery(nil, sql)); err != nil {
		return false // the pump sees the connection end
	}
	return true
}

// learnMax bounds the learn query's reply; past it the client is pinned.
const learnMax = 1 << 20

// learned applies the learn query's reply to b's linked client (mu held):
// its settings become the client's tracked parameters, which the server
// now holds; state that cannot move, or a reply pgguard could not read,
// pins it.
func (b *backend) learned(f *cacheFill, failed bool) {
	c := b.client
	if c == nil || c.pinned.Load() {
		return
	}
	if failed || f.bad {
		c.pin("session state unknown (pgguard could not read it from the server)")
		return
	}
	var custom kvs
	why := ""
	for msg := f.buf; len(msg) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(msg[1:]))
		if n > len(msg) {
			break
		}
		if msg[0] == 'D' {
			name, value, isNull := learnedRow(msg[5:n])
			switch {
			case isNull:
				why = value
			case reportedParams[name] || strings.HasPrefix(name, "transaction_"):
				// ParameterStatus tracks these; the others are the transaction's.
			default:
				custom.set(strings.ToLower(name), setConfigSQL(name, value))
			}
		}
		msg = msg[n:]
	}
	if why != "" {
		c.pin(why)
		return
	}
	c.want.custom = custom
	c.wantGen.Add(1)
	b.custom = slices.Clone(custom)
	b.profile = c.profile()
	c.p.metrics.SessionsLearned.Inc()
}

// learnedRow reads a DataRow of two text columns; a NULL first column is
// the row saying what pins.
func learnedRow(body []byte) (name, value string, pin bool) {
	if len(body) < 2 || binary.BigEndian.Uint16(body) != 2 {
		return "", "", false
	}
	var cols [2]string
	var null [2]bool
	p := body[2:]
	for i := range cols {
		if len(p) < 4 {
			return "", "", false
		}
		l := int(int32(binary.BigEndian.Uint32(p)))
		p = p[4:]
		if l < 0 {
			null[i] = true
			continue
		}
		if l > len(p) {
			return "", "", false
		}
		cols[i], p = string(p[:l]), p[l:]
	}
	return cols[0], cols[1], null[0]
}

// pin keeps c on its server for the rest of its session (b.mu held).
func (c *client) pin(reason string) {
	if c.pooling != poolTransaction || c.pinned.Load() {
		return
	}
	c.pinReason = reason
	c.pinned.Store(true)
	c.p.metrics.ClientsPinned.WithLabelValues(reason).Inc()
	c.p.log.Info("client pinned to its server connection for the rest of its session",
		"client", c.id, "application_name", c.app, "reason", reason)
}

// settingNameRe finds setting names a text mentions: a quoted 'x.y' (as
// set_config takes it) or SET x.y, as the learn query does in function
// bodies.
var settingNameRe = regexp.MustCompile(`(?i)'([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)'|\bset\s+(?:session\s+)?([a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*)`)

// settingNames returns the custom setting names sql mentions, lower case.
func settingNames(sql string) []string {
	var names []string
	for _, m := range settingNameRe.FindAllStringSubmatch(sql, -1) {
		n := strings.ToLower(m[1] + m[2])
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// unknownCall returns a call in tree that may change session state where
// the text does not show it: "set_config()" for a set_config whose
// setting name is computed (no question to the server can find it), else
// the first function that is not built in, as "name()"; or "".
func unknownCall(tree *pg_query.ParseResult) string {
	first, computed := "", false
	for _, raw := range tree.Stmts {
		visitNodes(raw.ProtoReflect(), func(m proto.Message) {
			f, ok := m.(*pg_query.FuncCall)
			if !ok {
				return
			}
			name, schema := funcName(f), ""
			if parts := f.GetFuncname(); len(parts) > 1 {
				schema = strings.ToLower(parts[len(parts)-2].GetString_().GetSval())
			}
			switch {
			case name == "set_config" && (schema == "" || schema == "pg_catalog"):
				if args := f.GetArgs(); len(args) > 0 && args[0].GetAConst().GetSval() == nil {
					computed = true
				}
			case schema != "" && schema != "pg_catalog" || !analyze.IsBuiltin(name):
				if first == "" {
					first = name + "()"
				}
			}
		})
	}
	if computed {
		return "set_config()"
	}
	return first
}

// callsFunction is mayAffectSession's cheap filter for a call of a
// function that is not built in: a word before "(" that is neither a
// keyword nor a pg_catalog function's name, nor a table's (INSERT INTO
// t (...)), or a quoted or schema-qualified name. Strings and comments are
// not skipped: a false positive costs one parse, cached by text. Texts
// without "(" cost one IndexByte pass.
func callsFunction(sql []byte) bool {
	var low [64]byte
	for i := 0; ; i++ {
		j := bytes.IndexByte(sql[i:], '(')
		if j < 0 {
			return false
		}
		i += j
		end := skipSpaceBack(sql, i)
		start := end
		for start > 0 && isWordByte(sql[start-1]) {
			start--
		}
		word := sql[start:end]
		switch {
		case start == end:
			if end > 0 && sql[end-1] == '"' {
				return true // a quoted name
			}
			continue
		case word[0] >= '0' && word[0] <= '9' || len(word) > len(low):
			continue
		case start > 0 && sql[start-1] == '.':
			return true // schema-qualified: parse to see which schema
		}
		for k, ch := range word {
			low[k] = ch | 0x20*byte(b2i(ch >= 'A' && ch <= 'Z'))
		}
		w := low[:len(word)]
		if notCalls[string(w)] || analyze.IsBuiltinBytes(w) { // no allocation
			continue
		}
		if prev := prevWord(sql, start, &low); tableBefore[string(prev)] {
			continue
		}
		return true
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func skipSpaceBack(sql []byte, i int) int {
	for i > 0 && (sql[i-1] == ' ' || sql[i-1] == '\t' || sql[i-1] == '\n' || sql[i-1] == '\r') {
		i--
	}
	return i
}

// prevWord returns the word before sql[:end], lower case, in buf.
func prevWord(sql []byte, end int, buf *[64]byte) []byte {
	end = skipSpaceBack(sql, end)
	start := end
	for start > 0 && isWordByte(sql[start-1]) {
		start--
	}
	if end-start > len(buf) {
		return nil
	}
	for k, ch := range sql[start:end] {
		buf[k] = ch | 0x20*byte(b2i(ch >= 'A' && ch <= 'Z'))
	}
	return buf[:end-start]
}

// notCalls are words that come before "(" without calling a function:
// keywords, and type names with modifiers that are not function names.
var notCalls = toSet(`in values exists any all some cast row over filter within as using on and or not
	where select from join when then else case by conflict lateral is like ilike between distinct set
	returning into table coalesce greatest least nullif trim array except union intersect limit offset
	having with materialized recursive if grouping cube rollup sets partition escape only check unique
	key references primary foreign default decimal dec char character varying float precision
	window range rows groups do update insert delete`)

// tableBefore are words after which "name (" is a table and its columns.
var tableBefore = toSet(`into table references on exists update view only`)

func toSet(words string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(words) {
		m[w] = true
	}
	return m
}
