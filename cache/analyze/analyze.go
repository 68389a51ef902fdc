// Package analyze reads SQL text for pgguard's result cache: whether a
// statement may be cached (a single read-only SELECT with no volatile
// function and no locking clause), which tables it reads, and which tables a
// write touches. It parses with PostgreSQL's own grammar (pg_query) and walks
// the whole tree; it never matches text with patterns.
//
// It fails safe in both directions: a text it cannot judge is not cacheable,
// and a write it cannot judge touches every table of the database.
//
// Tables are named by their bare relation name, without schema: "public.t"
// and "t" are one table here. Two tables of the same name in different
// schemas then share a generation, which costs extra misses, never a stale
// answer. What the parser cannot see is the catalog: the tables a view or a
// function reads, what a user function does, triggers and cascades. A rule
// names those itself (tables, trusted_functions; see Info.Check).
package analyze

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgguard/pgguard/readonly"
)

// Info is what the result cache needs to know about one SQL text.
type Info struct {
	// Fingerprint is pg_query's fingerprint of a single SELECT, the shape a
	// [[cache]] rule matches (the fingerprint column of SHOW QUERIES),
	// whether or not it may be cached; 0 for any other text.
	Fingerprint uint64
	// Refusal says why the text may not be cached whatever a rule says, as
	// a phrase following "the query": "calls random(), a volatile function".
	// Empty when it may.
	Refusal string
	// Functions are the functions it calls that are not built into
	// PostgreSQL, lower case, schema-qualified when written so. Their
	// volatility is unknown here; see Check.
	Functions []string
	// Reads are the relations a SELECT reads, by bare name, sorted and
	// unique. CTE names are included: a name too many costs a miss, never
	// a stale answer.
	Reads []string
	// Writes are the tables the text may change.
	Writes Targets
}

// Targets are the tables a write changes.
type Targets struct {
	// All: the statement may change any table of the database (DDL,
	// CALL, DO, EXECUTE, GRANT, text that does not parse, ...).
	All bool
	// Tables are bare relation names, sorted and unique; empty with All.
	Tables []string
}

// Empty reports whether t changes nothing.
func (t Targets) Empty() bool { return !t.All && len(t.Tables) == 0 }

// Check returns why a rule trusting the functions in trusted may not cache
// the text, or "". trusted holds names as in a rule's trusted_functions:
// matched ignoring case, "f" trusting f in any schema, "s.f" only s.f.
func (i *Info) Check(trusted []string) string {
	if i.Refusal != "" {
		return i.Refusal
	}
	for _, f := range i.Functions {
		if !isTrusted(f, trusted) {
			return "calls " + f + "(), which is not built into PostgreSQL: pgguard cannot see whether its result depends only on its arguments; " +
				"if it does (IMMUTABLE or STABLE, reading only tables the rule names), add \"" + f + "\" to the rule's trusted_functions"
		}
	}
	return ""
}

func isTrusted(f string, trusted []string) bool {
	bare := f
	if _, name, ok := strings.Cut(f, "."); ok {
		bare = name
	}
	for _, t := range trusted {
		t = strings.ToLower(t)
		if t == f || !strings.Contains(t, ".") && t == bare {
			return true
		}
	}
	return false
}

// classifier is the read-only guard's classifier, uncached: Analyze's
// callers cache whole Infos.
var classifier = readonly.New(0)

