package localpg

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// queryString returns the one text value sql yields on conn.
func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestClusterRoleNeedsPassword(t *testing.T) {
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if got := queryString(t, conn, "SELECT current_user"); got != "tester" {
		t.Errorf("current_user = %q, want tester", got)
	}
	if got := queryString(t, conn, "SELECT current_database()"); got != "app" {
		t.Errorf("current_database() = %q, want app", got)
	}
	if got := queryString(t, conn, "SELECT datdba::regrole::text FROM pg_database WHERE datname = 'app'"); got != "tester" {
		t.Errorf("owner of app = %q, want tester", got)
	}
	// The password is stored as a SCRAM verifier and checked.
	if got := queryString(t, conn, "SHOW password_encryption"); got != "scram-sha-256" {
		t.Errorf("password_encryption = %q", got)
	}
	cfg, err := pgx.ParseConfig(pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "wrong"
	_, err = pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("connect with a wrong password: %v, want SQLSTATE 28P01", err)
	}
}

func TestClusterSuperuser(t *testing.T) {
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, pg.SuperURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if got := queryString(t, conn, "SELECT current_user"); got != "postgres" {
		t.Errorf("current_user = %q, want postgres", got)
	}
	// Exec runs several statements without arguments, in Options.Database.
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS t; CREATE TABLE t (v int); GRANT ALL ON t TO tester"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "INSERT INTO t SELECT generate_series(1, $1::int)", 7); err != nil {
		t.Fatal(err)
	}
	if n, err := pg.QueryInt(ctx, "SELECT count(*) FROM t"); err != nil || n != 7 {
		t.Fatalf("count = %d, %v; want 7", n, err)
	}
	if n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", "localpg"); err != nil || n != 1 {
		t.Fatalf("localpg sessions = %d, %v; want 1 (its own)", n, err)
	}
	if n, err := pg.QueryInt(ctx, "SELECT coalesce($1::int, 5)", nil); err != nil || n != 5 {
		t.Fatalf("a nil argument: %d, %v; want 5 (NULL)", n, err)
	}
}

func TestClusterSettingsAndStop(t *testing.T) {
	t0 := time.Now()
	c, err := Start(Options{MaxConnections: 40, Settings: map[string]string{"log_statement": "all", "work_mem": "'8MB'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started a cluster in %v", time.Since(t0))
	defer c.Stop()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, c.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	for sql, want := range map[string]string{
		"SHOW log_statement":        "all",
		"SHOW work_mem":             "8MB",
		"SHOW max_connections":      "40",
		"SHOW fsync":                "off",
		"SHOW listen_addresses":     "127.0.0.1",
		"SELECT current_user":       "app",
		"SELECT current_database()": "app",
	} {
		if got := queryString(t, conn, sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}
	conn.Close(ctx)
	if log, err := os.ReadFile(c.LogFile()); err != nil || !strings.Contains(string(log), "SHOW work_mem") {
		t.Errorf("log_statement = all did not log to %s (%v)", c.LogFile(), err)
	}

	pid := c.Pid()
	start, err := procStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if (stamp{pid, start}).alive() {
		t.Errorf("postmaster %d still runs after Stop", pid)
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop: %v", c.Dir(), err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Restart(); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

func TestClusterStopImmediateRestart(t *testing.T) {
	c, err := Start(Options{User: "u", Password: "p", Database: "d"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx := testContext(t)
	if err := c.Exec(ctx, "CREATE TABLE kept (v int); SET synchronous_commit = on; INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.URL("d"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	port := c.Port()

	if err := c.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	if c.Pid() != 0 {
		t.Error("Pid() != 0 after StopImmediate")
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("a session survived StopImmediate")
	}
	if _, err := c.QueryInt(ctx, "SELECT 1"); err == nil {
		t.Error("connected while stopped")
	}
	if err := c.StopImmediate(); err != nil {
		t.Errorf("second StopImmediate: %v", err)
	}

	t0 := time.Now()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted after an immediate stop (crash recovery) in %v", time.Since(t0))
	if c.Port() != port {
		t.Errorf("port changed from %d to %d", port, c.Port())
	}
	if n, err := c.QueryInt(ctx, "SELECT v FROM kept"); err != nil || n != 42 {
		t.Fatalf("after restart: %d, %v; want 42", n, err)
	}
	// Restart of a running server shuts it down first.
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, c.URL("d"))
	if err != nil {
		t.Fatal(err)
	}
	conn2.Close(ctx)
}

func TestClusterURL(t *testing.T) {
	cfg, err := pgx.ParseConfig(pg.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "tester" || cfg.Password != testPassword || cfg.Database != "app" || cfg.Host != "127.0.0.1" || int(cfg.Port) != pg.Port() {
		t.Errorf("URL(\"\") = %s parses to %s:%s@%s:%d/%s", pg.URL(""), cfg.User, cfg.Password, cfg.Host, cfg.Port, cfg.Database)
	}
	if cfg.TLSConfig != nil {
		t.Error("URL does not disable TLS")
	}
	su, err := pgx.ParseConfig(pg.SuperURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if su.User != "postgres" || su.Password != "" || su.Database != "postgres" {
		t.Errorf("SuperURL = %s", pg.SuperURL("postgres"))
	}
}
