package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/pgguard/pgguard/admin/dashboard"
)

// switches lists the kill switches the dashboard shows and
// POST /switches/{name} flips. A new switch is one more entry.
func (h *HTTP) switches() []dashboard.Switch {
	sw := []dashboard.Switch{{
		Name: "read_only", Env: "READ_ONLY_MODE",
		Help: "writes get 25006 read_only_sql_transaction; reads go on",
		On:   h.Proxy.ReadOnly,
		Set: func(on bool, who string) error {
			h.Proxy.SetReadOnly(on, who)
			return nil
		},
	}}
	if h.Limiter != nil {
		sw = append(sw, dashboard.Switch{
			Name: "disable_workers", Env: "DISABLE_WORKERS",
			Help: "new transactions of clients a [[limits]] rule marks worker = true get 53400; transactions under way finish; others go on",
			On:   h.Limiter.WorkersDisabled,
			Set: func(on bool, who string) error {
				h.Limiter.SetWorkersDisabled(on, who)
				return nil
			},
		})
		sw = append(sw, dashboard.Switch{
			Name: "suspend_redis", Env: "SUSPEND_REDIS",
			Help: "limiter.redis_url is ignored: limits and budget are per instance (read at start: restart with SUSPEND_REDIS=true to change)",
			On:   func() bool { return h.Limiter.RedisMode() == "suspended" },
		})
	}
	return sw
}

// setSwitch flips the switch named in the path; body "on" or "off"; admin
// users only (HTTP basic auth), like POST /read-only.
func (h *HTTP) setSwitch(w http.ResponseWriter, r *http.Request) {
	user, ok := h.authorize(r)
	if !ok {
		unauthorized(w, r)
		return
	}
	name := r.PathValue("name")
	var names []string
	for _, sw := range h.switches() {
		names = append(names, sw.Name)
		if sw.Name != name {
			continue
		}
		if sw.Set == nil {
			http.Error(w, fmt.Sprintf("%s cannot change while pgguard runs: set %s in the environment and restart", name, sw.Env), http.StatusConflict)
			return
		}
		on, ok := onOff(w, r)
		if !ok {
			return
		}
		if wantsFleet(r) {
			h.flipFleet(w, r, name, on, user)
			return
		}
		if err := sw.Set(on, "http:"+user); err != nil {
			http.Error(w, fmt.Sprintf("%s: %v", name, err), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"name": name, "on": sw.On()})
		return
	}
	http.Error(w, fmt.Sprintf("no switch %q; switches: %s", name, strings.Join(names, ", ")), http.StatusNotFound)
}
