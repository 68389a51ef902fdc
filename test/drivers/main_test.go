// Package drivers proves that real PostgreSQL drivers cannot tell pgguard's
// transaction pooling from a direct connection (issue 3): pgx in every
// QueryExecMode, database/sql with lib/pq, pgbench, psycopg2 with SQLAlchemy
// and node-postgres, each with many clients on 2 server connections, checking
// the values they get back and the rows they commit.
//
// One PostgreSQL cluster serves the whole package; every test runs its own
// pgguard in-process on 127.0.0.1:0 in front of it.
package drivers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/faultnet"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// pg is the PostgreSQL every test in this package reaches through pgguard.
var pg *localpg.Cluster

const (
	// testUser and testPassword are what clients log in to pgguard with.
	testUser     = "app"
	testPassword = "secret"
	// pgUser is the role pgguard's server connections use; tables the
	// tests create are granted to it.
	pgUser = "tester"
)

// TestMain starts the package's PostgreSQL; without one installed it skips
// the package, or fails it when CI is set.
func TestMain(m *testing.M) {
	os.Exit(localpg.Main(m, localpg.Options{User: pgUser, Password: "tester-pw", Database: "app"}, &pg))
}

// guard is a running pgguard in front of pg.
type guard struct {
	*proxy.Proxy
	addr    string
	metrics *metrics.Metrics
	relays  []*faultnet.Relay // between pgguard and pg, on a split network
}

// url returns a client URL for database app through pgguard.
func (g *guard) url() string {
	return fmt.Sprintf("postgres://%s:%s@%s/app?sslmode=disable", testUser, testPassword, g.addr)
}

// txConfig returns a transaction-mode config for database "app" on pg with
// the matrix's pool: 2 server connections and no overflow.
func txConfig() *config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = ""
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: testUser, Password: testPassword}}
	cfg.Pool.Mode = "transaction"
	cfg.Pool.Size = 2
	cfg.Pool.MaxOverflow = 0
	cfg.Pool.WaitTimeout = config.D(60 * time.Second)
	cfg.QueryLog.Path = ""
	return cfg
}

// startGuard runs pgguard in-process on a free port until the test ends.
func startGuard(t testing.TB, cfg *config.Config) *guard {
	t.Helper()
	p, m, addr := guardtest.Start(t, cfg)
	return &guard{Proxy: p, addr: addr, metrics: m}
}

// startTxGuard runs pgguard with txConfig.
func startTxGuard(t testing.TB) *guard {
	t.Helper()
	return startGuard(t, txConfig())
}

// startGuardOver runs pgguard with cfg reaching pg over network n
// (guardtest.EachNet gives each network its subtest).
func startGuardOver(t testing.TB, n guardtest.Net, cfg *config.Config) *guard {
	t.Helper()
	rs := n.Route(t, cfg)
	g := startGuard(t, cfg)
	g.relays = rs
	return g
}

// pgxConfig parses url for pgx with the given exec mode and statement caches
// of capacity 4, so that any client with more distinct statements evicts.
func pgxConfig(t testing.TB, url string, mode pgx.QueryExecMode) *pgx.ConnConfig {
	t.Helper()
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = mode
	cc.StatementCacheCapacity = 4
	cc.DescriptionCacheCapacity = 4
	return cc
}

// connect opens a pgx connection, closed when the test ends.
func connect(t testing.TB, cc *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// direct opens a pgx connection straight to pg, bypassing pgguard, to compare
// what a driver sees with what it sees through pgguard.
func direct(t testing.TB, mode pgx.QueryExecMode, params map[string]string) *pgx.Conn {
	t.Helper()
	cc := pgxConfig(t, pg.URL("app"), mode)
	for k, v := range params {
		cc.RuntimeParams[k] = v
	}
	return connect(t, cc)
}

// setup runs sql on pg as the superuser (DDL, grants to pgUser).
func setup(t testing.TB, sql string) {
	t.Helper()
	if err := pg.Exec(context.Background(), sql); err != nil {
		t.Fatalf("setup %q: %v", sql, err)
	}
}

// freshTable drops and creates table name with the given columns, owned by
// pgUser so clients may write it.
func freshTable(t testing.TB, name, columns string) {
	t.Helper()
	setup(t, fmt.Sprintf("DROP TABLE IF EXISTS %s; CREATE TABLE %s (%s); ALTER TABLE %s OWNER TO %s", name, name, columns, name, pgUser))
}

// queryInt runs sql on pg directly and returns its integer result.
func queryInt(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	n, err := pg.QueryInt(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// sqlState returns the SQLSTATE of a PostgreSQL error from pgx or lib/pq,
// or "".
func sqlState(err error) string {
	var se interface{ SQLState() string }
	if errors.As(err, &se) {
		return se.SQLState()
	}
	return ""
}

// firstErrors returns at most n of errs, one per line, with a count of the
// rest, so that 50 failing clients do not flood the output.
func firstErrors(errs []error, n int) string {
	var sb strings.Builder
	for i, err := range errs {
		if i == n {
			fmt.Fprintf(&sb, "... and %d more", len(errs)-n)
			break
		}
		fmt.Fprintf(&sb, "%v\n", err)
	}
	return sb.String()
}

// collect gathers errors from concurrent clients.
type collect struct {
	ch chan error
}

// newCollect makes a collector for up to n errors; more are dropped.
func newCollect(n int) *collect { return &collect{ch: make(chan error, n)} }

// add records err, if any, without blocking.
func (c *collect) add(err error) {
	if err == nil {
		return
	}
	select {
	case c.ch <- err:
	default:
	}
}

// report fails t with the errors recorded so far.
func (c *collect) report(t testing.TB) {
	t.Helper()
	close(c.ch)
	var errs []error
	for err := range c.ch {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		t.Errorf("%d client errors:\n%s", len(errs), firstErrors(errs, 8))
	}
}

// requireTool skips (or fails in CI) when a helper program is missing.
func requireTool(t testing.TB, why string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if localpg.InCI() {
		t.Fatalf("%s is required when CI is set: %v", why, err)
	}
	t.Skipf("%s not available: %v", why, err)
}

// runTool runs a helper program with a timeout and returns its combined output.
func runTool(t testing.TB, timeout time.Duration, dir, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, timeout, err)
	}
	return string(out), err
}
