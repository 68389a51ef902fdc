package proxy

import "testing"

// TestStatementEffects: what pgguard reads from statement texts for
// prepared statements: SQL DEALLOCATE of one name, and schema changes that
// can make prepared statements stale.
func TestStatementEffects(t *testing.T) {
	for _, c := range []struct {
		sql     string
		dealloc string
		schema  bool
		drops   bool
	}{
		{sql: "DEALLOCATE ps", dealloc: "ps"},
		{sql: `deallocate prepare "Ps"`, dealloc: "Ps"},
		{sql: "DEALLOCATE PS", dealloc: "ps"},
		{sql: "DEALLOCATE ALL", drops: true},
		{sql: "DEALLOCATE ps; SELECT 1"},
		{sql: "ALTER TABLE t ADD COLUMN b int", schema: true},
		{sql: "alter table t alter column a type int8", schema: true},
		{sql: "DROP TYPE mood", schema: true},
		{sql: "DROP TABLE IF EXISTS t", schema: true},
		{sql: "ALTER TYPE mood ADD VALUE 'meh'", schema: true},
		{sql: "ALTER TYPE mood RENAME ATTRIBUTE a TO b", schema: true},
		{sql: "ALTER TABLE t RENAME COLUMN a TO b", schema: true},
		{sql: "ALTER TABLE t SET SCHEMA s", schema: true},
		{sql: "CREATE OR REPLACE VIEW v AS SELECT 1", schema: true},
		{sql: "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", schema: true},
		{sql: "CREATE VIEW v AS SELECT 1"},
		{sql: "CREATE TABLE t (a int)"},
		{sql: "SELECT 1"},
		{sql: "SELECT * FROM alter_log"},
	} {
		e := statementEffect([]byte(c.sql))
		var dealloc string
		var schema, drops bool
		if e != nil {
			dealloc, schema, drops = e.dealloc, e.schema, e.dropsStmts
		}
		if dealloc != c.dealloc || schema != c.schema || drops != c.drops {
			t.Errorf("%q: dealloc %q schema %v drops %v; want %q %v %v", c.sql, dealloc, schema, drops, c.dealloc, c.schema, c.drops)
		}
	}
}
