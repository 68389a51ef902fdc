// Package neon runs pgguard in front of a simulated Neon endpoint
// (internal/neonsim) and checks the promises that depend on how Neon
// behaves: pgguard never wakes a suspended compute on its own, notices a
// suspend without a round trip, absorbs cold starts, reacts to quota and
// suspension refusals as configured, and models the compute's awake time as
// the simulator's ledger records it. Time is scaled: suspend_after is
// hundreds of milliseconds instead of minutes, on both sides.
package neon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/admin"
	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/internal/neonsim"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// pg is the PostgreSQL under every simulated compute (and the fallback).
var pg *localpg.Cluster

func TestMain(m *testing.M) {
	os.Exit(localpg.Main(m, localpg.Options{User: "app", Password: "secret", Database: "app"}, &pg))
}

const (
	ep        = "ep-quiet-sun-123456"
	appUser   = "app"
	appSecret = "secret"
)

// startSim starts a simulated Neon region with endpoint ep in front of pg.
func startSim(t testing.TB, o neonsim.Options) *neonsim.Sim {
	t.Helper()
	o.Upstream = pg.Addr()
	o.Endpoints = []string{ep}
	s, err := neonsim.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// primaryURL is the URL pgguard dials for ep over n: the endpoint's name
// (for SNI and the certificate) with the port of a splitting relay in front
// of the simulator on the split network.
func primaryURL(t testing.TB, s *neonsim.Sim, n guardtest.Net) string {
	t.Helper()
	raw := s.URL(ep, appUser, appSecret, "app")
	if n.Relay == nil {
		return raw
	}
	r := guardtest.Relay(t, s.Addr(), *n.Relay)
	_, port, _ := net.SplitHostPort(r.Addr())
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort(u.Hostname(), port)
	return u.String()
}

// baseConfig is pgguard with suspend_after as the simulator's, a pool of 4
// and the client user app.
func baseConfig(primary string, suspend time.Duration) *config.Config {
	cfg := config.Default()
	cfg.Databases = map[string]*config.Database{"app": {Primary: primary}}
	cfg.Users = []config.User{{Name: appUser, Password: appSecret}}
	cfg.Admin.Users = []string{appUser}
	cfg.Pool.Size = 4
	cfg.Pool.MaxOverflow = 0
	cfg.QueryLog.Path = ""
	cfg.Budget.SuspendAfter = config.D(suspend)
	cfg.Budget.ComputeUnits = 0.25
	return cfg
}

// guard is pgguard as `pgguard` runs it: proxy, limiter (the budget
// model), cache, query log, dashboard and HTTP endpoints.
type guard struct {
	p    *proxy.Proxy
	lim  *limiter.Limiter
	rc   *cache.Cache
	addr string
	http string // base URL of http_listen
	cfg  *config.Config
}

// startGuard runs pgguard for cfg (validated here) with upstream names
// resolved by s, until the test ends.
func startGuard(t testing.TB, cfg *config.Config, s *neonsim.Sim) *guard {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
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
	rc, err := cache.New(cfg, log, cache.WithRegisterer(m.Registry))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(cfg, log, m)
	if err != nil {
		t.Fatal(err)
	}
	p.QueryLog, p.Limiter, p.Cache, p.LookupHost = ql, lim, rc, s.LookupHost
	dash := dashboard.New(dashboard.Options{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Interval: 100 * time.Millisecond, Window: time.Minute})
	hs := httptest.NewUnstartedServer(nil)
	h := &admin.HTTP{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Dashboard: dash, ListenAddr: hs.Listener.Addr().String()}
	hs.Config.Handler = h.Handler()
	hs.Start()
	g := &guard{p: p, lim: lim, rc: rc, http: hs.URL, cfg: cfg}
	t.Cleanup(func() {
		hs.Close()
		dash.Close()
		ql.Close()
		lim.Close()
		rc.Close()
	})
	console := admin.NewConsole(p, func() error { return nil })
	console.QueryLog, console.Limiter, console.Cache = ql, lim, rc
	p.Console = console.Serve
	g.addr = guardtest.Serve(t, p)
	return g
}

// url is a client URL through pgguard, for database db.
func (g *guard) url(db, app string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&application_name=%s", appUser, appSecret, g.addr, db, app)
}

// connect opens a pgx client through pgguard as application app.
func (g *guard) connect(t testing.TB, app string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, g.url("app", app))
	if err != nil {
		t.Fatalf("connect through pgguard as %s: %v", app, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// reload applies cfg as SIGHUP would.
func (g *guard) reload(t testing.TB, cfg *config.Config) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	g.lim.Reconfigure(cfg)
	g.rc.Reconfigure(cfg)
	g.cfg = cfg
}

// get fetches path from pgguard's HTTP endpoint and returns the body.
func (g *guard) get(t testing.TB, path string) string {
	t.Helper()
	resp, err := http.Get(g.http + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b)
}

// pool is the app database's pool status.
func (g *guard) pool(t testing.TB) proxy.PoolStatus {
	t.Helper()
	for _, ps := range g.p.Pools() {
		if ps.Database == "app" {
			return ps
		}
	}
	t.Fatal("no pool app")
	return proxy.PoolStatus{}
}

// servers is the number of server connections pgguard holds for app.
func (g *guard) servers(t testing.TB) int {
	ps := g.pool(t)
	return ps.ServersActive + ps.ServersIdle + ps.ServersOpening
}

// endpoint is the budget model's view of the simulated compute.
func (g *guard) endpoint(t testing.TB) limiter.EndpointStatus {
	t.Helper()
	for _, e := range g.lim.Budget().Snapshot().Endpoints {
		if e.Endpoint == ep+".us-east-2.aws.neon.tech" {
			return e
		}
	}
	t.Fatalf("budget model has no endpoint %s: %+v", ep, g.lim.Budget().Snapshot().Endpoints)
	return limiter.EndpointStatus{}
}

// scalar runs a one-value query and returns its text.
func scalar(ctx context.Context, c *pgx.Conn, sql string, args ...any) (string, error) {
	var v any
	if err := c.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		return "", err
	}
	return fmt.Sprint(v), nil
}

func itoa(n int) string { return strconv.Itoa(n) }
