// Package admin is pgguard's operator surface: the HTTP endpoints (/metrics,
// /healthz, /readyz, /status, POST /read-only) and the admin console spoken
// over the PostgreSQL protocol on database "pgguard".
package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/pgguard/pgguard/auth"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
)

// HTTP serves pgguard's HTTP endpoints. Extra handlers (e.g. /queries) are
// mounted with Handle.
type HTTP struct {
	Proxy   *proxy.Proxy
	Metrics *metrics.Metrics
	// StatusExtra, when set, adds sections to /status (limiter, failover, ...).
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
	if h.StatusExtra != nil {
		st.Extra = h.StatusExtra()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// readOnly flips the kill switch; body "on" or "off"; admin users only (HTTP basic auth).
func (h *HTTP) readOnly(w http.ResponseWriter, r *http.Request) {
	user, ok := h.authorize(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="pgguard"`)
		http.Error(w, "admin credentials required: a user listed in admin.users, with its password", http.StatusUnauthorized)
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
