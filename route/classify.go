package route

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/pgguard/pgguard/cache/analyze"
	"github.com/pgguard/pgguard/internal/textcache"
	"github.com/pgguard/pgguard/readonly"
)

// Kind is what one statement means for the choice of upstream.
type Kind uint8

const (
	// Write: the statement may write, takes locks, has session effects a
	// replica would not keep (advisory locks, sequences), calls a function
	// pgguard cannot judge, or does not parse. The primary runs it.
	Write Kind = iota
	// Read: a query a replica answers as the primary would, given the same
	// snapshot: a SELECT (or plain EXPLAIN of one) without locking clause,
	// data-modifying WITH, INTO, volatile or user function.
	Read
	// Neutral runs the same anywhere and decides nothing by itself: SET
	// and RESET of ordinary parameters, SHOW, COMMIT, ROLLBACK, savepoints,
	// cursors' FETCH and CLOSE, DEALLOCATE, empty text.
	Neutral
	// BeginReadOnly starts a READ ONLY transaction (BEGIN or START
	// TRANSACTION with READ ONLY).
	BeginReadOnly
	// Begin starts a transaction without saying READ ONLY or READ WRITE
	// (read-only when the session's default_transaction_read_only is on).
	Begin
	// SetReadOnly is SET TRANSACTION READ ONLY.
	SetReadOnly
)

// Shape is what a text's statements mean, in order.
type Shape []Kind

// Classifier classifies SQL texts, caching the answers. Safe for
// concurrent use.
type Classifier struct {
	cache *textcache.Cache[Shape]
}

// NewClassifier returns a classifier caching up to size texts.
func NewClassifier(size int) *Classifier {
	return &Classifier{cache: textcache.New[Shape](size)}
}

// ClassifyBytes returns the shape of sql; a lookup of a known text does not
// allocate.
func (c *Classifier) ClassifyBytes(sql []byte) Shape {
	if s, ok := c.cache.GetBytes(sql); ok {
		return s
	}
	s := Classify(string(sql))
	c.cache.Put(string(sql), s)
	return s
}

// roGuard is the read-only guard's classifier: a Read must also be a read
// to it (nextval(), set_config() of the read-only settings, ...).
var roGuard = readonly.New(0)

// Classify parses sql and returns its statements' kinds. Text that does
// not parse is one Write.
func Classify(sql string) (shape Shape) {
	defer func() {
		if recover() != nil {
			shape = Shape{Write}
		}
	}()
	if strings.IndexByte(sql, 0) >= 0 {
		return Shape{Write}
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return Shape{Write}
	}
	stmts := tree.GetStmts()
	if len(stmts) == 0 {
		return Shape{Neutral}
	}
	out := make(Shape, 0, len(stmts))
	for _, s := range stmts {
		out = append(out, stmtKind(s.GetStmt()))
	}
	if out.has(Read) && roGuard.Classify(sql).Write {
		for i, k := range out {
			if k == Read {
				out[i] = Write
			}
		}
	}
	return out
}

func (s Shape) has(k Kind) bool {
	for _, x := range s {
		if x == k {
			return true
		}
	}
	return false
}

// stmtKind classifies one top-level statement.
func stmtKind(n *pg_query.Node) Kind {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return queryKind(n)
	case *pg_query.Node_ExplainStmt:
		for _, o := range s.ExplainStmt.GetOptions() {
			if strings.EqualFold(o.GetDefElem().GetDefname(), "analyze") {
				return queryKind(s.ExplainStmt.GetQuery())
			}
		}
		if s.ExplainStmt.GetQuery().GetSelectStmt() != nil {
			return Read
		}
		return Write
	case *pg_query.Node_DeclareCursorStmt:
		return queryKind(s.DeclareCursorStmt.GetQuery())
	case *pg_query.Node_TransactionStmt:
		t := s.TransactionStmt
		switch t.GetKind() {
		case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
			switch txAccess(t.GetOptions()) {
			case accessReadOnly:
				return BeginReadOnly
			case accessReadWrite:
				return Write
			}
			return Begin
		case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK,
			pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT,
			pg_query.TransactionStmtKind_TRANS_STMT_RELEASE,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
			return Neutral
		}
		return Write
	case *pg_query.Node_VariableSetStmt:
		v := s.VariableSetStmt
		switch {
		case v.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI && v.GetName() == "TRANSACTION":
			if txAccess(v.GetArgs()) == accessReadOnly {
				return SetReadOnly
			}
			return Write
		case v.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI:
			return Write // SESSION CHARACTERISTICS, TRANSACTION SNAPSHOT
		case v.GetKind() == pg_query.VariableSetKind_VAR_RESET_ALL:
			return Neutral
		}
		return Neutral
	case *pg_query.Node_VariableShowStmt, *pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_DeallocateStmt:
		return Neutral
	}
	return Write
}

type access uint8

const (
	accessDefault access = iota
	accessReadOnly
	accessReadWrite
)

// txAccess reads READ ONLY / READ WRITE among transaction options (the
// parser gives them as transaction_read_only = 1 or 0).
func txAccess(opts []*pg_query.Node) access {
	a := accessDefault
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.GetDefname() != "transaction_read_only" {
			continue
		}
		if d.GetArg().GetAConst().GetIval().GetIval() == 1 {
			a = accessReadOnly
		} else {
			a = accessReadWrite
		}
	}
	return a
}

// queryKind judges a query: Read when nothing in its tree writes, locks or
// calls a function a replica could answer differently or refuse.
func queryKind(n *pg_query.Node) Kind {
	if n == nil {
		return Write
	}
	k := Read
	analyze.Visit(n, func(m proto.Message) bool {
		switch x := m.(type) {
		case *pg_query.SelectStmt:
			if len(x.GetLockingClause()) > 0 || x.GetIntoClause() != nil {
				k = Write
			}
		case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
			k = Write
		case *pg_query.FuncCall:
			if !replicaFunc(x) {
				k = Write
			}
		}
		return k == Read
	})
	return k
}

// replicaFunc reports whether a replica may run the call: a built-in that is
// not volatile (or a volatile one that only draws random numbers or reads
// the clock), and not one tied to the primary's transactions or WAL.
func replicaFunc(f *pg_query.FuncCall) bool {
	parts := f.GetFuncname()
	if len(parts) == 0 || len(parts) > 2 {
		return false
	}
	if len(parts) == 2 && strings.ToLower(parts[0].GetString_().GetSval()) != "pg_catalog" {
		return false
	}
	name := strings.ToLower(parts[len(parts)-1].GetString_().GetSval())
	switch {
	case strings.HasPrefix(name, "txid_current"), strings.HasPrefix(name, "pg_current_"),
		strings.HasPrefix(name, "pg_advisory"), strings.HasPrefix(name, "pg_try_advisory"):
		return false
	}
	switch analyze.Volatility(name) {
	case 'i', 's':
		return true
	case 'v':
		return volatileOK[name]
	}
	return false
}

// volatileOK are volatile built-ins a replica answers as well as the primary.
var volatileOK = map[string]bool{
	"random": true, "random_normal": true, "clock_timestamp": true, "timeofday": true,
	"gen_random_uuid": true,
}
