package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
)

// TestSessionRefusalInTransaction (finding 1): in session mode, a query the
// limiter refuses inside a transaction block is answered with the server's
// real transaction status, and the transaction goes on.
func TestSessionRefusalInTransaction(t *testing.T) {
	cfg := testConfig("session")
	cfg.Limits = []config.Limit{{Name: "tight", ApplicationName: "tight", QueriesPerHour: 1, Burst: 2, Action: "reject"}}
	lim, err := limiter.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, g.url("app")+"&application_name=tight")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "SELECT 2").ReadAll()
	if pgCode(err) != "53400" {
		t.Fatalf("third query: %v, want 53400", err)
	}
	if s := conn.TxStatus(); s != 'T' {
		t.Fatalf("client told transaction status %q after the refusal; the server is in 'T'", s)
	}
}

// TestFailedParameterSync (finding 2): when a server cannot take a client's
// session parameters, pgguard closes that server and runs the client's
// statement on another one, with its parameters, instead of dropping them.
// plpgsql reserves its prefix once loaded, so "plpgsql.x" is a valid
// startup option on a fresh server and an error on one that ran plpgsql.
func TestFailedParameterSync(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 1
	g := startGuard(t, cfg)
	ctx := context.Background()
	loader := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := loader.Exec(ctx, "DO $$ BEGIN PERFORM 1; END $$"); err != nil {
		t.Fatal(err)
	}
	var loadedPID int
	if err := loader.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&loadedPID); err != nil {
		t.Fatal(err)
	}
	loader.Close(ctx)

	client := connect(t, g.url("app")+"&options=-c%20plpgsql.pgguard_test%3D42", pgx.QueryExecModeSimpleProtocol)
	var pid int
	var value string
	if err := client.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('plpgsql.pgguard_test')").Scan(&pid, &value); err != nil {
		t.Fatalf("the client's statement failed instead of moving to another server: %v", err)
	}
	if pid == loadedPID || value != "42" {
		t.Fatalf("ran on server %d (the one that refused the parameter is %d) with plpgsql.pgguard_test = %q", pid, loadedPID, value)
	}
	n, err := pg.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.Itoa(loadedPID))
	if err != nil || n != 0 {
		t.Fatalf("the server that could not take the parameters is still open (%d, %v)", n, err)
	}
}