// Analyze parses sql and returns what the cache needs to know. It never
// panics; text that does not parse is refused and writes everything.
func Analyze(sql string) (info Info) {
	defer func() {
		if recover() != nil { // a malformed tree must not take the proxy down
			info = Info{Refusal: "cannot be parsed", Writes: Targets{All: true}}
		}
	}()
	if strings.IndexByte(sql, 0) >= 0 {
		return Info{Refusal: "cannot be parsed", Writes: Targets{All: true}}
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return Info{Refusal: "cannot be parsed: " + err.Error(), Writes: Targets{All: true}}
	}
	stmts := tree.GetStmts()
	w := &writes{}
	for _, s := range stmts {
		w.stmt(s.GetStmt())
	}
	info.Writes = w.targets()
	switch {
	case len(stmts) == 0:
		info.Refusal = "is empty"
		return info
	case len(stmts) > 1:
		info.Refusal = "holds several statements; a rule caches a single SELECT"
		return info
	}
	sel := stmts[0].GetStmt().GetSelectStmt()
	if sel == nil {
		info.Refusal = "is " + stmtName(stmts[0].GetStmt()) + ", not a SELECT"
		return info
	}
	r := &reads{}
	visit(sel.ProtoReflect(), r.node)
	info.Reads = sortUnique(r.tables)
	info.Functions = sortUnique(r.funcs)
	switch {
	case r.refusal != "":
		info.Refusal = r.refusal
	case !info.Writes.Empty():
		info.Refusal = "writes (a data-modifying WITH)"
	default:
		if v := classifier.Classify(sql); v.Write {
			info.Refusal = "is not read-only (" + v.Reason + ")"
		}
	}
	// Refused SELECTs get their fingerprint too, so that a rule matching
	// the shape can say why this text is not cached.
	fp, err := pg_query.FingerprintToUInt64(sql)
	if err != nil && info.Refusal == "" {
		info.Refusal = "cannot be fingerprinted: " + err.Error()
	}
	info.Fingerprint = fp
	return info
}

// reads collects what a SELECT reads and calls, and the first reason it
// may not be cached.
type reads struct {
	tables  []string
	funcs   []string // not built in
	refusal string
}

func (r *reads) refuse(why string) {
	if r.refusal == "" {
		r.refusal = why
	}
}

// node inspects one tree node; it always descends.
func (r *reads) node(m proto.Message) bool {
	switch n := m.(type) {
	case *pg_query.RangeVar:
		r.tables = append(r.tables, n.GetRelname())
		if schema := strings.ToLower(n.GetSchemaname()); schema == "pg_catalog" || schema == "information_schema" || strings.HasPrefix(n.GetRelname(), "pg_") {
			r.refuse("reads " + n.GetRelname() + ", a system catalog or statistics view: its contents change without a write pgguard sees")
		}
	case *pg_query.SelectStmt:
		if len(n.GetLockingClause()) > 0 {
			r.refuse("has a locking clause (FOR UPDATE/SHARE): it takes row locks")
		}
		if n.GetIntoClause() != nil {
			r.refuse("creates a table (SELECT INTO)")
		}
	case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
		r.refuse("writes (a data-modifying WITH)")
	case *pg_query.FuncCall:
		r.call(n)
	case *pg_query.SQLValueFunction:
		if name, ok := timeValues[n.GetOp()]; ok {
			r.refuse("uses " + name + ": its result depends on the time")
		}
	case *pg_query.RangeTableSample:
		if n.GetRepeatable() == nil {
			r.refuse("samples a table at random (TABLESAMPLE without REPEATABLE)")
		}
	case *pg_query.A_Const:
		if s := n.GetSval(); s != nil && IsTimeLiteral([]byte(s.GetSval())) {
			r.refuse("uses the literal '" + s.GetSval() + "', which PostgreSQL reads as a time relative to now")
		}
	}
	return true
}

// call judges a function call by name.
func (r *reads) call(f *pg_query.FuncCall) {
	var parts []string
	for _, n := range f.GetFuncname() {
		parts = append(parts, strings.ToLower(n.GetString_().GetSval()))
	}
	if len(parts) == 0 {
		return
	}
	name := parts[len(parts)-1]
	schema := ""
	if len(parts) > 1 {
		schema = parts[len(parts)-2]
	}
	if schema != "" && schema != "pg_catalog" {
		r.funcs = append(r.funcs, schema+"."+name)
		return
	}
	if why := builtinRefusal(name, len(f.GetArgs())); why != "" {
		r.refuse("calls " + name + "()" + why)
		return
	}
	if _, ok := builtins()[name]; !ok {
		r.funcs = append(r.funcs, name)
	}
}

// writes collects the tables statements change.
type writes struct {
	all    bool
	tables []string
}

func (w *writes) targets() Targets {
	if w.all {
		return Targets{All: true}
	}
	return Targets{Tables: sortUnique(w.tables)}
}

func (w *writes) rel(rv *pg_query.RangeVar) {
	if rv != nil {
		w.tables = append(w.tables, rv.GetRelname())
	}
}

