package readonly

import (
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// stmtVerdict classifies one top-level statement. Only statements known to
// be reads return read; every other kind is a write (fail closed).
func stmtVerdict(n *pg_query.Node) Verdict {
	switch s := n.GetNode().(type) {
	case nil:
		return write(reasonUnparseable)

	// Queries: reads unless something inside them writes.
	case *pg_query.Node_SelectStmt:
		return walk(s.SelectStmt)
	case *pg_query.Node_DeclareCursorStmt:
		return stmtVerdict(s.DeclareCursorStmt.GetQuery())
	case *pg_query.Node_PrepareStmt:
		v := stmtVerdict(s.PrepareStmt.GetQuery())
		if v.Write && v.Reason != reasonUnparseable {
			v.Reason = "PREPARE ... AS " + v.Reason
		}
		return v
	case *pg_query.Node_ExplainStmt:
		return explainVerdict(s.ExplainStmt)
	case *pg_query.Node_CopyStmt:
		return copyVerdict(s.CopyStmt)

	// Session and transaction control.
	case *pg_query.Node_VariableSetStmt:
		return setVerdict(s.VariableSetStmt)
	case *pg_query.Node_TransactionStmt:
		return txnVerdict(s.TransactionStmt)
	case *pg_query.Node_DiscardStmt:
		// DISCARD ALL runs RESET ALL, which would undo a session-level
		// default_transaction_read_only; PLANS, SEQUENCES and TEMP are fine.
		if s.DiscardStmt.GetTarget() == pg_query.DiscardMode_DISCARD_ALL {
			return write("DISCARD ALL")
		}
		return read
	case *pg_query.Node_VariableShowStmt,
		*pg_query.Node_FetchStmt, // FETCH and MOVE
		*pg_query.Node_ClosePortalStmt,
		*pg_query.Node_DeallocateStmt,
		*pg_query.Node_ListenStmt,
		*pg_query.Node_UnlistenStmt,
		*pg_query.Node_ConstraintsSetStmt:
		return read

	// Writes whose reason needs a field.
	case *pg_query.Node_VacuumStmt:
		if s.VacuumStmt.GetIsVacuumcmd() {
			return write("VACUUM")
		}
		return write("ANALYZE")
	case *pg_query.Node_CreateTableAsStmt:
		switch {
		case s.CreateTableAsStmt.GetObjtype() == pg_query.ObjectType_OBJECT_MATVIEW:
			return write("CREATE MATERIALIZED VIEW")
		case s.CreateTableAsStmt.GetIsSelectInto():
			return write("SELECT INTO")
		}
		return write("CREATE TABLE AS")
	case *pg_query.Node_CreateStmt:
		if s.CreateStmt.GetRelation().GetRelpersistence() == "t" {
			return write("CREATE TEMP TABLE")
		}
		return write("CREATE TABLE")
	case *pg_query.Node_AlterTableStmt:
		return write("ALTER " + objectName(s.AlterTableStmt.GetObjtype()))
	case *pg_query.Node_DropStmt:
		return write("DROP " + objectName(s.DropStmt.GetRemoveType()))
	case *pg_query.Node_RenameStmt:
		return write("ALTER " + objectName(s.RenameStmt.GetRenameType()) + " ... RENAME")
	case *pg_query.Node_DefineStmt:
		return write("CREATE " + objectName(s.DefineStmt.GetKind()))
	case *pg_query.Node_CreateFunctionStmt:
		if s.CreateFunctionStmt.GetIsProcedure() {
			return write("CREATE PROCEDURE")
		}
		return write("CREATE FUNCTION")
	case *pg_query.Node_GrantStmt:
		if s.GrantStmt.GetIsGrant() {
			return write("GRANT")
		}
		return write("REVOKE")
	case *pg_query.Node_GrantRoleStmt:
		if s.GrantRoleStmt.GetIsGrant() {
			return write("GRANT")
		}
		return write("REVOKE")
	}
	// INSERT, UPDATE, DELETE, MERGE, all other DDL, CALL, DO, EXECUTE,
	// LOCK, NOTIFY, LOAD, CHECKPOINT, ...: named after the node.
	return write(nodeReason(n))
}

// explainVerdict: plain EXPLAIN only plans, so it is a read whatever it
// explains; EXPLAIN ANALYZE runs the statement.
func explainVerdict(s *pg_query.ExplainStmt) Verdict {
	analyze := false
	for _, o := range s.GetOptions() {
		d := o.GetDefElem()
		if d != nil && strings.EqualFold(d.GetDefname(), "analyze") && defTrue(d.GetArg()) {
			analyze = true // any ANALYZE that may be true wins (fail closed)
		}
	}
	if !analyze {
		return read
	}
	v := stmtVerdict(s.GetQuery())
	if v.Write && v.Reason != reasonUnparseable {
		v.Reason = "EXPLAIN ANALYZE " + v.Reason
	}
	return v
}

// defTrue reports whether an option argument may mean true, following
// PostgreSQL's defGetBoolean: no argument is true, and only 0, false and
// off are false. Anything unrecognised counts as true (fail closed).
func defTrue(arg *pg_query.Node) bool {
	switch a := arg.GetNode().(type) {
	case nil:
		return true
	case *pg_query.Node_Integer:
		return a.Integer.GetIval() != 0
	case *pg_query.Node_Boolean:
		return a.Boolean.GetBoolval()
	case *pg_query.Node_String_:
		s := a.String_.GetSval()
		return !strings.EqualFold(s, "false") && !strings.EqualFold(s, "off")
	}
	return true
}

// copyVerdict: COPY FROM writes; COPY TO STDOUT reads unless its query
// writes. COPY TO a server file or program writes outside the database and
// is refused too.
func copyVerdict(s *pg_query.CopyStmt) Verdict {
	switch {
	case s.GetIsFrom():
		return write("COPY ... FROM")
	case s.GetIsProgram():
		return write("COPY ... TO PROGRAM")
	case s.GetFilename() != "":
		return write("COPY ... TO file")
	case s.GetQuery() != nil:
		return stmtVerdict(s.GetQuery())
	}
	return read
}

// walk looks through a query's whole tree for anything that writes:
// data-modifying statements (as in WITH x AS (DELETE ...)), SELECT INTO,
// row-locking clauses and calls of functions in writeFuncs. It visits every
// exported pointer, slice and oneof field of the generated structs, so that
// no node kind can be overlooked; per-type field plans keep it fast.
func walk(n any) Verdict {
	return walkValue(reflect.ValueOf(n))
}

// walkValue walks v, a pointer to a generated struct.
func walkValue(v reflect.Value) Verdict {
	if v.IsNil() {
		return read
	}
	switch x := v.Interface().(type) {
	case *pg_query.InsertStmt:
		return write("INSERT")
	case *pg_query.UpdateStmt:
		return write("UPDATE")
	case *pg_query.DeleteStmt:
		return write("DELETE")
	case *pg_query.MergeStmt:
		return write("MERGE")
	case *pg_query.SelectStmt:
		if x.GetIntoClause() != nil {
			return write("SELECT INTO")
		}
		if l := x.GetLockingClause(); len(l) > 0 {
			return write(lockReason(l[0].GetLockingClause().GetStrength()))
		}
	case *pg_query.FuncCall:
		if r := funcReason(x); r != "" {
			return write(r)
		}
	}
	e := v.Elem()
	for _, f := range planFor(e.Type()) {
		fv := e.Field(f.index)
		switch f.kind {
		case reflect.Pointer:
			if v := walkValue(fv); v.Write {
				return v
			}
		case reflect.Slice:
			for i := range fv.Len() {
				if v := walkValue(fv.Index(i)); v.Write {
					return v
				}
			}
		case reflect.Interface: // a oneof: a pointer to a wrapper struct
			if !fv.IsNil() {
				if v := walkValue(fv.Elem()); v.Write {
					return v
				}
			}
		}
	}
	return read
}

// fieldPlan is one field walkValue descends into.
type fieldPlan struct {
	index int
	kind  reflect.Kind // Pointer, Slice (of pointers) or Interface
}

// plans maps a struct type to its fieldPlans. It is copied on write: the
// set of types is small and fixed, so after warm-up lookups never lock.
var (
	plans   atomic.Pointer[map[reflect.Type][]fieldPlan]
	plansMu sync.Mutex // serialises writers of plans
)

// planFor returns the exported fields of struct type t that can hold
// nodes: pointers to structs, slices of them, and oneof interfaces.
func planFor(t reflect.Type) []fieldPlan {
	if m := plans.Load(); m != nil {
		if p, ok := (*m)[t]; ok {
			return p
		}
	}
	var p []fieldPlan
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue // protoimpl state
		}
		switch ft := f.Type; {
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct,
			ft.Kind() == reflect.Interface:
			p = append(p, fieldPlan{i, ft.Kind()})
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Pointer:
			p = append(p, fieldPlan{i, reflect.Slice})
		}
	}
	plansMu.Lock()
	defer plansMu.Unlock()
	next := map[reflect.Type][]fieldPlan{t: p}
	if m := plans.Load(); m != nil {
		for k, v := range *m {
			next[k] = v
		}
	}
	plans.Store(&next)
	return p
}

