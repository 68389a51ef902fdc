package admin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// reply is one HTTP answer.
type reply struct {
	code int
	hdr  http.Header
	body string
}

// send sends one request to srv, with basic auth when user is set and the
// given headers ("Name: value").
func (e *env) send(t *testing.T, srv *httptest.Server, method, path, body, user, pass string, headers ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
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
	return reply{resp.StatusCode, resp.Header, string(b)}
}

// private are the pages that show query texts, client addresses or
// application names; open are those that never do.
var (
	privatePages = []string{"/", "/dashboard/state", "/status", "/queries"}
	openPages    = []string{"/metrics", "/healthz", "/readyz", "/dashboard/history", "/dashboard/assets/app.js", "/dashboard/assets/app.css"}
)

func TestPrivatePagesNeedAuthUnlessLoopback(t *testing.T) {
	cfg := testConfig()
	e := start(t, cfg)
	wildcard := "0.0.0.0:9187"
	public := e.serveHTTP(&wildcard)
	defer public.Close()

	check := func(srv *httptest.Server, where string, wantOpen bool) {
		t.Helper()
		for _, path := range privatePages {
			r := e.send(t, srv, http.MethodGet, path, "", "", "")
			if wantOpen && r.code != http.StatusOK {
				t.Errorf("%s: GET %s without credentials: %d %s, want 200", where, path, r.code, r.body)
			}
			if !wantOpen {
				if r.code != http.StatusUnauthorized || r.hdr.Get("WWW-Authenticate") == "" || strings.Contains(r.body, "SELECT") {
					t.Errorf("%s: GET %s without credentials: %d %q %s, want 401 with a challenge", where, path, r.code, r.hdr.Get("WWW-Authenticate"), r.body)
				}
				if r := e.send(t, srv, http.MethodGet, path, "", appUser, appPass); r.code != http.StatusUnauthorized {
					t.Errorf("%s: GET %s as a non-admin: %d, want 401", where, path, r.code)
				}
				if r := e.send(t, srv, http.MethodGet, path, "", "", "", "X-Requested-With: fetch"); r.code != http.StatusUnauthorized || r.hdr.Get("WWW-Authenticate") != "" {
					t.Errorf("%s: GET %s from a script: %d %q, want 401 without a challenge", where, path, r.code, r.hdr.Get("WWW-Authenticate"))
				}
			}
			if r := e.send(t, srv, http.MethodGet, path, "", adminUser, adminPass); r.code != http.StatusOK {
				t.Errorf("%s: GET %s as admin: %d %s", where, path, r.code, r.body)
			}
		}
		for _, path := range openPages {
			if r := e.send(t, srv, http.MethodGet, path, "", "", ""); r.code != http.StatusOK {
				t.Errorf("%s: GET %s without credentials: %d %s, want 200 (always open)", where, path, r.code, r.body)
			}
		}
	}
	conn := e.connect(t, appUser, appPass, "app", "web")
	mustExec(t, conn, "SELECT 1")
	check(e.http, "loopback, http_auth = auto", true)
	check(public, "0.0.0.0, http_auth = auto", false)
	for addr, open := range map[string]bool{"localhost:9187": true, "[::1]:9187": true, "127.0.0.2:9187": true, "10.0.0.5:9187": false, "[::]:9187": false, "": false} {
		srv := e.serveHTTP(&addr)
		if r := e.send(t, srv, http.MethodGet, "/status", "", "", ""); (r.code == http.StatusOK) != open {
			t.Errorf("listening on %q: GET /status without credentials: %d, want open %t", addr, r.code, open)
		}
		srv.Close()
	}

	always := *cfg
	always.Admin.HTTPAuth = "always"
	if _, err := e.Reload(&always); err != nil {
		t.Fatal(err)
	}
	check(e.http, "loopback, http_auth = always", false)
}

func TestSwitchesEndpoint(t *testing.T) {
	e := start(t, testConfig())
	post := func(path, body, user, pass string, headers ...string) reply {
		return e.send(t, e.http, http.MethodPost, path, body, user, pass, headers...)
	}
	for _, c := range []struct{ user, pass, why string }{
		{"", "", "no credentials"},
		{adminUser, "wrong", "wrong password"},
		{appUser, appPass, "not in admin.users"},
	} {
		if r := post("/switches/read_only", "on", c.user, c.pass); r.code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", c.why, r.code, r.body)
		}
	}
	if e.ReadOnly() {
		t.Fatal("an unauthorized request flipped read-only")
	}
	// Another site's page cannot use a browser's cached admin credentials.
	for _, h := range []string{"Sec-Fetch-Site: cross-site", "Origin: https://evil.example"} {
		if r := post("/switches/read_only", "on", adminUser, adminPass, h); r.code != http.StatusForbidden || e.ReadOnly() {
			t.Errorf("with %s: %d %s, read-only %t; want 403 and no change", h, r.code, r.body, e.ReadOnly())
		}
		if r := post("/read-only", "on", adminUser, adminPass, h); r.code != http.StatusForbidden || e.ReadOnly() {
			t.Errorf("POST /read-only with %s: %d, want 403", h, r.code)
		}
	}

	r := post("/switches/read_only", "on", adminUser, adminPass, "Sec-Fetch-Site: same-origin")
	if r.code != http.StatusOK || !strings.Contains(r.body, `"on":true`) || !e.ReadOnly() {
		t.Fatalf("read_only on as admin: %d %s, ReadOnly() = %t", r.code, r.body, e.ReadOnly())
	}
	conn := e.connect(t, appUser, appPass, "app", "web")
	if _, err := exec(t, conn, "CREATE TABLE switch_probe (id int)"); sqlState(err) != "25006" {
		t.Errorf("write after the switch: %v, want 25006", err)
	}
	if r := post("/switches/read_only", "off", adminUser, adminPass); r.code != http.StatusOK || e.ReadOnly() {
		t.Fatalf("read_only off: %d %s", r.code, r.body)
	}
	mustExec(t, conn, "CREATE TEMP TABLE switch_probe (id int)")

	if r := post("/switches/read_only", "maybe", adminUser, adminPass); r.code != http.StatusBadRequest {
		t.Errorf("body maybe: %d, want 400", r.code)
	}
	if r := post("/switches/suspend_redis", "on", adminUser, adminPass); r.code != http.StatusConflict || !strings.Contains(r.body, "SUSPEND_REDIS") {
		t.Errorf("suspend_redis: %d %s, want 409 naming SUSPEND_REDIS", r.code, r.body)
	}
	if r := post("/switches/nope", "on", adminUser, adminPass); r.code != http.StatusNotFound || !strings.Contains(r.body, "read_only, disable_workers, suspend_redis") {
		t.Errorf("unknown switch: %d %s, want 404 listing the switches", r.code, r.body)
	}
}
