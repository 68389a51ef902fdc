package localpg

import (
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestPgBouncer(t *testing.T) {
	Require(t, PgBouncerAvailable())
	b, err := StartPgBouncer(PgBouncerOptions{Cluster: pg, PoolMode: "transaction", PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	ctx := testContext(t)
	// PgBouncer 1.18 keeps no prepared statements in transaction mode.
	cfg, err := pgx.ParseConfig(b.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	for i := 0; i < 3; i++ {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := queryString(t, conn, "SELECT current_user"); got != "tester" {
			t.Errorf("current_user through PgBouncer = %q", got)
		}
		conn.Close(ctx)
	}
	n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester' AND client_port IS NOT NULL")
	if err != nil || n < 1 || n > 2 {
		t.Errorf("server sessions behind PgBouncer = %d, %v; want 1..2", n, err)
	}

	cfg.Password = "wrong"
	if conn, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		conn.Close(ctx)
		t.Error("PgBouncer let a wrong password in")
	}

	pid := b.Pid()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("pgbouncer %d still runs after Stop", pid)
	}
	if err := b.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestPgBouncerNeedsCluster(t *testing.T) {
	if _, err := StartPgBouncer(PgBouncerOptions{}); err == nil {
		t.Fatal("StartPgBouncer without a cluster succeeded")
	}
}