// lockReason names a row-locking clause.
func lockReason(s pg_query.LockClauseStrength) string {
	switch s {
	case pg_query.LockClauseStrength_LCS_FORKEYSHARE:
		return "SELECT ... FOR KEY SHARE"
	case pg_query.LockClauseStrength_LCS_FORSHARE:
		return "SELECT ... FOR SHARE"
	case pg_query.LockClauseStrength_LCS_FORNOKEYUPDATE:
		return "SELECT ... FOR NO KEY UPDATE"
	}
	return "SELECT ... FOR UPDATE"
}

// writeFuncs are built-in functions that write or that PostgreSQL refuses
// in a read-only transaction; naming them gives a clearer message than the
// server would. Matched by name in any schema, ignoring case.
var writeFuncs = map[string]bool{
	"nextval": true, "setval": true,
	"pg_notify": true,
	"lo_create": true, "lo_creat": true, "lo_import": true, "lo_unlink": true,
	"lo_put": true, "lo_from_bytea": true, "lowrite": true,
	"lo_truncate": true, "lo_truncate64": true,
	// dblink opens another session, which the proxy does not guard.
	"dblink": true, "dblink_exec": true, "dblink_send_query": true,
}

// funcReason names what a function call writes, or returns "".
func funcReason(f *pg_query.FuncCall) string {
	names := f.GetFuncname()
	if len(names) == 0 {
		return ""
	}
	name := strings.ToLower(names[len(names)-1].GetString_().GetSval())
	if writeFuncs[name] {
		return name + "()"
	}
	if name == "set_config" {
		return setConfigReason(f.GetArgs())
	}
	return ""
}

