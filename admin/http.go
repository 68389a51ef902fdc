// Package admin is pgguard's operator surface: the HTTP endpoints (/metrics,
// /healthz, /readyz, /status, /queries, /advice, POST /read-only, POST
// /switches/NAME, POST /disable-workers, POST /cache/reset, and the live
// dashboard of package dashboard at /) and the admin console spoken over the
// PostgreSQL protocol on database "pgguard".
//
// Access: /metrics, /healthz, /readyz and /dashboard/history are open. The
// pages that show query texts, client addresses or application names (/,
// /dashboard/state, /status, /queries, /advice) are open only while the HTTP server
// listens on a loopback address and admin.http_auth is "auto"; otherwise
// they need an admin user's HTTP basic credentials. Changing anything
// always needs them, and browsers on other sites are refused.
package admin

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/auth"
	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// HTTP serves pgguard's HTTP endpoints. Set its fields, then call Handler
// once; extra handlers are mounted with Handle.
type HTTP struct {
	// Proxy is the proxy reported on and controlled (required).
	Proxy *proxy.Proxy
	// Metrics is served at /metrics (required).
	Metrics *metrics.Metrics
	// QueryLog, when set, serves /queries and adds "query_log" to /status.
	QueryLog *querylog.Logger
	// Limiter, when set, adds "limiter" to /status.
	Limiter *limiter.Limiter
	// Cache, when set, adds "cache" to /status and serves POST /cache/reset.
	Cache *cache.Cache
	// Advisor serves GET /advice; nil answers that the advisor is off.
	Advisor *advisor.Analyzer
	// Fleet, when set, serves GET /fleet and fleet-wide switch flips (?fleet=1).
	Fleet *fleet.Fleet
	// StatusExtra, when set, adds more sections to /status.
	StatusExtra func() map[string]any
	// Dashboard, when set, serves the live page at / and its JSON.
	Dashboard *dashboard.Dashboard
	// ListenAddr is the address the HTTP server listens on, for the
	// loopback rule of admin.http_auth. Empty counts as not loopback.
	ListenAddr string

	mux *http.ServeMux
}

// Handler returns the http.Handler serving every endpoint.
func (h *HTTP) Handler() http.Handler {
	if h.mux != nil {
		return h.mux
	}
	h.mux = http.NewServeMux()
	h.mux.Handle("GET /metrics", h.Metrics.Handler())
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.Handle("GET /status", h.private(http.HandlerFunc(h.status)))
	// Changes refuse cross-origin browser requests (Sec-Fetch-Site, Origin):
	// another site cannot ride a browser's cached credentials.
	csrf := http.NewCrossOriginProtection()
	h.mux.Handle("POST /read-only", csrf.Handler(http.HandlerFunc(h.readOnly)))
	h.mux.Handle("POST /switches/{name}", csrf.Handler(http.HandlerFunc(h.setSwitch)))
	if h.Fleet != nil {
		h.mux.Handle("GET /fleet", h.private(http.HandlerFunc(h.fleetView)))
	}
	if h.Limiter != nil {
		h.mux.Handle("POST /disable-workers", csrf.Handler(http.HandlerFunc(h.disableWorkers)))
	}
	if h.QueryLog != nil {
		// Reading the statistics is like /status; forgetting them is an
		// admin action like POST /read-only.
		q := h.QueryLog.Handler()
		h.mux.Handle("GET /queries", h.private(q))
		h.mux.Handle("POST /queries/reset", csrf.Handler(h.adminOnly(q)))
		h.mux.Handle("DELETE /queries", csrf.Handler(h.adminOnly(q)))
	}
	h.mux.Handle("GET /advice", h.private(http.HandlerFunc(h.advice))) // a nil Advisor says it is off
	if d := h.Dashboard; d != nil {
		h.mux.Handle("GET /{$}", h.private(d.Page()))
		h.mux.Handle("GET /dashboard/assets/", d.Assets())
		h.mux.Handle("GET /dashboard/state", h.private(d.State(h.switches)))
		h.mux.Handle("GET /dashboard/history", d.History())
	}
	if h.Cache != nil {
		h.mux.Handle("POST /cache/reset", csrf.Handler(h.adminOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.Cache.Reset(r.Context())
			w.WriteHeader(http.StatusNoContent)
		}))))
	}
	return h.mux
}