// dml adds the target of every INSERT, UPDATE, DELETE and MERGE in the tree,
// data-modifying CTEs included.
func (w *writes) dml(m protoreflect.Message) {
	visit(m, func(m proto.Message) bool {
		switch n := m.(type) {
		case *pg_query.InsertStmt:
			w.rel(n.GetRelation())
		case *pg_query.UpdateStmt:
			w.rel(n.GetRelation())
		case *pg_query.DeleteStmt:
			w.rel(n.GetRelation())
		case *pg_query.MergeStmt:
			w.rel(n.GetRelation())
		}
		return true
	})
}

// stmt adds what one top-level statement may change.
func (w *writes) stmt(n *pg_query.Node) {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		w.dml(s.SelectStmt.ProtoReflect())
		if into := s.SelectStmt.GetIntoClause(); into != nil {
			w.rel(into.GetRel()) // a new name may shadow another on the search_path
		}
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt,
		*pg_query.Node_MergeStmt, *pg_query.Node_ExplainStmt, *pg_query.Node_DeclareCursorStmt:
		// EXPLAIN without ANALYZE runs nothing; counting its target costs
		// a miss, and saves reading its options.
		w.dml(n.ProtoReflect())
	case *pg_query.Node_TruncateStmt:
		for _, r := range s.TruncateStmt.GetRelations() {
			w.rel(r.GetRangeVar())
		}
	case *pg_query.Node_CopyStmt:
		if s.CopyStmt.GetIsFrom() {
			w.rel(s.CopyStmt.GetRelation())
		}
		w.dml(n.ProtoReflect()) // COPY (UPDATE ... RETURNING) TO STDOUT
	case *pg_query.Node_RefreshMatViewStmt:
		w.rel(s.RefreshMatViewStmt.GetRelation())
	case *pg_query.Node_CreateStmt:
		w.rel(s.CreateStmt.GetRelation())
	case *pg_query.Node_CreateTableAsStmt:
		w.rel(s.CreateTableAsStmt.GetInto().GetRel())
		w.dml(n.ProtoReflect())
	case *pg_query.Node_ViewStmt:
		w.rel(s.ViewStmt.GetView())
	case *pg_query.Node_TransactionStmt:
		// COMMIT PREPARED makes another session's writes visible, unseen.
		w.all = s.TransactionStmt.GetKind() == pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED || w.all

	// Session, transaction and maintenance statements change no rows.
	case *pg_query.Node_VariableSetStmt, *pg_query.Node_VariableShowStmt,
		*pg_query.Node_DiscardStmt,
		*pg_query.Node_PrepareStmt, *pg_query.Node_DeallocateStmt,
		*pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_NotifyStmt,
		*pg_query.Node_LockStmt, *pg_query.Node_ConstraintsSetStmt,
		*pg_query.Node_VacuumStmt, *pg_query.Node_CheckPointStmt, *pg_query.Node_LoadStmt,
		*pg_query.Node_ReindexStmt, *pg_query.Node_ClusterStmt:
	default:
		// DDL, GRANT, CALL, DO, EXECUTE (its statement is not at hand):
		// anything may have changed.
		w.all = true
	}
}

// visit calls f on m and, while f returns true, on every message below it:
// every populated message field, list element and oneof, so that no node
// kind can be overlooked.
func visit(m protoreflect.Message, f func(proto.Message) bool) {
	if !m.IsValid() || !f(m.Interface()) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() == nil || fd.IsMap():
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				visit(l.Get(i).Message(), f)
			}
		default:
			visit(v.Message(), f)
		}
		return true
	})
}

// stmtName names a statement's kind: "an UPDATE", "a CREATE TABLE".
func stmtName(n *pg_query.Node) string {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node"))
	if fd == nil {
		return "an unknown statement"
	}
	name := strings.ToUpper(strings.ReplaceAll(strings.TrimSuffix(string(fd.Name()), "_stmt"), "_", " "))
	if strings.ContainsRune("AEIOU", rune(name[0])) {
		return "an " + name
	}
	return "a " + name
}

func sortUnique(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	slices.Sort(s)
	return slices.Compact(s)
}
