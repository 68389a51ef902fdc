package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/fleet"
)

// The fleet from the console and over HTTP: SHOW FLEET, GET /fleet, and
// switches flipped fleet-wide (SET read_only = on FLEET, POST
// /switches/{name}?fleet=1, POST /read-only?fleet=1).

// fleetTable lists every live instance, then the fleet's totals per
// database against the cap (instance "TOTAL <database>").
func fleetTable(v fleet.View) Table {
	t := Table{Columns: []string{"instance", "region", "version", "fleet", "database", "server_conns", "leases", "lease_limit",
		"fleet_max_connections", "clients", "waiting", "upstream_refusals", "qps", "p95_ms", "read_only", "disable_workers", "seen"}}
	for _, in := range v.Instances {
		id := in.ID
		if id == v.Self {
			id += " (this)"
		}
		for _, p := range in.Pools {
			t.Rows = append(t.Rows, []string{id, in.Region, in.Version, in.Fleet, p.Database, itoa(p.ServerConns),
				i64(p.Leases.Held), i64(p.Leases.Limit), i64(p.Leases.Cap), itoa(p.Clients), itoa(p.Waiting),
				strconv.FormatUint(p.UpstreamRefusals, 10), f1(in.QPS), f1(in.P95MS), yesNo(in.ReadOnly), yesNo(in.WorkersDisabled), ts(in.Seen)})
		}
	}
	for _, d := range v.Totals {
		t.Rows = append(t.Rows, []string{"TOTAL " + d.Database, "", "", v.Mode, d.Database, itoa(d.ServerConns), i64(d.Leases), "",
			i64(d.Cap), itoa(d.Clients), itoa(d.Waiting), "", "", "", "", "", itoa(d.Instances) + " instances"})
	}
	return t
}

func f1(f float64) string       { return strconv.FormatFloat(f, 'f', 1, 64) }
func isFleetWord(s string) bool { return strings.EqualFold(strings.TrimSpace(s), "fleet") }

// cutFleet strips a trailing FLEET from a SET statement's value.
func cutFleet(value string) (string, bool) {
	f := strings.Fields(value)
	if len(f) == 2 && isFleetWord(f[1]) {
		return f[0], true
	}
	return value, false
}

// setFleetSwitch serves SET read_only|disable_workers = on|off FLEET.
func (c *Console) setFleetSwitch(be *pgproto3.Backend, user, name, value string) error {
	if c.Fleet == nil {
		return fmt.Errorf("SET ... FLEET needs the fleet, which this pgguard runs without")
	}
	on, ok := switchValue(value)
	if !ok {
		return fmt.Errorf("%s takes on or off, not %q", name, value)
	}
	if err := c.Fleet.SetSwitch(context.Background(), strings.ToLower(name), on, "console:"+user); err != nil {
		return err
	}
	be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SET")})
	return nil
}

// fleetView serves GET /fleet.
func (h *HTTP) fleetView(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(h.Fleet.View(r.Context()))
}

// wantsFleet reports whether a switch request asks for a fleet-wide flip
// (?fleet=1, true or on).
func wantsFleet(r *http.Request) bool {
	v, _ := switchValue(r.URL.Query().Get("fleet"))
	return v
}

// flipFleet flips switch name fleet-wide for an HTTP request and answers
// {"name":..., "on":..., "fleet": true}.
func (h *HTTP) flipFleet(w http.ResponseWriter, r *http.Request, name string, on bool, user string) {
	if h.Fleet == nil {
		http.Error(w, "fleet-wide switches need the fleet, which this pgguard runs without", http.StatusConflict)
		return
	}
	if err := h.Fleet.SetSwitch(r.Context(), name, on, "http:"+user); err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"name": name, "on": on, "fleet": true})
}
