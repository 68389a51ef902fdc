package analyze

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Volatility returns the volatility class of the pg_catalog function name
// (lower case): 'i', 's' or 'v' for its most volatile overload, or 0 when
// the name is not built into PostgreSQL.
func Volatility(name string) byte { return builtins()[name] }

// Visit calls f on n and, while f returns true, on every message below it:
// the whole parse tree, whatever its node kinds.
func Visit(n *pg_query.Node, f func(proto.Message) bool) { visit(n.ProtoReflect(), f) }

// VisitMessage is Visit from any message of a parse tree (a RawStmt, say).
func VisitMessage(m protoreflect.Message, f func(proto.Message) bool) { visit(m, f) }