// setConfigReason vets set_config(name, value, is_local) like SET. The
// read-only parameters are refused whatever the value; a name or, for a
// guarded parameter, a value that is not a constant is refused too.
func setConfigReason(args []*pg_query.Node) string {
	if len(args) == 0 {
		return ""
	}
	name, ok := constString(args[0])
	if !ok {
		return "set_config(...) with a computed name"
	}
	if isReadOnlyParam(name) {
		return "set_config('" + strings.ToLower(name) + "', ...)"
	}
	if !guardedParam(name) {
		return ""
	}
	var value string
	if len(args) > 1 {
		if value, ok = constString(args[1]); !ok {
			return "set_config('" + strings.ToLower(name) + "', ...)"
		}
	}
	if v := CheckSetting(name, value); v.Write {
		return "set_config('" + strings.ToLower(name) + "', ...)"
	}
	return ""
}

// constString returns the text of a constant, looking through casts.
func constString(n *pg_query.Node) (string, bool) {
	for n.GetTypeCast() != nil {
		n = n.GetTypeCast().GetArg()
	}
	c := n.GetAConst()
	if c == nil || c.GetIsnull() {
		return "", false
	}
	switch {
	case c.GetSval() != nil:
		return c.GetSval().GetSval(), true
	case c.GetIval() != nil:
		return itoa(c.GetIval().GetIval()), true
	case c.GetFval() != nil:
		return c.GetFval().GetFval(), true
	case c.GetBoolval() != nil:
		if c.GetBoolval().GetBoolval() {
			return "true", true
		}
		return "false", true
	}
	return "", false
}

// itoa formats a parser integer.
func itoa(i int32) string {
	if i == 0 {
		return "0"
	}
	neg := i < 0
	u := uint32(i)
	if neg {
		u = -u
	}
	var b [11]byte
	p := len(b)
	for u > 0 {
		p--
		b[p] = byte('0' + u%10)
		u /= 10
	}
	if neg {
		p--
		b[p] = '-'
	}
	return string(b[p:])
}

// nodeReason names a statement after its node type: "create_role_stmt"
// becomes "CREATE ROLE", with a few names spelled as in SQL.
func nodeReason(n *pg_query.Node) string {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node"))
	if fd == nil {
		return reasonUnparseable
	}
	name := strings.TrimSuffix(string(fd.Name()), "_stmt")
	if r, ok := nodeReasons[name]; ok {
		return r
	}
	return strings.ToUpper(strings.ReplaceAll(name, "_", " "))
}

