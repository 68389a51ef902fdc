package proxy

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"sync"
	"unique"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgguard/pgguard/cache/analyze"
)

// Session state under transaction pooling: a client's session parameters
// follow it from server to server, and statements whose effect outlives the
// transaction pin the client to its server.
//
// Parameters come in two kinds. Reported ones (PostgreSQL sends
// ParameterStatus when they change: application_name, TimeZone, DateStyle,
// IntervalStyle, client_encoding, standard_conforming_strings) are tracked
// from those messages. Others (search_path, and anything given with
// options=-c at startup or SET by the client) are tracked as the SQL that
// establishes them. Before a client runs on a server whose values differ,
// pgguard sends one Query that makes them match and swallows its replies.

// reportedNames are the settable parameters PostgreSQL reports (docs
// 55.2.7); a slice to walk on every link, a set to look up.
var reportedNames = []string{"application_name", "client_encoding", "DateStyle",
	"IntervalStyle", "TimeZone", "standard_conforming_strings", "default_transaction_read_only"}

var reportedParams = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range reportedNames {
		m[k] = true
	}
	return m
}()

// readOnlyParam is forced on on every server while the read-only switch is
// on, so a write hidden in a function fails at the server too.
const readOnlyParam = "default_transaction_read_only"

// startupSkip are startup keys that are not session parameters.
var startupSkip = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// sessionWant is what a client's session parameters should be. Small
// slices, not maps: thousands of idle sessions each hold one.
type sessionWant struct {
	reported kvs // value per reported parameter the client chose
	custom   kvs // SQL establishing each other parameter it chose
	// As at startup: what RESET, RESET ALL and DISCARD ALL go back to. A
	// server's own reset values are pgguard's, so pgguard puts these back.
	startupReported kvs
	startupCustom   kvs
	// announce: a RESET went back to startup values the server did not
	// have; the sync that sets them must let the client see their
	// ParameterStatus.
	announce bool
}

type kv struct{ k, v string }

// kvs is a tiny string map.
type kvs []kv

func (s kvs) get(k string) (string, bool) {
	for _, e := range s {
		if e.k == k {
			return e.v, true
		}
	}
	return "", false
}

func (s *kvs) set(k, v string) {
	for i := range *s {
		if (*s)[i].k == k {
			(*s)[i].v = v
			return
		}
	}
	*s = append(*s, kv{k, v})
}

func (s *kvs) del(k string) {
	for i := range *s {
		if (*s)[i].k == k {
			*s = append((*s)[:i], (*s)[i+1:]...)
			return
		}
	}
}

// newSessionWant takes the client's startup parameters, including options=-c.
func newSessionWant(params map[string]string) sessionWant {
	var w sessionWant
	set := func(k, v string) {
		if canon, ok := canonicalReported(k); ok {
			w.reported.set(canon, v)
			return
		}
		w.custom.set(strings.ToLower(k), setConfigSQL(k, v))
	}
	for k, v := range params {
		if !startupSkip[k] && !strings.HasPrefix(k, "_pq_.") {
			set(k, v)
		}
	}
	for k, v := range parseOptions(params["options"]) {
		set(k, v)
	}
	w.startupCustom = append(kvs(nil), w.custom...)
	w.startupReported = append(kvs(nil), w.reported...)
	return w
}

// apply follows one committed parameter change (see effect.params) and
// reports whether the server no longer has the client's values: a RESET
// gave it the server's startup value where the client has one of its own.
// server is the server's custom parameters, kept in step.
func (w *sessionWant) apply(e kv, server *kvs) (resync bool) {
	switch _, reported := reportedParams[e.k]; {
	case e.k == "": // RESET ALL, DISCARD ALL
		w.custom = append(w.custom[:0], w.startupCustom...)
		*server = nil
		for _, s := range w.startupReported {
			w.reported.set(s.k, s.v)
		}
		return len(w.startupCustom) > 0 || len(w.startupReported) > 0
	case e.v != "":
		w.custom.set(e.k, e.v)
		server.set(e.k, e.v)
	case reported: // reported parameters otherwise follow ParameterStatus
		if v, ok := w.startupReported.get(e.k); ok {
			w.reported.set(e.k, v)
			return true
		}
	default:
		server.del(e.k)
		if v, ok := w.startupCustom.get(e.k); ok {
			w.custom.set(e.k, v)
			return true
		}
		w.custom.del(e.k)
	}
	return false
}

