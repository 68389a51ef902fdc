// Package admin is pgguard's operator surface: the HTTP endpoints (/metrics,
// /healthz, /readyz, /status, /queries, POST /read-only, POST
// /disable-workers, POST /cache/reset) and the admin console spoken over the
// PostgreSQL protocol on database "pgguard".
package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/pgguard/pgguard/auth"
	"github.com/pgguard/pgguard/cache"
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
	// StatusExtra, when set, adds more sections to /status.
	StatusExtra func() map[string]any

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
	h.mux.HandleFunc("GET /status", h.status)
	h.mux.HandleFunc("POST /read-only", h.readOnly)
	if h.Limiter != nil {
		h.mux.HandleFunc("POST /disable-workers", h.disableWorkers)
	}
	if h.QueryLog != nil {
		// Reading the statistics is open like /status; forgetting them is
		// an admin action like POST /read-only.
		q := h.QueryLog.Handler()
		h.mux.Handle("GET /queries", q)
		h.mux.Handle("POST /queries/reset", h.adminOnly(q))
		h.mux.Handle("DELETE /queries", h.adminOnly(q))
	}
	if h.Cache != nil {
		h.mux.Handle("POST /cache/reset", h.adminOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.Cache.Reset(r.Context())
			w.WriteHeader(http.StatusNoContent)
		})))
	}
	return h.mux
}

// Handle mounts an extra handler.
func (h *HTTP) Handle(pattern string, handler http.Handler) {
	h.Handler()
	h.mux.Handle(pattern, handler)
}

func (h *HTTP) readyz(w http.ResponseWriter, r *http.Request) {
	if !h.Proxy.Ready() {
		http.Error(w, "not ready: no upstream can serve", http.StatusServiceUnavailable)
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
			unauthorized(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="pgguard"`)
	http.Error(w, "admin credentials required: a user listed in admin.users, with its password", http.StatusUnauthorized)
}

// readOnly flips the kill switch; body "on" or "off"; admin users only (HTTP basic auth).
func (h *HTTP) readOnly(w http.ResponseWriter, r *http.Request) {
	user, ok := h.authorize(r)
	if !ok {
		unauthorized(w)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64))
	switch strings.ToLower(strings.TrimSpace(string(body))) {
	case "on", "true", "1":
		h.Proxy.SetReadOnly(true, "http:"+user)
	case "off", "false", "0":
		h.Proxy.SetReadOnly(false, "http:"+user)
	default:
		http.Error(w, `body must be "on" or "off"`, http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]bool{"read_only": h.Proxy.ReadOnly()})
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