// Handle mounts an extra handler.
func (h *HTTP) Handle(pattern string, handler http.Handler) {
	h.Handler()
	h.mux.Handle(pattern, handler)
}

func (h *HTTP) readyz(w http.ResponseWriter, r *http.Request) {
	degraded := h.Proxy.Degraded()
	if !h.Proxy.Ready() {
		http.Error(w, strings.Join(append([]string{"not ready: no upstream can serve"}, degraded...), "\n"), http.StatusServiceUnavailable)
		return
	}
	if len(degraded) > 0 {
		io.WriteString(w, "ready, degraded:\n"+strings.Join(degraded, "\n")+"\n")
		return
	}
	io.WriteString(w, "ready\n")
}

func (h *HTTP) status(w http.ResponseWriter, r *http.Request) {
	st := h.Proxy.Status()
	st.Extra = h.statusExtra()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// statusExtra returns the /status sections beyond the proxy's own, or nil.
func (h *HTTP) statusExtra() map[string]any {
	var extra map[string]any
	if h.StatusExtra != nil {
		extra = h.StatusExtra()
	}
	if h.QueryLog == nil && h.Limiter == nil && h.Cache == nil {
		return extra
	}
	if extra == nil {
		extra = map[string]any{}
	}
	if h.Limiter != nil {
		extra["limiter"] = h.Limiter.Status()
	}
	if h.Cache != nil {
		extra["cache"] = h.Cache.Status()
	}
	if h.QueryLog != nil {
		st := h.QueryLog.Stats()
		extra["query_log"] = map[string]any{
			"dropped": h.QueryLog.Dropped(),
			"shapes":  st.Len(),
			"evicted": st.Evicted(),
		}
	}
	return extra
}

// adminOnly wraps next so that only admin users (HTTP basic auth) reach it.
func (h *HTTP) adminOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := h.authorize(r); !ok {
			unauthorized(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// private wraps a page that shows query texts, client addresses or
// application names: open while open() holds, else admin users only.
func (h *HTTP) private(next http.Handler) http.Handler {
	admin := h.adminOnly(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.open() {
			next.ServeHTTP(w, r)
			return
		}
		admin.ServeHTTP(w, r)
	})
}

// open reports whether private pages need no credentials: admin.http_auth
// is "auto" and the HTTP server listens on a loopback address. The address
// is the listener's, not the config's: http_listen changes only at restart.
func (h *HTTP) open() bool {
	return h.Proxy.Config().Admin.HTTPAuth == "auto" && isLoopback(h.ListenAddr)
}

// isLoopback reports whether hostport's host is "localhost" or a loopback IP.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// unauthorized answers 401. A script's request (X-Requested-With set, as the
// dashboard's are) gets no WWW-Authenticate challenge, so the browser shows
// no login dialog and the page asks for the credentials itself.
func unauthorized(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Requested-With") == "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="pgguard"`)
	}
	http.Error(w, "admin credentials required: a user listed in admin.users, with its password", http.StatusUnauthorized)
}

// readOnly flips the kill switch; body "on" or "off"; admin users only (HTTP basic auth).
func (h *HTTP) readOnly(w http.ResponseWriter, r *http.Request) {
	user, ok := h.authorize(r)
	if !ok {
		unauthorized(w, r)
		return
	}
	on, ok := onOff(w, r)
	if !ok {
		return
	}
	if wantsFleet(r) {
		h.flipFleet(w, r, "read_only", on, user)
		return
	}
	h.Proxy.SetReadOnly(on, "http:"+user)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]bool{"read_only": h.Proxy.ReadOnly()})
}

// onOff reads a request body of "on" or "off" (or true/false, 1/0); on
// anything else it answers 400 and returns false.
func onOff(w http.ResponseWriter, r *http.Request) (on, ok bool) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64))
	switch strings.ToLower(strings.TrimSpace(string(body))) {
	case "on", "true", "1":
		return true, true
	case "off", "false", "0":
		return false, true
	}
	http.Error(w, `body must be "on" or "off"`, http.StatusBadRequest)
	return false, false
}

// authorize checks HTTP basic credentials against admin.users and [[users]].
func (h *HTTP) authorize(r *http.Request) (string, bool) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", false
	}
	cfg := h.Proxy.Config()
	u, known := cfg.User(user)
	if !known || !cfg.IsAdmin(user) {
		return "", false
	}
	if auth.CheckPassword(user, pass, u.Password) {
		return user, true
	}
	return "", false
}