func canonicalReported(k string) (string, bool) {
	for _, name := range reportedNames {
		if strings.EqualFold(name, k) {
			return name, true
		}
	}
	return "", false
}

// parseOptions reads the startup "options" value: "-c name=value" and
// "--name=value" switches separated by spaces, with backslash escapes
// (PostgreSQL docs 20.1.4).
func parseOptions(s string) map[string]string {
	var words []string
	var cur strings.Builder
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc = true
		case r == ' ' || r == '\t':
			if cur.Len() > 0 {
				words = append(words, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		words = append(words, cur.String())
	}
	out := map[string]string{}
	for i := 0; i < len(words); i++ {
		var kv string
		switch {
		case words[i] == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(words[i], "-c"):
			kv = words[i][2:]
		case strings.HasPrefix(words[i], "--"):
			kv = words[i][2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[strings.ReplaceAll(k, "-", "_")] = v
		}
	}
	return out
}

// setConfigSQL is SQL that sets a parameter to a raw string value with the
// semantics of a startup parameter.
func setConfigSQL(k, v string) string {
	return "SELECT pg_catalog.set_config(" + quoteLiteral(k) + ", " + quoteLiteral(v) + ", false)"
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// syncSQL returns the Query that makes server b match client c's session
// parameters, or "" when they already do (b.mu held; the caller that sends
// it records b's custom parameters as c's).
func syncSQL(c *client, b *backend, readOnly bool) string {
	var sb strings.Builder
	add := func(sql string) {
		if sb.Len() > 0 {
			sb.WriteString("; ")
		}
		sb.WriteString(sql)
	}
	if readOnly && b.params[readOnlyParam] != "on" {
		add(setConfigSQL(readOnlyParam, "on"))
	}
	for _, e := range c.want.reported {
		if readOnly && e.k == readOnlyParam {
			continue
		}
		if b.params[e.k] != e.v {
			add(setConfigSQL(e.k, e.v))
		}
	}
	// Reported parameters the client never chose get the server's defaults.
	for _, k := range reportedNames {
		if _, chosen := c.want.reported.get(k); chosen || readOnly && k == readOnlyParam {
			continue
		}
		if def, ok := b.initial[k]; ok && b.params[k] != def {
			add(setConfigSQL(k, def))
		}
	}
	for _, e := range c.want.custom {
		if readOnly && (e.k == "transaction_read_only" || e.k == readOnlyParam) {
			continue // the client's own read-write wish does not count here
		}
		if v, _ := b.custom.get(e.k); v != e.v {
			add(e.v)
		}
	}
	for _, e := range b.custom {
		if _, ok := c.want.custom.get(e.k); !ok {
			add("RESET " + quoteIdent(e.k))
		}
	}
	return sb.String()
}

// sessionKnown reports whether what pgguard knows of c's session (want,
// its prepared statements) is all the session is: in transaction mode,
// where every statement whose effect pgguard cannot follow pins the client
// (effect.pin), a client not pinned. A session-mode client's server keeps
// whatever the client did to it (temporary objects, settings changed
// inside functions), so its state is not known exactly. Only a known
// session may share answers (the result cache); an unknown one is never
// handed on to another client either (it keeps its server, which is reset
// with DISCARD ALL when it leaves).
func (c *client) sessionKnown() bool {
	return c.pooling == poolTransaction && !c.pinned.Load()
}

// profile is c's session parameters (want) as one comparable value,
// rebuilt when they change: a server synced for a client is in sync for
// every client with the same values, so a hand-over between alike clients
// costs a comparison. Built and read under the lock of c's server, as
// want is.
func (c *client) profile() unique.Handle[string] {
	if gen := c.wantGen.Load(); c.prof == (unique.Handle[string]{}) || c.profGen != gen {
		c.prof, c.profGen = unique.Make(c.want.key()), gen
	}
	return c.prof
}

// key is the parameters a sync establishes, in a canonical order.
func (w *sessionWant) key() string {
	var sb strings.Builder
	for i, set := range [2]kvs{w.reported, w.custom} {
		sorted := slices.SortedFunc(slices.Values(set), func(a, b kv) int { return strings.Compare(a.k, b.k) })
		for _, e := range sorted {
			sb.WriteString(e.k)
			sb.WriteByte(0)
			sb.WriteString(e.v)
			sb.WriteByte(0)
		}
		if i == 0 {
			sb.WriteByte(1) // reported | custom
		}
	}
	return sb.String()
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// effect is what a statement text does to session state.
type effect struct {
	pin string // why the client must keep its server, or ""
	// params are its parameter changes in order: {name, SQL} sets a
	// non-reported parameter, {name, ""} resets one (reported or not),
	// {"", ""} is RESET ALL.
	params     kvs
	dropsStmts bool // DISCARD ALL or DEALLOCATE ALL (followed by its CommandComplete)
	// dealloc is the name a text that is one "DEALLOCATE name" removes.
	dealloc string
	// prepare is the name a text that is one "PREPARE name AS query"
	// creates, and prepareParse the Parse body that query amounts to
	// (text, no parameter types) for the statement table.
	prepare      string
	prepareParse []byte
	// schema: it changes the schema in a way that can make prepared
	// statements stale (ALTER, DROP, CREATE OR REPLACE, ...; see stale.go).
	schema bool
	// learn says why the statement may change session state where its
	// text does not show it (a function that is not built in, DO, CALL, a
	// set_config pgguard cannot follow): in transaction mode pgguard asks
	// the server after its unit of work (learn.go). names are the setting
	// names the text mentions, for that question.
	learn string
	names []string
}

// effects caches statement effects by text; only texts that mention a
// session-level keyword are parsed at all.
var effects = struct {
	sync.Mutex
	m map[string]*effect
}{m: map[string]*effect{}}

const maxEffects = 4096

// sessionKeywords start statements with session-level effects (or name the
// functions that have them); a text with none of them is skipped unparsed.
var sessionKeywords = []string{"set", "reset", "discard", "deallocate", "prepare", "listen",
	"declare", "create", "advisory", "select", "alter", "drop", "do", "call"}

// statementEffect returns what sql does to session state, or nil.
func statementEffect(sql []byte) *effect {
	if !mayAffectSession(sql) {
		return nil
	}
	effects.Lock()
	e, ok := effects.m[string(sql)]
	effects.Unlock()
	if ok {
		return e
	}
	e = parseEffect(string(sql))
	effects.Lock()
	if len(effects.m) >= maxEffects {
		clear(effects.m)
	}
	effects.m[string(sql)] = e
	effects.Unlock()
	return e
}

// mayAffectSession is a cheap filter: does any statement in sql begin with a
// session-level keyword, or name an advisory lock function? "select" counts
// only with "advisory" or "into" in the text; set_config anywhere, in any
// case, always counts (a WITH, a FROM set_config(...), a subquery).
func mayAffectSession(sql []byte) bool {
	if hasSetConfig(sql) || callsFunction(sql) {
		return true
	}
	for i := 0; i < len(sql); {
		for i < len(sql) && (sql[i] == ' ' || sql[i] == '\n' || sql[i] == '\t' || sql[i] == '\r' || sql[i] == ';' || sql[i] == '(') {
			i++
		}
		j := i
		for j < len(sql) && (sql[j]|0x20 >= 'a' && sql[j]|0x20 <= 'z') {
			j++
		}
		word := sql[i:j]
		for _, kw := range sessionKeywords {
			if len(word) == len(kw) && bytes.EqualFold(word, []byte(kw)) {
				if kw != "select" || bytes.Contains(sql, []byte("advisory")) || intoTemp(sql) {
					return true
				}
			}
		}
		k := bytes.IndexByte(sql[j:], ';')
		if k < 0 {
			return false
		}
		i = j + k + 1
	}
	return false
}

// hasSetConfig reports whether sql names set_config, in any case: found by
// its underscore, which few texts have, so most texts cost one scan.
func hasSetConfig(sql []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(sql[i:], '_')
		if j < 0 {
			return false
		}
		i += j
		if i >= 3 && len(sql)-i >= 7 && hasPrefixFold(sql[i-3:], "set_config") {
			return true
		}
		i++
	}
}

// intoTemp reports whether sql holds both "into" and "temp", in any case
// (SELECT ... INTO TEMP), in one pass of 4-byte words: a letter's byte
// with 0x20 set is its lower case, and no other byte becomes one.
func intoTemp(sql []byte) bool {
	const (
		fold = 0x20202020
		into = 'i' | 'n'<<8 | 't'<<16 | 'o'<<24
		temp = 't' | 'e'<<8 | 'm'<<16 | 'p'<<24
	)
	seenInto, seenTemp := false, false
	for i := 0; i+4 <= len(sql); i++ {
		switch binary.LittleEndian.Uint32(sql[i:]) | fold {
		case into:
			seenInto = true
		case temp:
			seenTemp = true
		default:
			continue
		}
		if seenInto && seenTemp {
			return true
		}
	}
	return false
}

// hasPrefixFold reports whether b starts with word (lower case ASCII), in any case.
func hasPrefixFold(b []byte, word string) bool {
	if len(b) < len(word) {
		return false
	}
	for i := 0; i < len(word); i++ {
		if c := b[i]; c != word[i] && (c < 'A' || c > 'Z' || c|0x20 != word[i]) {
			return false
		}
	}
	return true
}

func parseEffect(sql string) *effect {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil // the server will report the syntax error
	}
	e := &effect{}
	lower := strings.ToLower(sql)
	if (strings.Contains(lower, "pg_advisory_lock") || strings.Contains(lower, "pg_try_advisory_lock")) && !strings.Contains(lower, "_xact_") {
		e.pin = "session advisory lock"
	}
	if strings.Contains(lower, "set_config") {
		// Calls pgguard can follow (a constant SELECT set_config(...)
		// target) are tracked; for any other, wherever it is, pgguard
		// learns the outcome from the server, or pins when it cannot
		// know which setting the call changes.
		calls, followed := countSetConfig(tree), 0
		for _, raw := range tree.Stmts {
			if sel := raw.Stmt.GetSelectStmt(); sel != nil {
				followed += e.setConfigCalls(sel)
			}
		}
		if calls > followed {
			e.learn = "set_config where pgguard cannot follow it"
		}
	}
	switch fn := unknownCall(tree); {
	case fn == "set_config()" && e.pin == "":
		e.pin = "set_config of a computed setting name"
	case fn != "" && e.learn == "":
		e.learn = "a call of " + fn
	}
	if why := tempObject(tree); e.pin == "" && why != "" {
		e.pin = why
	}
	for _, raw := range tree.Stmts {
		n := raw.Stmt
		switch {
		case n.GetDoStmt() != nil:
			e.learn = "DO block"
		case n.GetCallStmt() != nil:
			e.learn = "CALL"
		case n.GetVariableSetStmt() != nil:
			v := n.GetVariableSetStmt()
			if v.IsLocal {
				continue
			}
			switch v.Kind {
			case pg_query.VariableSetKind_VAR_RESET_ALL:
				e.params = append(e.params, kv{})
			case pg_query.VariableSetKind_VAR_SET_VALUE, pg_query.VariableSetKind_VAR_SET_CURRENT:
				if _, reported := canonicalReported(v.Name); reported || v.Name == "" {
					continue
				}
				one := &pg_query.ParseResult{Version: tree.Version, Stmts: []*pg_query.RawStmt{{Stmt: n}}}
				if text, err := pg_query.Deparse(one); err == nil {
					e.setCustom(strings.ToLower(v.Name), text)
				}
			case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_RESET:
				if name, reported := canonicalReported(v.Name); reported {
					e.params = append(e.params, kv{name, ""})
				} else {
					e.setCustom(strings.ToLower(v.Name), "")
				}
			}
		case n.GetDiscardStmt() != nil:
			switch n.GetDiscardStmt().Target {
			case pg_query.DiscardMode_DISCARD_ALL:
				e.params = append(e.params, kv{})
				e.dropsStmts = true
			}
		case n.GetDeallocateStmt() != nil:
			// DEALLOCATE name is of SQL PREPAREd statements, which pin, or
			// of one the client prepared with Parse (rewriter.deallocate).
			if d := n.GetDeallocateStmt(); d.Isall || d.Name == "" {
				e.dropsStmts = true
			} else if len(tree.Stmts) == 1 {
				e.dealloc = d.Name
			}
		case schemaChange(n):
			e.schema = true
		case n.GetPrepareStmt() != nil:
			e.pin = "SQL PREPARE"
			if p := n.GetPrepareStmt(); len(tree.Stmts) == 1 && p.Name != "" {
				one := &pg_query.ParseResult{Version: tree.Version, Stmts: []*pg_query.RawStmt{{Stmt: p.Query}}}
				if text, err := pg_query.Deparse(one); err == nil {
					e.prepare, e.prepareParse = p.Name, append([]byte(text), 0, 0, 0)
				}
			}
		case n.GetListenStmt() != nil:
			e.pin = "LISTEN"
		case n.GetDeclareCursorStmt() != nil && n.GetDeclareCursorStmt().Options&0x0020 != 0: // CURSOR_OPT_HOLD
			e.pin = "cursor WITH HOLD"
		case n.GetCreateStmt() != nil && n.GetCreateStmt().GetRelation().GetRelpersistence() == "t":
			e.pin = "temporary table"
		case n.GetCreateTableAsStmt() != nil && n.GetCreateTableAsStmt().GetInto().GetRel().GetRelpersistence() == "t":
			e.pin = "temporary table"
		}
	}
	if e.learn != "" {
		e.names = settingNames(sql)
	}
	if e.pin == "" && e.params == nil && !e.dropsStmts && e.dealloc == "" && !e.schema && e.learn == "" && e.prepare == "" {
		return nil
	}
	return e
}

// schemaChange reports whether a statement changes objects prepared
// statements may depend on: their result or parameter types, or the
// functions and views they call.
func schemaChange(n *pg_query.Node) bool {
	switch {
	case n.GetAlterTableStmt() != nil, n.GetDropStmt() != nil, n.GetRenameStmt() != nil,
		n.GetAlterEnumStmt() != nil, n.GetAlterTypeStmt() != nil, n.GetAlterDomainStmt() != nil,
		n.GetAlterObjectSchemaStmt() != nil:
		return true
	case n.GetCreateFunctionStmt() != nil:
		return n.GetCreateFunctionStmt().Replace
	case n.GetViewStmt() != nil:
		return n.GetViewStmt().Replace
	}
	return false
}

// deallocName returns the name a Query body that is one "DEALLOCATE name"
// removes, or "".
func deallocName(body []byte) string {
	if e := statementEffect(queryText(body)); e != nil {
		return e.dealloc
	}
	return ""
}

// countSetConfig counts the calls of set_config anywhere in a tree.
func countSetConfig(tree *pg_query.ParseResult) int {
	n := 0
	for _, raw := range tree.Stmts {
		visitNodes(raw.ProtoReflect(), func(m proto.Message) {
			if f, ok := m.(*pg_query.FuncCall); ok && funcName(f) == "set_config" {
				n++
			}
		})
	}
	return n
}

// tempObject reports why a statement pins when it creates (or names) an
// object in the session's temporary schema anywhere: "temporary table" for
// a relation that is TEMP or in pg_temp (CREATE, SELECT INTO, CREATE TABLE
// AS, a view, a sequence, a composite type), "temporary object" for a
// type, domain, function, operator or other object created in pg_temp by
// name (CREATE TYPE pg_temp.t AS ENUM ..., CREATE FUNCTION pg_temp.f ...);
// "" when it does neither. Such objects live in the server's session, as
// a temporary table does.
func tempObject(tree *pg_query.ParseResult) string {
	why := ""
	for _, raw := range tree.Stmts {
		visitNodes(raw.ProtoReflect(), func(m proto.Message) {
			var names []*pg_query.Node
			switch n := m.(type) {
			case *pg_query.RangeVar:
				if n.GetRelpersistence() == "t" || tempSchema(n.GetSchemaname()) {
					why = "temporary table"
				}
				return
			case *pg_query.CreateEnumStmt:
				names = n.GetTypeName()
			case *pg_query.CreateRangeStmt:
				names = n.GetTypeName()
			case *pg_query.CreateDomainStmt:
				names = n.GetDomainname()
			case *pg_query.DefineStmt: // base and shell types, operators, aggregates, collations, text search
				names = n.GetDefnames()
			case *pg_query.CreateFunctionStmt: // functions and procedures
				names = n.GetFuncname()
			case *pg_query.CreateStatsStmt:
				names = n.GetDefnames()
			case *pg_query.CreateConversionStmt:
				names = n.GetConversionName()
			default:
				return
			}
			if len(names) >= 2 && tempSchema(names[len(names)-2].GetString_().GetSval()) && why == "" {
				why = "temporary object"
			}
		})
	}
	return why
}

// tempSchema reports whether a schema name is the session's temporary
// schema: pg_temp, or its real name pg_temp_N (PostgreSQL docs 5.10.5).
// No user schema can start with pg_, so the prefix decides.
func tempSchema(name string) bool {
	return len(name) >= 7 && strings.EqualFold(name[:7], "pg_temp")
}

// visitNodes calls f on m and every message below it.
func visitNodes(m protoreflect.Message, f func(proto.Message)) {
	analyze.VisitMessage(m, func(x proto.Message) bool { f(x); return true })
}

func funcName(f *pg_query.FuncCall) string {
	n := f.GetFuncname()
	if len(n) == 0 {
		return ""
	}
	return strings.ToLower(n[len(n)-1].GetString_().GetSval())
}

// setConfigCalls tracks SELECT set_config(name, value, false) of a parameter
// PostgreSQL does not report, and returns how many calls it followed
// (tracked, or local and so undone at the transaction's end); with
// arguments that are not constants the value cannot be known, so the
// client is pinned instead.
func (e *effect) setConfigCalls(sel *pg_query.SelectStmt) int {
	if len(sel.GetFromClause()) > 0 || sel.GetWhereClause() != nil || sel.GetHavingClause() != nil ||
		sel.GetLimitCount() != nil || sel.GetOp() != pg_query.SetOperation_SETOP_NONE || sel.GetWithClause() != nil {
		return 0 // whether and how often a call runs depends on rows
	}
	followed := 0
	for _, t := range sel.GetTargetList() {
		f := t.GetResTarget().GetVal().GetFuncCall()
		if f == nil || len(f.GetFuncname()) == 0 {
			continue
		}
		if f.GetFuncname()[len(f.GetFuncname())-1].GetString_().GetSval() != "set_config" {
			continue
		}
		args := f.GetArgs()
		if len(args) != 3 {
			continue
		}
		name, value := args[0].GetAConst().GetSval(), args[1].GetAConst().GetSval()
		local := args[2].GetAConst().GetBoolval()
		if name == nil || value == nil || local == nil {
			continue // computed: learned from the server (or pinned: unknownCall)
		}
		followed++
		if _, reported := canonicalReported(name.GetSval()); reported || local.GetBoolval() {
			continue
		}
		e.setCustom(strings.ToLower(name.GetSval()), setConfigSQL(name.GetSval(), value.GetSval()))
	}
	return followed
}

func (e *effect) setCustom(k, sql string) { e.params = append(e.params, kv{k, sql}) }
