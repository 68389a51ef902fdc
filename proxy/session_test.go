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

// A server synced for one client is in sync for another with the same
// parameters, whatever order they came in; one whose values differ, or a
// server a RESET took off its client's values, is synced.
func TestSyncFollowsParameterProfiles(t *testing.T) {
	p, db := unitProxy(t, "transaction")
	pr := newPair(p, db, poolTransaction)
	b, first := pr.b, pr.c
	b.params = map[string]string{"application_name": "startup-app", "DateStyle": "ISO, MDY"}
	b.initial = map[string]string{"application_name": "", "DateStyle": "ISO, MDY"}
	client := func(params map[string]string) *client {
		return &client{p: p, db: db, want: newSessionWant(params)}
	}
	same := client(map[string]string{"application_name": "startup-app"})
	other := client(map[string]string{"application_name": "other-app"})
	if b.needsSync(first) || b.needsSync(same) {
		t.Fatal("a server synced for a client needs a sync for one with the same parameters")
	}
	if !b.needsSync(other) {
		t.Fatal("a client with another application_name was not synced")
	}

	// Order does not matter.
	a := client(map[string]string{"application_name": "x", "search_path": "s", "work_mem": "8MB"})
	z := client(map[string]string{"work_mem": "8MB", "search_path": "s", "application_name": "x"})
	if a.profile() != z.profile() {
		t.Fatal("the same parameters in another order make another profile")
	}

	// The client's own SET, reported by the server, moves both in step.
	b.mu.Lock()
	b.inspect('S', []byte("application_name\x00renamed\x00"))
	b.mu.Unlock()
	if b.needsSync(first) {
		t.Fatal("a server that reported the client's own SET needs a sync")
	}
	if !b.needsSync(same) {
		t.Fatal("a client still at startup-app shares a server now at renamed")
	}

	// RESET of a startup value gives the server its own default: resync.
	b.staged = append(b.staged, kv{k: "application_name"})
	b.mu.Lock()
	b.unitDone()
	b.mu.Unlock()
	if !b.needsSync(first) {
		t.Fatal("a RESET to the server's default left the server marked in sync")
	}
	if got := syncSQL(first, b, false); got == "" {
		t.Fatal("no sync SQL after RESET")
	}
}

// TestStatementPins: a statement that may change session state in a way
// pgguard cannot follow pins its client (finding 2 and 3 of issue 24);
// one it follows does not.
func TestStatementPins(t *testing.T) {
	for _, c := range []struct {
		sql string
		pin bool
	}{
		{"SELECT set_config('app.tenant', 'a', false)", false},
		{"select SET_CONFIG('app.tenant', 'a', true)", false},
		{"SELECT * FROM set_config('app.tenant', 'a', false)", true},
		{"SELECT set_config('app.tenant', $1, false)", true},
		{"SELECT set_config('app.tenant', 'a', false) FROM t WHERE false", true},
		{"WITH x AS (SELECT Set_Config('app.tenant', 'a', false)) SELECT * FROM x", true},
		{"SELECT 1 WHERE pg_catalog.set_config('app.tenant', 'a', false) IS NOT NULL", true},
		{"SELECT 'set_config'", false},
		{"DO $$BEGIN PERFORM set_config('app.tenant', 'b', false); END$$", true},
		{"do 'begin null; end'", true},
		{"CALL p()", true},
		{"CREATE TEMP TABLE x (a int)", true},
		{"CREATE TABLE pg_temp.x (a int)", true},
		{"SELECT 1 AS a INTO TEMP x", true},
		{"select 1 as a into temporary table x", true},
		{"CREATE TEMP VIEW v AS SELECT 1", true},
		{"CREATE TABLE x (a int)", false},
		{"SELECT temperature FROM t", false},
		{"SELECT 1", false},
	} {
		e := statementEffect([]byte(c.sql))
		if got := e != nil && e.pin != ""; got != c.pin {
			t.Errorf("%q: pins %v, want %v (%+v)", c.sql, got, c.pin, e)
		}
	}
}
