package admin_test

import (
	"net/http"
	"strings"
	"testing"
)

// Without a fleet, a fleet-wide flip is refused with a reason, and nothing
// flips here either.
func TestFleetWideFlipWithoutFleet(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	if _, err := exec(t, con, "SET read_only = on FLEET"); err == nil || !strings.Contains(err.Error(), "fleet") {
		t.Fatalf("SET read_only = on FLEET without a fleet: %v", err)
	}
	code, body := e.do(t, "POST", "/switches/read_only?fleet=1", "on", adminUser, adminPass)
	if code != http.StatusConflict || !strings.Contains(body, "fleet") {
		t.Fatalf("POST /switches/read_only?fleet=1 without a fleet: %d %s", code, body)
	}
	if e.ReadOnly() {
		t.Fatal("a refused fleet-wide flip turned read-only on here")
	}
}
