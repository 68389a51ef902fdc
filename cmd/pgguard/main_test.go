package main

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// clearEnv unsets the variables config.Load and serve read, so that the
// machine's environment cannot change a test's outcome.
func clearEnv(t *testing.T) {
	for _, v := range []string{"PGGUARD_CONFIG", "NEON_DATABASE_URL", "PGGUARD_FALLBACK_URL", "DATABASE_POOL_SIZE",
		"DATABASE_MAX_OVERFLOW", "READ_ONLY_MODE", "PGGUARD_LISTEN", "PGGUARD_HTTP_LISTEN", envSuspendRedis,
		"DISABLE_WORKERS", "PGGUARD_RUN_REWRITE_ENV", envDatabaseURL} {
		t.Setenv(v, "")
	}
}

// pgguard runs the command line with args and returns exit code, stdout and stderr.
func pgguard(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := pgguard("version")
	want := regexp.MustCompile(`^pgguard ` + regexp.QuoteMeta(version) + ` \(commit (unknown|[0-9a-f]{7,40}(-dirty)?), go[0-9.]+\S*\)\n$`)
	if code != 0 || !want.MatchString(out) {
		t.Errorf("pgguard version: exit %d, %q", code, out)
	}
}

func TestCheckExample(t *testing.T) {
	clearEnv(t)
	code, out, errs := pgguard("check", "-config", "../../config.example.toml")
	if code != 0 {
		t.Fatalf("check config.example.toml: exit %d\n%s", code, errs)
	}
	// The example's secrets: a [[users]] password and the primary URL's.
	for _, secret := range []string{`"secret"`, "user:pass@"} {
		if strings.Contains(out, secret) {
			t.Errorf("check prints %s unmasked:\n%s", secret, out)
		}
	}
	for _, want := range []string{"user:****@", `password = "****"`, "[querylog]", "[[limits]]", "[limiter]", "[budget]", `on_exhausted = "alert"`} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %s:\n%s", want, out)
		}
	}

	// The environment wins and is masked too.
	t.Setenv("NEON_DATABASE_URL", "postgres://neon:hunter2@ep-y.aws.neon.tech/app?sslmode=require")
	code, out, errs = pgguard("check", "-config", "../../config.example.toml")
	if code != 0 || strings.Contains(out, "hunter2") || !strings.Contains(out, "neon:****@ep-y.aws.neon.tech") {
		t.Errorf("check with NEON_DATABASE_URL: exit %d\n%s%s", code, out, errs)
	}
}

func TestCheckBroken(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	valid := `listen = "127.0.0.1:6432"

[databases.app]
primary = "postgres://u:p@127.0.0.1:5432/app"

[[users]]
name = "app"
password = "secret"
`
	for _, c := range []struct {
		name, text string
		want       map[string]string // key -> line
	}{
		{"type.toml", valid + "\n[pool]\nsize = \"eight\"\n", map[string]string{"pool.size": "11"}},
		{"keys.toml", valid + "\n[pool]\nbogus_key = 1\n\n[budget]\non_exhausted = \"panic\"\nalert_at = 2.0\n",
			map[string]string{"pool.bogus_key": "11", "budget.on_exhausted": "14", "budget.alert_at": "15"}},
	} {
		path := filepath.Join(dir, c.name)
		os.WriteFile(path, []byte(c.text), 0o600)
		code, out, errs := pgguard("check", "-config", path)
		if code != 1 || out != "" {
			t.Errorf("%s: exit %d, stdout %q", c.name, code, out)
			continue
		}
		line := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `:(\d+): ([a-z_.]+): .+$`)
		got := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Errorf("%s: not FILE:LINE: key: reason: %q", c.name, l)
				continue
			}
			got[m[2]] = m[1]
		}
		if !maps.Equal(got, c.want) {
			t.Errorf("%s: reported %v, want %v\n%s", c.name, got, c.want, errs)
		}
	}

	code, _, errs := pgguard("check", "-config", filepath.Join(dir, "missing.toml"))
	if code != 1 || !strings.Contains(errs, "missing.toml") {
		t.Errorf("check of a missing file: exit %d, %q", code, errs)
	}
}

func TestUnknownCommand(t *testing.T) {
	code, _, errs := pgguard("frobnicate")
	if code != 2 || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Errorf("exit %d, %q", code, errs)
	}
}

func TestEnvBool(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "off": false, "No": false, "true": true, "1": true, " ON ": true, "yes": true} {
		t.Setenv(envSuspendRedis, v)
		if got, err := envBool(envSuspendRedis); err != nil || got != want {
			t.Errorf("%s=%q: %t, %v; want %t", envSuspendRedis, v, got, err, want)
		}
	}
	t.Setenv(envSuspendRedis, "maybe")
	if _, err := envBool(envSuspendRedis); err == nil || !strings.Contains(err.Error(), "SUSPEND_REDIS") {
		t.Errorf("SUSPEND_REDIS=maybe: %v, want an error naming it", err)
	}
}

func TestDemoFlags(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"demo", "-no-such-flag"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-neon") {
		t.Errorf("demo with a bad flag: exit %d, stderr %q; want 2 and the usage naming -neon", code, errb.String())
	}
}
