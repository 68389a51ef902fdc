package admin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/admin"
	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"

	"github.com/pgguard/pgguard/internal/guardtest"
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

// env is an in-process pgguard wired as cmd/pgguard wires it: proxy, query
// log, limiter, console and HTTP endpoints.
type env struct {
	*proxy.Proxy
	addr    string // client listener
	http    *httptest.Server
	client  *http.Client
	ql      *querylog.Logger
	lim     *limiter.Limiter
	m       *metrics.Metrics
	dash    *dashboard.Dashboard
	cache   *cache.Cache
	adv     *advisor.Analyzer
	reloads atomic.Int32
	// reloadErr, when set, is what RELOAD returns.
	reloadErr atomic.Pointer[error]
}

// testConfig returns a config with database "app" on pg, transaction mode,
// one [[limits]] rule "workers" for application_name "worker" and one
// [[cache]] rule "branding".
func testConfig() *config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = ""
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: appUser, Password: appPass}, {Name: adminUser, Password: adminPass}}
	cfg.Admin.Users = []string{adminUser}
	cfg.Pool.Size = 2
	cfg.Pool.MaxOverflow = 0
	cfg.Pool.WaitTimeout = config.D(10 * time.Second)
	cfg.QueryLog.Path = ""
	cfg.Limits = []config.Limit{{Name: "workers", ApplicationName: "worker", QueriesPerMinute: 600, Burst: 10, Action: "delay", MaxDelay: config.D(time.Second), MaxConnections: 1}}
	cfg.Cache = []config.CacheRule{{Name: "branding", Query: "SELECT * FROM tenant_branding WHERE tenant_id = $1", TTL: config.D(time.Minute), MaxEntryBytes: config.DefaultCacheMaxEntryBytes}}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	return cfg
}

// start runs pgguard in-process until the test ends, and checks that it
// leaves no goroutine behind.
func start(t *testing.T, cfg *config.Config) *env {
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
	rc, err := cache.New(cfg, log, cache.WithRegisterer(m.Registry))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(cfg, log, m)
	if err != nil {
		t.Fatal(err)
	}
	p.QueryLog, p.Limiter = ql, lim
	adv := advisor.New(advisor.Options{})
	ql.SetObserver(adv.Observe)
	e := &env{Proxy: p, ql: ql, lim: lim, cache: rc, adv: adv}

	console := admin.NewConsole(p, func() error {
		e.reloads.Add(1)
		if err := e.reloadErr.Load(); err != nil {
			return *err
		}
		if _, err := p.Reload(cfg); err != nil {
			return err
		}
		lim.Reconfigure(cfg)
		rc.Reconfigure(cfg)
		return ql.Reconfigure(cfg.QueryLog)
	})
	console.QueryLog, console.Limiter, console.Cache = ql, lim, rc
	console.Views["advice"] = console.AdviceView(adv)
	p.Console = console.Serve
	e.dash = dashboard.New(dashboard.Options{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim})
	e.m = m
	e.http = e.serveHTTP(nil)
	e.client = &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}

	t.Cleanup(func() { // runs after Serve's cleanup has closed the proxy
		e.client.CloseIdleConnections()
		e.http.Close()
		e.dash.Close()
		ql.Close()
		lim.Close()
		rc.Close()
	})
	e.addr = guardtest.Serve(t, p)
	return e
}

// serveHTTP serves the HTTP endpoints on a new loopback listener. listenAddr,
// when set, is the address they believe they listen on (the loopback rule of
// admin.http_auth); nil uses the real one. The caller closes the server.
func (e *env) serveHTTP(listenAddr *string) *httptest.Server {
	srv := httptest.NewUnstartedServer(nil)
	h := &admin.HTTP{Proxy: e.Proxy, Metrics: e.m, QueryLog: e.ql, Limiter: e.lim, Cache: e.cache, Advisor: e.adv, Dashboard: e.dash, ListenAddr: srv.Listener.Addr().String()}
	if listenAddr != nil {
		h.ListenAddr = *listenAddr
	}
	srv.Config.Handler = h.Handler()
	srv.Start()
	return srv
}

// url is a client URL through pgguard for user on database db.
func (e *env) url(user, pass, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, pass, e.addr, db)
}

// connect opens a pgconn connection through pgguard, closed when the test ends.
func (e *env) connect(t *testing.T, user, pass, db, app string) *pgconn.PgConn {
	t.Helper()
	conn, err := e.dial(user, pass, db, app)
	if err != nil {
		t.Fatalf("connect %s@%s through pgguard: %v", user, db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *env) dial(user, pass, db, app string) (*pgconn.PgConn, error) {
	cc, err := pgconn.ParseConfig(e.url(user, pass, db))
	if err != nil {
		return nil, err
	}
	if app != "" {
		cc.RuntimeParams["application_name"] = app
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cc)
}

// console opens an admin console session.
func (e *env) console(t *testing.T) *pgconn.PgConn {
	return e.connect(t, adminUser, adminPass, "pgguard", "")
}

// result is one console answer: column names and text rows.
type result struct {
	cols []string
	rows [][]string
	tag  string
}

// col returns the values of column name.
func (r result) col(t *testing.T, name string) []string {
	t.Helper()
	for i, c := range r.cols {
		if c == name {
			var v []string
			for _, row := range r.rows {
				v = append(v, row[i])
			}
			return v
		}
	}
	t.Fatalf("no column %q in %v", name, r.cols)
	return nil
}

// row returns the first row whose column key equals value, as a map.
func (r result) row(t *testing.T, key, value string) map[string]string {
	t.Helper()
	for i, v := range r.col(t, key) {
		if v == value {
			m := map[string]string{}
			for j, c := range r.cols {
				m[c] = r.rows[i][j]
			}
			return m
		}
	}
	t.Fatalf("no row with %s = %q in %v", key, value, r.rows)
	return nil
}

// exec runs sql (simple protocol) and returns its last result. (It reads
// the column names itself: pgconn's Result.Read keeps them only when there
// are rows.)
func exec(t *testing.T, conn *pgconn.PgConn, sql string) (result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mrr := conn.Exec(ctx, sql)
	var r result
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		r = result{}
		for _, f := range rr.FieldDescriptions() {
			r.cols = append(r.cols, f.Name)
		}
		for rr.NextRow() {
			var vals []string
			for _, v := range rr.Values() {
				vals = append(vals, string(v))
			}
			r.rows = append(r.rows, vals)
		}
		tag, err := rr.Close()
		if err != nil {
			mrr.Close()
			return result{}, err
		}
		r.tag = tag.String()
	}
	return r, mrr.Close()
}

// mustExec is exec that fails the test on an error.
func mustExec(t *testing.T, conn *pgconn.PgConn, sql string) result {
	t.Helper()
	r, err := exec(t, conn, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return r
}

// sqlState returns err's SQLSTATE, or "" when it carries none.
func sqlState(err error) string {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pe.Code
	}
	return ""
}

// get fetches path from the HTTP endpoints and returns status and body.
func (e *env) get(t *testing.T, path string) (int, string) {
	t.Helper()
	return e.do(t, http.MethodGet, path, "", "", "")
}

// do sends one HTTP request, with basic auth when user is set.
func (e *env) do(t *testing.T, method, path, body, user, pass string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
