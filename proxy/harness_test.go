package proxy_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// pg is the real PostgreSQL every test in this package talks to through pgguard.
var pg *localpg.Cluster

const (
	testUser     = "app"
	testPassword = "secret"
)

func TestMain(m *testing.M) {
	if err := localpg.Available(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "PostgreSQL is required in CI:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping proxy integration tests:", err)
		os.Exit(0)
	}
	var err error
	pg, err = localpg.Start(localpg.Options{User: "tester", Password: "tester-pw", Database: "app"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
		os.Exit(1)
	}
	code := m.Run()
	pg.Stop()
	os.Exit(code)
}

// guard is a running pgguard in front of pg.
type guard struct {
	*proxy.Proxy
	addr    string
	metrics *metrics.Metrics
}

// url returns a client URL for database db through pgguard.
func (g *guard) url(db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", testUser, testPassword, g.addr, db)
}

// testConfig returns a config with database "app" on pg, in mode.
func testConfig(mode string) *config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = ""
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: testUser, Password: testPassword}, {Name: "admin", Password: "admin-pw"}}
	cfg.Admin.Users = []string{"admin"}
	cfg.Pool.Mode = mode
	cfg.Pool.Size = 2
	cfg.Pool.MaxOverflow = 0
	cfg.Pool.WaitTimeout = config.D(10 * time.Second)
	cfg.QueryLog.Path = ""
	return cfg
}

// startGuard runs pgguard in-process on a free port until the test ends;
// setup, when given, runs before Serve (to set hooks such as QueryLog).
func startGuard(t testing.TB, cfg *config.Config, setup ...func(*proxy.Proxy)) *guard {
	t.Helper()
	p, m, addr := guardtest.Start(t, cfg, setup...)
	return &guard{Proxy: p, addr: addr, metrics: m}
}

// connect opens a pgx connection through g with the given exec mode.
func connect(t testing.TB, url string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect through pgguard: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backendsOf counts server connections pgguard holds on pg (by application_name
// unset and user "tester", excluding the superuser's own).
func backendsOf(t testing.TB) int {
	t.Helper()
	n, err := pg.QueryInt(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester' AND backend_type = 'client backend'")
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}
