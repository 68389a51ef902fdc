package config

import (
	"slices"
	"strings"
	"testing"
)

// PGGUARD_FLEET_MAX_CONNECTIONS lands in the NEON_DATABASE_URL entry; a bad
// value names the variable; a static share above the cap is refused.
func TestFleetEnvAndValidation(t *testing.T) {
	t.Chdir(t.TempDir())
	c, err := Load("", envMap(map[string]string{EnvPrimaryURL: testURL, EnvFleetMaxConnections: " 90 "}))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Databases["neondb"].FleetMaxConnections; got != 90 {
		t.Fatalf("fleet_max_connections = %d, want 90", got)
	}
	if o := c.Origin("databases.neondb.fleet_max_connections"); o != EnvFleetMaxConnections {
		t.Errorf("origin %q", o)
	}
	_, err = Load("", envMap(map[string]string{EnvPrimaryURL: testURL, EnvFleetMaxConnections: "many"}))
	if err == nil || !strings.Contains(err.Error(), EnvFleetMaxConnections) || !strings.Contains(err.Error(), "fleet_max_connections") {
		t.Fatalf("bad env value: %v", err)
	}
	c.Databases["neondb"].FleetStaticShare = 91
	c.Fleet.LeaseTTL = D(0)
	err = c.Validate()
	for _, want := range []string{"databases.neondb.fleet_static_share", "fleet.lease_ttl"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to name %s", err, want)
		}
	}
}

// A cap changes live, but setting one where there was none needs a restart.
func TestFleetDiff(t *testing.T) {
	old := diffBase()
	new := old.clone()
	new.Databases["app"].FleetMaxConnections = 12
	_, restart := Diff(old, new)
	if !slices.Contains(restart, "databases.app.fleet_max_connections") {
		t.Errorf("0 -> 12: restart %v", restart)
	}
	newer := new.clone()
	newer.Databases["app"].FleetMaxConnections = 20
	changed, restart := Diff(new, newer)
	if !slices.Contains(changed, "databases.app.fleet_max_connections") || len(restart) != 0 {
		t.Errorf("12 -> 20: changed %v restart %v", changed, restart)
	}
}
