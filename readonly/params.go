package readonly

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// CheckSetting reports whether giving run-time parameter name the value
// would weaken the read-only guard, whether by SET, set_config or a startup
// parameter (the proxy should vet startup parameters, including -c settings
// inside "options", with it). Names match ignoring case, as in PostgreSQL.
//
//   - default_transaction_read_only, transaction_read_only: only values
//     PostgreSQL reads as true pass.
//   - standard_conforming_strings: only true passes; off makes the server
//     read backslashes in '...' literals differently from the parser here,
//     which could hide a statement inside what the parser takes for a string.
//   - client_encoding: the client-only encodings (SJIS, BIG5, GBK, GB18030,
//     UHC, JOHAB, SHIFT_JIS_2004) are refused; their multibyte characters
//     can end in the byte of a backslash, with the same effect.
//
// Every other parameter passes.
func CheckSetting(name, value string) Verdict {
	switch {
	case isReadOnlyParam(name), strings.EqualFold(name, "standard_conforming_strings"):
		if !truthy(value) {
			return write("SET " + strings.ToLower(name))
		}
	case strings.EqualFold(name, "client_encoding"):
		if clientOnlyEncodings[cleanEncoding(value)] {
			return write("SET client_encoding to a client-only encoding")
		}
	}
	return read
}

// isReadOnlyParam reports whether name is one of the read-only settings.
func isReadOnlyParam(name string) bool {
	return strings.EqualFold(name, "default_transaction_read_only") ||
		strings.EqualFold(name, "transaction_read_only")
}

// guardedParam reports whether CheckSetting vets name.
func guardedParam(name string) bool {
	return isReadOnlyParam(name) ||
		strings.EqualFold(name, "standard_conforming_strings") ||
		strings.EqualFold(name, "client_encoding")
}

// truthy reports whether PostgreSQL's parse_bool reads s as true: a prefix
// of "true" or "yes", "on" or "1", ignoring case.
func truthy(s string) bool {
	s = strings.ToLower(s)
	return s != "" && (strings.HasPrefix("true", s) || strings.HasPrefix("yes", s)) ||
		s == "on" || s == "1"
}

// clientOnlyEncodings holds the client-only encodings and their aliases,
// cleaned as by cleanEncoding (PostgreSQL's encnames.c).
var clientOnlyEncodings = map[string]bool{
	"big5": true, "win950": true, "windows950": true,
	"gb18030": true,
	"gbk":     true, "win936": true, "windows936": true,
	"johab": true,
	"sjis":  true, "shiftjis": true, "mskanji": true, "win932": true, "windows932": true,
	"shiftjis2004": true,
	"uhc":          true, "win949": true, "windows949": true,
}

// cleanEncoding lower-cases an encoding name and drops everything but
// letters and digits, as PostgreSQL's clean_encoding_name does.
func cleanEncoding(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteByte(c)
		}
	}
	return b.String()
}

// setVerdict classifies SET and RESET. Guarded parameters may only be set to
// an explicit safe value: RESET, DEFAULT and FROM CURRENT could restore a
// weaker setting. RESET ALL undoes a session-level read-only setting.
func setVerdict(s *pg_query.VariableSetStmt) Verdict {
	name := s.GetName()
	switch s.GetKind() {
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		return write("RESET ALL")
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		return setMultiVerdict(s)
	case pg_query.VariableSetKind_VAR_SET_VALUE:
		if !guardedParam(name) {
			return read
		}
		if args := s.GetArgs(); len(args) == 1 {
			if val, ok := constString(args[0]); ok {
				return CheckSetting(name, val)
			}
		}
		return write("SET " + strings.ToLower(name))
	case pg_query.VariableSetKind_VAR_RESET:
		if guardedParam(name) {
			return write("RESET " + strings.ToLower(name))
		}
		return read
	case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_SET_CURRENT:
		if guardedParam(name) {
			return write("SET " + strings.ToLower(name))
		}
		return read
	}
	return write(reasonUnparseable)
}

// setMultiVerdict classifies SET TRANSACTION, SET SESSION CHARACTERISTICS
// AS TRANSACTION and SET TRANSACTION SNAPSHOT.
func setMultiVerdict(s *pg_query.VariableSetStmt) Verdict {
	switch s.GetName() {
	case "TRANSACTION":
		if !readOnlyOpts(s.GetArgs()) {
			return write("SET TRANSACTION READ WRITE")
		}
		return read
	case "SESSION CHARACTERISTICS":
		if !readOnlyOpts(s.GetArgs()) {
			return write("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
		}
		return read
	case "TRANSACTION SNAPSHOT":
		return read
	}
	return write(reasonUnparseable)
}

// txnVerdict classifies BEGIN, START TRANSACTION, COMMIT, ROLLBACK and
// savepoints. The two-phase commands are refused: COMMIT PREPARED would
// make earlier writes durable.
func txnVerdict(s *pg_query.TransactionStmt) Verdict {
	switch s.GetKind() {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN:
		if !readOnlyOpts(s.GetOptions()) {
			return write("BEGIN READ WRITE")
		}
		return read
	case pg_query.TransactionStmtKind_TRANS_STMT_START:
		if !readOnlyOpts(s.GetOptions()) {
			return write("START TRANSACTION READ WRITE")
		}
		return read
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK,
		pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT,
		pg_query.TransactionStmtKind_TRANS_STMT_RELEASE,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return read
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		return write("PREPARE TRANSACTION")
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		return write("COMMIT PREPARED")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return write("ROLLBACK PREPARED")
	}
	return write(reasonUnparseable)
}

// readOnlyOpts reports whether transaction options leave the transaction
// read-only: no READ WRITE among them. The parser gives READ ONLY as
// transaction_read_only = 1 and READ WRITE as 0.
func readOnlyOpts(opts []*pg_query.Node) bool {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || !isReadOnlyParam(d.GetDefname()) {
			continue
		}
		if v, ok := constString(d.GetArg()); !ok || !truthy(v) {
			return false
		}
	}
	return true
}
