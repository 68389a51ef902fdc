package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The worker kill switch (DISABLE_WORKERS) from the console and over HTTP;
// the limiter holds it and logs who flipped it.

// switchValue parses on/off as the console accepts them.
func switchValue(v string) (on, ok bool) {
	switch strings.ToLower(strings.Trim(v, "'\" \n\r\t")) {
	case "on", "true", "1", "yes":
		return true, true
	case "off", "false", "0", "no":
		return false, true
	}
	return false, false
}

// setDisableWorkers serves SET disable_workers = on|off.
func (c *Console) setDisableWorkers(be *pgproto3.Backend, user, value string) error {
	if c.Limiter == nil {
		return fmt.Errorf("disable_workers needs the limiter, which this pgguard runs without")
	}
	on, ok := switchValue(value)
	if !ok {
		return fmt.Errorf("disable_workers takes on or off, not %q", value)
	}
	c.Limiter.SetWorkersDisabled(on, "console:"+user)
	be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SET")})
	return nil
}

// disableWorkers flips the worker kill switch; body "on" or "off"; admin
// users only (HTTP basic auth). It answers {"disable_workers": true|false}.
func (h *HTTP) disableWorkers(w http.ResponseWriter, r *http.Request) {
	user, ok := h.authorize(r)
	if !ok {
		unauthorized(w, r)
		return
	}
	on, ok := onOff(w, r)
	if !ok {
		return
	}
	h.Limiter.SetWorkersDisabled(on, "http:"+user)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]bool{"disable_workers": h.Limiter.WorkersDisabled()})
}