// nodeReasons spells statement names that nodeReason cannot derive.
var nodeReasons = map[string]string{
	"index":                       "CREATE INDEX",
	"view":                        "CREATE VIEW",
	"rule":                        "CREATE RULE",
	"createdb":                    "CREATE DATABASE",
	"dropdb":                      "DROP DATABASE",
	"create_trig":                 "CREATE TRIGGER",
	"create_event_trig":           "CREATE EVENT TRIGGER",
	"alter_event_trig":            "ALTER EVENT TRIGGER",
	"create_plang":                "CREATE LANGUAGE",
	"create_seq":                  "CREATE SEQUENCE",
	"alter_seq":                   "ALTER SEQUENCE",
	"create_fdw":                  "CREATE FOREIGN DATA WRAPPER",
	"alter_fdw":                   "ALTER FOREIGN DATA WRAPPER",
	"create_foreign_server":       "CREATE SERVER",
	"alter_foreign_server":        "ALTER SERVER",
	"create_am":                   "CREATE ACCESS METHOD",
	"create_op_class":             "CREATE OPERATOR CLASS",
	"create_op_family":            "CREATE OPERATOR FAMILY",
	"alter_op_family":             "ALTER OPERATOR FAMILY",
	"create_stats":                "CREATE STATISTICS",
	"alter_stats":                 "ALTER STATISTICS",
	"composite_type":              "CREATE TYPE",
	"create_enum":                 "CREATE TYPE",
	"create_range":                "CREATE TYPE",
	"alter_enum":                  "ALTER TYPE",
	"alter_table_move_all":        "ALTER TABLE ... SET TABLESPACE",
	"alter_table_space_options":   "ALTER TABLESPACE",
	"create_table_space":          "CREATE TABLESPACE",
	"drop_table_space":            "DROP TABLESPACE",
	"alter_extension_contents":    "ALTER EXTENSION",
	"alter_object_depends":        "ALTER ... DEPENDS ON EXTENSION",
	"alter_object_schema":         "ALTER ... SET SCHEMA",
	"alter_owner":                 "ALTER ... OWNER TO",
	"alter_tsdictionary":          "ALTER TEXT SEARCH DICTIONARY",
	"alter_tsconfiguration":       "ALTER TEXT SEARCH CONFIGURATION",
	"alter_database_refresh_coll": "ALTER DATABASE ... REFRESH COLLATION VERSION",
	"alter_database_set":          "ALTER DATABASE ... SET",
	"alter_role_set":              "ALTER ROLE ... SET",
	"sec_label":                   "SECURITY LABEL",
	"check_point":                 "CHECKPOINT",
	"refresh_mat_view":            "REFRESH MATERIALIZED VIEW",
	"replica_identity":            "ALTER TABLE ... REPLICA IDENTITY",
}

// objectName spells an object type as in SQL: OBJECT_MATVIEW becomes
// "MATERIALIZED VIEW".
func objectName(t pg_query.ObjectType) string {
	switch t {
	case pg_query.ObjectType_OBJECT_MATVIEW:
		return "MATERIALIZED VIEW"
	case pg_query.ObjectType_OBJECT_FDW:
		return "FOREIGN DATA WRAPPER"
	case pg_query.ObjectType_OBJECT_FOREIGN_SERVER:
		return "SERVER"
	case pg_query.ObjectType_OBJECT_LARGEOBJECT:
		return "LARGE OBJECT"
	case pg_query.ObjectType_OBJECT_OPCLASS:
		return "OPERATOR CLASS"
	case pg_query.ObjectType_OBJECT_OPFAMILY:
		return "OPERATOR FAMILY"
	case pg_query.ObjectType_OBJECT_STATISTIC_EXT:
		return "STATISTICS"
	case pg_query.ObjectType_OBJECT_TABCONSTRAINT:
		return "TABLE ... CONSTRAINT"
	case pg_query.ObjectType_OBJECT_DOMCONSTRAINT:
		return "DOMAIN ... CONSTRAINT"
	case pg_query.ObjectType_OBJECT_TSCONFIGURATION:
		return "TEXT SEARCH CONFIGURATION"
	case pg_query.ObjectType_OBJECT_TSDICTIONARY:
		return "TEXT SEARCH DICTIONARY"
	case pg_query.ObjectType_OBJECT_TSPARSER:
		return "TEXT SEARCH PARSER"
	case pg_query.ObjectType_OBJECT_TSTEMPLATE:
		return "TEXT SEARCH TEMPLATE"
	case pg_query.ObjectType_OBJECT_TYPE_UNDEFINED:
		return "OBJECT"
	}
	s := strings.TrimPrefix(t.String(), "OBJECT_")
	return strings.ReplaceAll(s, "_", " ")
}
