package analyze

import (
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Which function calls make a SELECT uncacheable.
//
// PostgreSQL marks every function immutable, stable or volatile. The names
// built into pg_catalog, with their most volatile overload, are in
// builtins.go (generated from a real server's pg_proc). A cached answer is
// replayed later, in another session, so:
//
//   - volatile built-ins (random(), nextval(), clock_timestamp(),
//     pg_sleep(), gen_random_uuid(), set_config(), ...) are refused;
//   - stable built-ins are accepted when what they depend on is in the
//     cache key (TimeZone, DateStyle, search_path, the role, the database)
//     or changes only with DDL, which invalidates the whole database; those
//     depending on the time, the transaction, the backend or statistics
//     are refused (timeFuncs, sessionFuncs, pg_stat_*);
//   - a function that reads a table named by a text argument
//     (table_to_xml, ...) is refused: its table is invisible here;
//   - any other name is a user or extension function (uuid_generate_v4(),
//     a PL/pgSQL function): its volatility is in the catalog, which pgguard
//     does not query, so a rule must list it in trusted_functions.

// builtins maps each pg_catalog function name to its volatility class: 'i',
// 's' or 'v'.
var builtins = sync.OnceValue(func() map[string]byte {
	m := map[string]byte{}
	for _, l := range []struct {
		names string
		class byte
	}{{builtinImmutable, 'i'}, {builtinStable, 's'}, {builtinVolatile, 'v'}} {
		for _, n := range strings.Fields(l.names) {
			m[strings.ToLower(n)] = l.class
		}
	}
	return m
})

// timeFuncs are stable built-ins whose result depends on the time. age()
// with one argument measures from today (with two it is immutable).
var timeFuncs = map[string]bool{
	"now": true, "statement_timestamp": true, "transaction_timestamp": true,
}

// sessionFuncs are stable built-ins whose result depends on the backend,
// the transaction, settings outside the cache key, or activity.
var sessionFuncs = map[string]bool{
	"current_setting": true, "pg_show_all_settings": true,
	"pg_backend_pid": true, "pg_trigger_depth": true,
	"inet_client_addr": true, "inet_client_port": true, "inet_server_addr": true, "inet_server_port": true,
	"pg_my_temp_schema": true, "pg_is_other_temp_schema": true,
	"pg_listening_channels": true, "pg_cursor": true, "pg_prepared_statement": true,
	"pg_conf_load_time": true, "pg_postmaster_start_time": true,
	"txid_current": true, "txid_current_if_assigned": true, "txid_current_snapshot": true,
	"pg_current_snapshot": true, "pg_current_xact_id": true, "pg_current_xact_id_if_assigned": true,
	"mxid_age": true, "pg_get_replication_slots": true,
	"pg_event_trigger_ddl_commands": true, "pg_event_trigger_dropped_objects": true,
	"pg_event_trigger_table_rewrite_oid": true, "pg_event_trigger_table_rewrite_reason": true,
}

// tableByName are built-ins that read tables named by a text argument.
var tableByName = map[string]bool{
	"table_to_xml": true, "table_to_xml_and_xmlschema": true, "table_to_xmlschema": true,
	"schema_to_xml": true, "schema_to_xml_and_xmlschema": true, "schema_to_xmlschema": true,
	"database_to_xml": true, "database_to_xml_and_xmlschema": true, "database_to_xmlschema": true,
}

// builtinRefusal returns why a call of built-in name with nargs arguments
// may not be cached, as a phrase following "calls name()", or "".
func builtinRefusal(name string, nargs int) string {
	switch {
	case timeFuncs[name], name == "age" && nargs == 1:
		return ": its result depends on the time"
	case sessionFuncs[name], strings.HasPrefix(name, "pg_stat_"):
		return ": its result depends on the session, the transaction or server activity"
	case tableByName[name]:
		return ": it reads a table named by its argument, which pgguard cannot see"
	case builtins()[name] == 'v':
		return ", a volatile function: its result may change from one call to the next"
	}
	return ""
}

// timeValues are the SQL keywords that read the clock.
var timeValues = map[pg_query.SQLValueFunctionOp]string{
	pg_query.SQLValueFunctionOp_SVFOP_CURRENT_DATE:        "CURRENT_DATE",
	pg_query.SQLValueFunctionOp_SVFOP_CURRENT_TIME:        "CURRENT_TIME",
	pg_query.SQLValueFunctionOp_SVFOP_CURRENT_TIME_N:      "CURRENT_TIME",
	pg_query.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP:   "CURRENT_TIMESTAMP",
	pg_query.SQLValueFunctionOp_SVFOP_CURRENT_TIMESTAMP_N: "CURRENT_TIMESTAMP",
	pg_query.SQLValueFunctionOp_SVFOP_LOCALTIME:           "LOCALTIME",
	pg_query.SQLValueFunctionOp_SVFOP_LOCALTIME_N:         "LOCALTIME",
	pg_query.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP:      "LOCALTIMESTAMP",
	pg_query.SQLValueFunctionOp_SVFOP_LOCALTIMESTAMP_N:    "LOCALTIMESTAMP",
}

// timeWords are the special date/time inputs relative to now (PostgreSQL
// docs, "Special Values"), alone or with a time part ('tomorrow 10:00',
// 'today 23:59:59'). A text literal or text-format parameter holding one as
// a word is refused even where it is only text: a rare false refusal,
// never a stale time.
var timeWords = [...]string{"now", "today", "tomorrow", "yesterday"}

// maxTimeLiteral bounds the values read for a time word: a date/time input
// is short, and longer text costs nothing to judge.
const maxTimeLiteral = 64

// IsTimeLiteral reports whether a text value reads as a time relative to
// now: one of 'now', 'today', 'tomorrow', 'yesterday' as a word of it, in
// any case ('Tomorrow 10:00', ' now '): a statement given it as a
// parameter may not be cached. It does not allocate.
func IsTimeLiteral(b []byte) bool {
	if len(b) > maxTimeLiteral {
		return false
	}
	for i := 0; i < len(b); {
		if !isLetter(b[i]) {
			i++
			continue
		}
		j := i
		for j < len(b) && isLetter(b[j]) {
			j++
		}
		for _, w := range timeWords {
			if j-i == len(w) && foldEqual(b[i:j], w) {
				return true
			}
		}
		i = j
	}
	return false
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

// foldEqual reports whether b is w (lower case letters) in any case.
func foldEqual(b []byte, w string) bool {
	for i := range b {
		if b[i]|0x20 != w[i] {
			return false
		}
	}
	return true
}

// IsBuiltin reports whether name (lower case) is a function built into
// pg_catalog. Any other is a user or extension function, which may change
// session state (a set_config inside it) where the text does not show.
func IsBuiltin(name string) bool {
	_, ok := builtins()[name]
	return ok
}

// IsBuiltinBytes is IsBuiltin of a name in bytes, without allocating.
func IsBuiltinBytes(name []byte) bool {
	_, ok := builtins()[string(name)]
	return ok
}
