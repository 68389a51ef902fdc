package admin_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestDisableWorkersSwitch flips the worker kill switch from the console
// and over HTTP, and checks what a worker and a web client see, SHOW LIMITS,
// /status and the gauge.
func TestDisableWorkersSwitch(t *testing.T) {
	cfg := testConfig()
	cfg.Limits[0].Worker = true
	e := start(t, cfg)
	con := e.console(t)
	worker := e.connect(t, appUser, appPass, "app", "worker")
	web := e.connect(t, appUser, appPass, "app", "web")

	if r := mustExec(t, con, "SET disable_workers = on"); r.tag != "SET" || !e.lim.WorkersDisabled() {
		t.Fatalf("SET disable_workers = on: tag %q, on %t", r.tag, e.lim.WorkersDisabled())
	}
	if _, err := exec(t, worker, "SELECT 1"); sqlState(err) != "53400" || !strings.Contains(err.Error(), "DISABLE_WORKERS") {
		t.Errorf("worker with the switch on: %v, want 53400 naming DISABLE_WORKERS", err)
	}
	mustExec(t, web, "SELECT 1")
	limits := mustExec(t, con, "SHOW LIMITS")
	if d := limits.row(t, "name", "disable_workers")["detail"]; !strings.HasPrefix(d, "ON") || !strings.Contains(d, "console:admin") {
		t.Errorf("SHOW LIMITS disable_workers: %q", d)
	}
	if _, body := e.get(t, "/metrics"); !strings.Contains(body, "pgguard_workers_disabled 1") {
		t.Error("pgguard_workers_disabled is not 1 with the switch on")
	}
	if _, err := exec(t, con, "SET disable_workers = sometimes"); sqlState(err) != "42601" {
		t.Errorf("SET disable_workers = sometimes: %v", err)
	}

	// Over HTTP: admins only, body on or off.
	if code, _ := e.do(t, http.MethodPost, "/disable-workers", "off", appUser, appPass); code != http.StatusUnauthorized || !e.lim.WorkersDisabled() {
		t.Errorf("POST by a non-admin: %d, switch on %t", code, e.lim.WorkersDisabled())
	}
	if code, _ := e.do(t, http.MethodPost, "/disable-workers", "maybe", adminUser, adminPass); code != http.StatusBadRequest {
		t.Errorf("body maybe: %d, want 400", code)
	}
	code, body := e.do(t, http.MethodPost, "/disable-workers", "off\n", adminUser, adminPass)
	if code != http.StatusOK || !strings.Contains(body, `"disable_workers":false`) || e.lim.WorkersDisabled() {
		t.Fatalf("POST off as admin: %d %s", code, body)
	}
	mustExec(t, worker, "SELECT 1")
	// The dashboard's switch is the same one.
	code, body = e.do(t, http.MethodPost, "/switches/disable_workers", "on", adminUser, adminPass)
	if code != http.StatusOK || !strings.Contains(body, `"on":true`) || !e.lim.WorkersDisabled() {
		t.Fatalf("POST /switches/disable_workers on: %d %s", code, body)
	}
	e.do(t, http.MethodPost, "/switches/disable_workers", "off", adminUser, adminPass)
	if _, body := e.get(t, "/status"); !strings.Contains(body, `"disable_workers": {`) || !strings.Contains(body, `"by": "http:admin"`) {
		t.Errorf("/status lacks the switch set by http:admin:\n%s", body)
	}
}
