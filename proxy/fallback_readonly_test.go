package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// readOnlyBypasses are the ways a client can ask for a read-write session:
// startup parameters (RuntimeParams, including options=-c), then statements
// run before a write hidden in a function (which the read-only guard cannot
// see, so only the server's default_transaction_read_only stops it).
var readOnlyBypasses = []struct {
	name    string
	startup map[string]string
	before  []string // each in its own round trip; errors are expected and ignored
}{
	{name: "startup parameter", startup: map[string]string{"default_transaction_read_only": "off"}},
	{name: "startup parameter, odd case", startup: map[string]string{"Default_Transaction_Read_Only": "false"}},
	{name: "options -c", startup: map[string]string{"options": "-c default_transaction_read_only=off"}},
	{name: "options --", startup: map[string]string{"options": "--default-transaction-read-only=0"}},
	{name: "options transaction_read_only", startup: map[string]string{"options": "-c transaction_read_only=off"}},
	{name: "SET", before: []string{"SET default_transaction_read_only = off"}},
	{name: "SET SESSION CHARACTERISTICS", before: []string{"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"}},
	{name: "set_config", before: []string{"SELECT set_config('default_transaction_read_only', 'off', false)"}},
	{name: "RESET", before: []string{"RESET default_transaction_read_only"}},
	{name: "RESET ALL", before: []string{"RESET ALL"}},
	{name: "DISCARD ALL", before: []string{"DISCARD ALL"}},
	{name: "SET transaction_read_only", before: []string{"SET transaction_read_only = off"}},
	{name: "a function's set_config", before: []string{"SELECT unlock()"}},
	{name: "startup and a function's set_config",
		startup: map[string]string{"default_transaction_read_only": "off"}, before: []string{"SELECT unlock()"}},
}

// fallbackSetup creates, on c, table w and the functions that write to it
// (sneak) and turn default_transaction_read_only off (unlock).
const fallbackSetup = `CREATE TABLE w (id serial, src text);
	CREATE FUNCTION sneak(src text) RETURNS int LANGUAGE sql AS 'INSERT INTO w (src) VALUES (src) RETURNING id';
	CREATE FUNCTION unlock() RETURNS text LANGUAGE sql AS 'SELECT set_config(''default_transaction_read_only'', ''off'', false)';
	GRANT ALL ON w, w_id_seq TO tester`

// TestReadOnlyFallbackBypass (finding 1 of issue 25): with
// fallback_read_only on, no client's parameter makes the fallback writable:
// every path of readOnlyBypasses, simple and extended protocol, both pool
// modes, sessions opened before and during the outage. The write is a
// function's, so it is the server layer that must refuse it.
func TestReadOnlyFallbackBypass(t *testing.T) {
	primary := startCluster(t, nil)
	fallback := startCluster(t, nil)
	ctx := context.Background()
	for _, c := range []*localpg.Cluster{primary, fallback} {
		if err := c.Exec(ctx, fallbackSetup); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []string{"transaction", "session"} {
		cfg := failoverConfig(mode, primary.URL("app"), fallback.URL("app"))
		g := startGuard(t, cfg)
		open := func(startup map[string]string, exec pgx.QueryExecMode) *pgx.Conn {
			cc, err := pgx.ParseConfig(g.url("app"))
			if err != nil {
				t.Fatal(err)
			}
			cc.DefaultQueryExecMode = exec
			for k, v := range startup {
				cc.RuntimeParams[k] = v
			}
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			conn, err := pgx.ConnectConfig(cctx, cc)
			if err != nil {
				t.Fatalf("%s: connect: %v", mode, err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}
		// A transaction-mode session opened on the primary, asking for read-write.
		var before *pgx.Conn
		if mode == "transaction" {
			before = open(map[string]string{"default_transaction_read_only": "off"}, pgx.QueryExecModeSimpleProtocol)
			if _, err := before.Exec(ctx, "SELECT sneak('primary')"); err != nil {
				t.Fatalf("a write on the primary: %v", err)
			}
		}
		if mode == "transaction" {
			if err := primary.StopImmediate(); err != nil {
				t.Fatal(err)
			}
		}
		guardtest.WaitFor(t, "the switch to the fallback", func() bool {
			conn, err := pgx.Connect(ctx, g.url("app"))
			if err != nil {
				return false
			}
			defer conn.Close(ctx)
			port, err := portOf(ctx, conn)
			return err == nil && port == fallback.Port()
		})
		if before != nil {
			if _, err := before.Exec(ctx, "SELECT sneak('before')"); pgCode(err) != "25006" {
				t.Errorf("%s: a session opened on the primary with default_transaction_read_only=off wrote on the fallback: %v", mode, err)
			}
		}
		for _, bp := range readOnlyBypasses {
			for _, exec := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
				conn := open(bp.startup, exec)
				for _, sql := range bp.before {
					conn.Exec(ctx, sql) // refused (25006) or run: either way the write below must fail
				}
				if _, err := conn.Exec(ctx, "SELECT sneak($1)", mode+" "+bp.name); pgCode(err) != "25006" {
					t.Errorf("%s, %s, %v: a write through a function on the read-only fallback: %v, want SQLSTATE 25006", mode, bp.name, exec, err)
				}
				conn.Close(ctx)
			}
		}
		if mode == "transaction" {
			if err := primary.Restart(); err != nil {
				t.Fatal(err)
			}
			guardtest.WaitFor(t, "the switch back", func() bool { return g.Pools()[0].Upstream == "primary" })
			if err := primary.StopImmediate(); err != nil { // the session-mode round starts on the fallback
				t.Fatal(err)
			}
		}
	}
	n, err := fallback.QueryInt(ctx, "SELECT count(*) FROM w")
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows were written to the read-only fallback", n)
	}
}

// TestReadOnlySwitchStartupBypass: the kill switch, like a read-only
// fallback, is not undone by a client's startup parameters.
func TestReadOnlySwitchStartupBypass(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, `DROP TABLE IF EXISTS w CASCADE; DROP FUNCTION IF EXISTS sneak(text), unlock();`+fallbackSetup); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"transaction", "session"} {
		cfg := testConfig(mode)
		cfg.ReadOnly = true
		g := startGuard(t, cfg)
		for _, bp := range readOnlyBypasses {
			cc, err := pgx.ParseConfig(g.url("app"))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range bp.startup {
				cc.RuntimeParams[k] = v
			}
			conn, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			for _, sql := range bp.before {
				conn.Exec(ctx, sql)
			}
			if _, err := conn.Exec(ctx, "SELECT sneak('switch')"); pgCode(err) != "25006" {
				t.Errorf("%s, %s: a write through a function with read_only on: %v, want SQLSTATE 25006", mode, bp.name, err)
			}
			conn.Close(ctx)
		}
	}
	if n, err := pg.QueryInt(ctx, "SELECT count(*) FROM w"); err != nil || n != 0 {
		t.Errorf("%d rows written with the kill switch on (err %v)", n, err)
	}
}
