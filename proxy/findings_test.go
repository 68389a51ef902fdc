package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

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

// TestServerStates: SHOW SERVERS and /metrics show each server's state
// (active while a session holds it, idle once its session left and the
// reset ran), and state changes are counted.
func TestServerStates(t *testing.T) {
	g := startGuard(t, testConfig("session"))
	ctx := context.Background()
	holder := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	leaver := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if _, err := leaver.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	leaver.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		states := map[string]int{}
		for _, s := range g.Servers() {
			states[s.State]++
		}
		if states["active"] == 1 && states["idle"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server states %v, want one active and one idle", states)
		}
		time.Sleep(20 * time.Millisecond)
	}
	body := scrape(t, g)
	for _, want := range []string{`pgguard_server_connections{database="app",state="active",upstream="primary"} 1`,
		`pgguard_server_connections{database="app",state="idle",upstream="primary"} 1`,
		`pgguard_server_state_transitions_total{database="app",from="active",to="resetting"} 1`,
		`pgguard_server_state_transitions_total{database="app",from="resetting",to="idle"} 1`} {
		if !strings.Contains(body, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// scrape returns g's /metrics text.
func scrape(t testing.TB, g *guard) string {
	t.Helper()
	rec := httptest.NewRecorder()
	g.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
