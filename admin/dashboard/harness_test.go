package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/admin"
	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// pg is the real PostgreSQL behind every pgguard these tests start.
var pg *localpg.Cluster

func TestMain(m *testing.M) {
	os.Exit(localpg.Main(m, localpg.Options{User: "tester", Password: "tester-pw", Database: "app"}, &pg))
}

const (
	appUser   = "app"
	appPass   = "app-secret-pw"
	adminUser = "admin"
	adminPass = "admin-secret-pw"
)

// env is an in-process pgguard wired as cmd/pgguard wires it, with the
// dashboard sampling every 200 ms and keeping a minute.
type env struct {
	*proxy.Proxy
	addr string // client listener
	http *httptest.Server
	ql   *querylog.Logger
	dash *dashboard.Dashboard
}

func testConfig() *config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: appUser, Password: appPass}, {Name: adminUser, Password: adminPass}}
	cfg.Admin.Users = []string{adminUser}
	cfg.Pool.Size = 2
	cfg.Pool.MaxOverflow = 1
	cfg.QueryLog.Path = ""
	cfg.QueryLog.Slow = config.D(20 * time.Millisecond)
	cfg.Limits = []config.Limit{{Name: "workers", ApplicationName: "worker", QueriesPerMinute: 6000, Burst: 100, Action: "delay", MaxDelay: config.D(time.Second)}}
	cfg.Cache = []config.CacheRule{{Name: "items", Query: "SELECT name FROM dash_items WHERE id = $1", TTL: config.D(time.Minute), MaxEntryBytes: 1 << 20}}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	return cfg
}

// start runs pgguard with its HTTP endpoints until the test ends.
func start(t testing.TB, cfg *config.Config) *env {
	t.Helper()
	guardtest.CheckGoroutines(t)
	log := guardtest.Logger()
	m := metrics.New()
	ql, err := querylog.New(cfg.QueryLog, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ql.Collectors() {
		m.Registry.MustRegister(c)
	}
	lim, err := limiter.New(cfg, log, limiter.WithRegisterer(m.Registry))
	if err != nil {
		t.Fatal(err)
	}
	// With a fleet Redis, the fleet is wired as cmd/pgguard wires it.
	var fl *fleet.Fleet
	var popts []proxy.Option
	if cfg.FleetRedisURL() != "" {
		if fl, err = fleet.New(cfg, log, fleet.WithRegisterer(m.Registry)); err != nil {
			t.Fatal(err)
		}
		popts = append(popts, proxy.WithFleet(fl))
	}
	p, err := proxy.New(cfg, log, m, popts...)
	if err != nil {
		t.Fatal(err)
	}
	if fl != nil {
		fl.Describe = func() fleet.Instance {
			in := fleet.Instance{Version: "test", ReadOnly: p.ReadOnly(), Clients: len(p.Clients())}
			for _, ps := range p.Pools() {
				in.Pools = append(in.Pools, fleet.Pool{Database: ps.Database, ServerConns: ps.ServersActive + ps.ServersIdle + ps.ServersOpening})
			}
			return in
		}
		fl.Switch = func(name string, on bool, who string) {
			if name == "read_only" {
				p.SetReadOnly(on, who)
			}
		}
		fl.Start()
	}
	rc, err := cache.New(cfg, log, cache.WithRegisterer(m.Registry))
	if err != nil {
		t.Fatal(err)
	}
	p.QueryLog, p.Limiter, p.Cache = ql, lim, rc
	adv := advisor.New(advisor.Options{})
	ql.SetObserver(adv.Observe)
	e := &env{Proxy: p, ql: ql}
	e.dash = dashboard.New(dashboard.Options{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Fleet: fl, Interval: 200 * time.Millisecond, Window: time.Minute})
	e.http = httptest.NewUnstartedServer(nil)
	h := &admin.HTTP{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Fleet: fl, Advisor: adv, Dashboard: e.dash, ListenAddr: e.http.Listener.Addr().String()}
	e.http.Config.Handler = h.Handler()
	e.http.Start()
	t.Cleanup(func() { // after Serve's cleanup has closed the proxy
		e.http.Close()
		e.dash.Close()
		ql.Close()
		lim.Close()
		rc.Close()
		if fl != nil {
			fl.Close()
		}
		http.DefaultClient.CloseIdleConnections()
	})
	e.addr = guardtest.Serve(t, p)
	return e
}

// connect opens a connection through pgguard as the app user, closed when
// the test ends.
func (e *env) connect(t testing.TB, app string) *pgconn.PgConn {
	t.Helper()
	cc, err := pgconn.ParseConfig(fmt.Sprintf("postgres://%s:%s@%s/app?sslmode=disable", appUser, appPass, e.addr))
	if err != nil {
		t.Fatal(err)
	}
	cc.RuntimeParams["application_name"] = app
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// exec runs sql (simple protocol) and returns its error.
func exec(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql).ReadAll()
	return err
}

func mustExec(t testing.TB, conn *pgconn.PgConn, sql string) {
	t.Helper()
	if err := exec(conn, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
