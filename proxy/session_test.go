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
// pgguard cannot follow pins its client (finding 2 and 3 of issue 24), or,
// where the server can tell, makes pgguard learn the session's state after
// its unit (learn.go); one it follows does neither.
func TestStatementPins(t *testing.T) {
	const no, pin, learn = 0, 1, 2
	for _, c := range []struct {
		sql  string
		want int
	}{
		{"SELECT set_config('app.tenant', 'a', false)", no},
		{"select SET_CONFIG('app.tenant', 'a', true)", no},
		{"SELECT * FROM set_config('app.tenant', 'a', false)", learn},
		{"SELECT set_config('app.tenant', $1, false)", learn},
		{"SELECT set_config($1, 'a', false)", pin},
		{"SELECT set_config('app.tenant', 'a', false) FROM t WHERE false", learn},
		{"WITH x AS (SELECT Set_Config('app.tenant', 'a', false)) SELECT * FROM x", learn},
		{"SELECT 1 WHERE pg_catalog.set_config('app.tenant', 'a', false) IS NOT NULL", learn},
		{"SELECT 'set_config'", no},
		{"DO $$BEGIN PERFORM set_config('app.tenant', 'b', false); END$$", learn},
		{"do 'begin null; end'", learn},
		{"CALL p()", learn},
		{"SELECT set_tenant('a')", learn},
		{"SELECT app.set_tenant($1)", learn},
		{`SELECT "setTenant"('a')`, learn},
		{"SELECT * FROM t WHERE f(a) > 0", learn},
		{"SELECT pg_catalog.lower('A'), count(*), now(), coalesce(a, 1) FROM t WHERE a IN (1, 2)", no},
		{"INSERT INTO t (a, b) VALUES (1, 2)", no},
		{"SELECT CAST(a AS numeric(10, 2)), EXISTS (SELECT 1) FROM t", no},
		{"CREATE TEMP TABLE x (a int)", pin},
		{"CREATE TABLE pg_temp.x (a int)", pin},
		{"SELECT 1 AS a INTO TEMP x", pin},
		{"select 1 as a into temporary table x", pin},
		{"CREATE TEMP VIEW v AS SELECT 1", pin},
		{"CREATE TYPE pg_temp.mood AS ENUM ('a', 'b')", pin},
		{"CREATE TYPE pg_temp.pair AS (a int, b int)", pin},
		{"CREATE TYPE pg_temp.r AS RANGE (subtype = int4)", pin},
		{"CREATE TYPE pg_temp.shell", pin},
		{"CREATE DOMAIN pg_temp.pos AS int CHECK (VALUE > 0)", pin},
		{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", pin},
		{"create or replace function PG_TEMP.f(a int) returns int language sql as 'select a'", pin},
		{"CREATE AGGREGATE pg_temp.agg(int) (sfunc = int4pl, stype = int)", pin},
		{"CREATE OPERATOR pg_temp.=== (function = int4eq, leftarg = int, rightarg = int)", pin},
		{"CREATE VIEW pg_temp.v AS SELECT 1", pin},
		{"CREATE SEQUENCE pg_temp.s", pin},
		{"CREATE TABLE pg_temp_3.x (a int)", pin},
		{"CREATE TYPE public.mood AS ENUM ('a')", no},
		{"CREATE DOMAIN pos AS int", no},
		{"CREATE FUNCTION pg_temp_f() RETURNS int LANGUAGE sql AS 'SELECT 1'", no},
		{"CREATE SCHEMA pg_tempest_x", no},
		{"CREATE TABLE x (a int)", no},
		{"SELECT temperature FROM t", no},
		{"SELECT 1", no},
	} {
		e := statementEffect([]byte(c.sql))
		got := no
		switch {
		case e == nil:
		case e.pin != "":
			got = pin
		case e.learn != "":
			got = learn
		}
		if got != c.want {
			t.Errorf("%q: %d, want %d (0 nothing, 1 pin, 2 learn) (%+v)", c.sql, got, c.want, e)
		}
	}
}

// TestCallsFunctionFilter: the cheap filter lets through every text that
// calls a function that is not built in, and spends nothing on texts
// without "(".
func TestCallsFunctionFilter(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT set_tenant('a')":               true,
		"select My_Func ($1)":                  true,
		"SELECT s.f(1)":                        true,
		`SELECT "F"(1)`:                        true,
		"SELECT count(*), lower(a) FROM t":     false,
		"INSERT INTO t (a) VALUES (1)":         false,
		"UPDATE t SET a = 1 WHERE b IN (2)":    false,
		"SELECT 1":                             false,
		"SELECT coalesce(a, 0) FROM t":         false,
		"WITH x AS (SELECT 1) SELECT * FROM x": false,
	} {
		if got := callsFunction([]byte(sql)); got != want {
			t.Errorf("%q: %v, want %v", sql, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { callsFunction([]byte("SELECT count(*), lower(a) FROM t WHERE b IN (1, 2)")) }); n != 0 {
		t.Errorf("%v allocations per text", n)
	}
}

// BenchmarkStatementEffect is what every Query and Parse text costs the
// session bookkeeping: pgbench's TPC-B texts and a read with built-in
// calls, none of which changes session state.
func BenchmarkStatementEffect(b *testing.B) {
	texts := [][]byte{
		[]byte("BEGIN;"),
		[]byte("UPDATE pgbench_accounts SET abalance = abalance + -3541 WHERE aid = 81726;"),
		[]byte("SELECT abalance FROM pgbench_accounts WHERE aid = 81726;"),
		[]byte("UPDATE pgbench_tellers SET tbalance = tbalance + -3541 WHERE tid = 7;"),
		[]byte("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81726, -3541, CURRENT_TIMESTAMP);"),
		[]byte("END;"),
		[]byte("SELECT count(*), max(abalance), coalesce(min(bid), 0) FROM pgbench_accounts WHERE aid IN (1, 2, 3)"),
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		for _, t := range texts {
			if statementEffect(t) != nil {
				b.Fatalf("%q has an effect", t)
			}
		}
	}
}
