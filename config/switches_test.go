package config

import (
	"slices"
	"strings"
	"testing"
)

// TestDisableWorkersAndRun: disable_workers from the file and from
// DISABLE_WORKERS (which wins), a rule with only worker = true, [run]
// rewrite_env and PGGUARD_RUN_REWRITE_ENV, and where each value came from.
func TestDisableWorkersAndRun(t *testing.T) {
	p := writeConfig(t, "disable_workers = true\n"+minimal+`
[run]
rewrite_env = ["DATABASE_URL", "REPORTS_URL"]

[[limits]]
name = "workers"
application_name = "availability-worker"
worker = true
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !c.DisableWorkers || len(c.Limits) != 1 || !c.Limits[0].Worker {
		t.Errorf("disable_workers %t, limits %+v", c.DisableWorkers, c.Limits)
	}
	if !slices.Equal(c.Run.RewriteEnv, []string{"DATABASE_URL", "REPORTS_URL"}) {
		t.Errorf("run.rewrite_env = %q", c.Run.RewriteEnv)
	}
	if got := c.Origin("disable_workers"); got != p+":1" {
		t.Errorf("Origin(disable_workers) = %q, want %s:1", got, p)
	}

	c, err = Load(p, envMap(map[string]string{EnvDisableWorkers: "off", EnvRunRewriteEnv: " DATABASE_URL , ,OTHER_URL"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.DisableWorkers || c.Origin("disable_workers") != EnvDisableWorkers {
		t.Errorf("DISABLE_WORKERS=off: disable_workers %t from %s", c.DisableWorkers, c.Origin("disable_workers"))
	}
	if !slices.Equal(c.Run.RewriteEnv, []string{"DATABASE_URL", "OTHER_URL"}) {
		t.Errorf("PGGUARD_RUN_REWRITE_ENV: run.rewrite_env = %q", c.Run.RewriteEnv)
	}

	if d := Default(); d.DisableWorkers || !slices.Equal(d.Run.RewriteEnv, []string{"DATABASE_URL"}) || d.Origin("listen") != "defaults" {
		t.Errorf("defaults: disable_workers %t, rewrite_env %q", d.DisableWorkers, d.Run.RewriteEnv)
	}
}

func TestDisableWorkersBadValues(t *testing.T) {
	p := writeConfig(t, minimal+`
[run]
rewrite_env = ["DATABASE_URL", "BAD NAME", "DATABASE_URL"]
`)
	_, err := Load(p, envMap(map[string]string{EnvDisableWorkers: "sometimes"}))
	got := map[string]string{}
	for _, pr := range problemsOf(t, err) {
		got[pr.Key] += pr.File + ": " + pr.Reason + "\n"
	}
	if !strings.Contains(got["disable_workers"], "DISABLE_WORKERS: \"sometimes\" is not a boolean") {
		t.Errorf("DISABLE_WORKERS=sometimes: %q", got["disable_workers"])
	}
	if !strings.Contains(got["run.rewrite_env"], `"BAD NAME" is not an environment variable name`) ||
		!strings.Contains(got["run.rewrite_env"], `"DATABASE_URL" is listed twice`) {
		t.Errorf("run.rewrite_env: %q", got["run.rewrite_env"])
	}
}
