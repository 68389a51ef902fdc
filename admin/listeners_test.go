package admin_test

import (
	"testing"
)

// TestConsoleShowListeners: a transaction-mode client's LISTEN shows as a
// channel of the database's listening connection, with its subscriber.
func TestConsoleShowListeners(t *testing.T) {
	e := start(t, testConfig())
	app := e.connect(t, appUser, appPass, "app", "worker")
	mustExec(t, app, "LISTEN jobs")
	con := e.console(t)
	ls := mustExec(t, con, "SHOW LISTENERS")
	r := ls.row(t, "channel", "jobs")
	if r["database"] != "app" || r["subscribers"] != "1" || r["state"] != "listening" || r["backend_pid"] == "" || r["dropped"] != "0" {
		t.Errorf("SHOW LISTENERS: %v", r)
	}
	if ls.tag != "SHOW 1" {
		t.Errorf("SHOW LISTENERS tag %q, want SHOW 1", ls.tag)
	}
}
