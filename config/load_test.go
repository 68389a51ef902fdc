package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testURL = "postgres://alice:s3cret-pw@db.example.com:5432/neondb?sslmode=require"

// envMap returns a getenv backed by m.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// noEnv is a getenv with nothing set.
var noEnv = envMap(nil)

// writeConfig writes text to pgguard.toml in a fresh directory.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgguard.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// minimal is a valid file body to append other tables to.
const minimal = `[databases.app]
primary = "postgres://app:pw@127.0.0.1:5432/app"

[[users]]
name = "app"
password = "pw"
`

// problemsOf returns err's problems, failing when err is not an *Error.
func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %T: %v", err, err)
	}
	return e.Problems
}

// hasProblem reports whether err lists "file:line: key: ..." starting with want.
func hasProblem(t *testing.T, err error, want string) {
	t.Helper()
	for _, p := range problemsOf(t, err) {
		if strings.HasPrefix(p.String(), want) {
			return
		}
	}
	t.Errorf("no problem starts with %q in:\n%v", want, err)
}

func TestLoadFileChoice(t *testing.T) {
	explicit := writeConfig(t, "listen = \"127.0.0.1:1111\"\n"+minimal)
	fromEnv := writeConfig(t, "listen = \"127.0.0.1:2222\"\n"+minimal)

	c, err := Load(explicit, envMap(map[string]string{EnvConfig: fromEnv}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:1111" {
		t.Errorf("path argument: listen = %q", c.Listen)
	}

	c, err = Load("", envMap(map[string]string{EnvConfig: fromEnv}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:2222" {
		t.Errorf("PGGUARD_CONFIG: listen = %q", c.Listen)
	}

	// ./pgguard.toml when present.
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile(DefaultFile, []byte("listen = \"127.0.0.1:3333\"\n"+minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Load("", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:3333" {
		t.Errorf("./pgguard.toml: listen = %q", c.Listen)
	}

	// No file at all: defaults plus environment.
	t.Chdir(t.TempDir())
	c, err = Load("", envMap(map[string]string{EnvPrimaryURL: testURL}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != Default().Listen || c.Databases["neondb"] == nil {
		t.Errorf("no file: listen %q, databases %v", c.Listen, c.Databases)
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(p, noEnv)
	hasProblem(t, err, p+":0: cannot read the config file")
}

func TestLoadNoFileNoDatabase(t *testing.T) {
	t.Chdir(t.TempDir())
	_, err := Load("", noEnv)
	hasProblem(t, err, "defaults:0: databases: no database is configured")
}

func TestLoadDecodesOverDefaults(t *testing.T) {
	p := writeConfig(t, minimal+`
[pool]
size = 3
wait_timeout = "0"
query_timeout = 0
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool.Size != 3 || c.Pool.WaitTimeout.Duration != 0 || c.Pool.QueryTimeout.Duration != 0 {
		t.Errorf("pool = %+v", c.Pool)
	}
	if c.Pool.MaxOverflow != 4 || c.Pool.ServerLifetime.Duration != time.Hour {
		t.Errorf("unset keys lost their defaults: %+v", c.Pool)
	}
}

func TestLoadUnknownKeyLine(t *testing.T) {
	p := writeConfig(t, `listen = "127.0.0.1:6432"

[databases.app]
primary = "postgres://app:pw@127.0.0.1:5432/app"

[pool]
sise = 3

[[users]]
name = "app"
password = "pw"
`)
	_, err := Load(p, noEnv)
	ps := problemsOf(t, err)
	if len(ps) != 1 {
		t.Fatalf("want one problem, got:\n%v", err)
	}
	want := p + ":7: pool.sise: unknown key"
	if !strings.HasPrefix(ps[0].String(), want) {
		t.Errorf("got %q, want prefix %q", ps[0], want)
	}
	if !strings.Contains(ps[0].Reason, "pool.size") {
		t.Errorf("no suggestion in %q", ps[0].Reason)
	}
}

func TestLoadUnknownKeyForms(t *testing.T) {
	p := writeConfig(t, `listen = "127.0.0.1:6432"  # line 1
pool.sise = 3
"log_levle" = "info"

[databases]
app = { primary = "postgres://app:pw@127.0.0.1:5432/app", fallbak = "x" }

[[users]]
name = "app"
password = """
multi
nme = "not a key"
"""

[[users]]
name = "bob"
nme = "typo"

[nosuch]
a = 1
b = 2

[[limits]]
name = "r"
max_connections = 1
actoin = "reject"
`)
	_, err := Load(p, noEnv)
	for _, want := range []string{
		p + ":2: pool.sise: unknown key",
		p + ":3: log_levle: unknown key",
		p + ":6: databases.app.fallbak: unknown key",
		p + ":17: users.nme: unknown key",
		p + ":19: nosuch: unknown key",
		p + ":26: limits.actoin: unknown key",
	} {
		hasProblem(t, err, want)
	}
	for _, p := range problemsOf(t, err) {
		if strings.HasPrefix(p.Key, "nosuch.") {
			t.Errorf("keys of an unknown table reported separately: %v", p)
		}
	}
}

func TestLoadSyntaxError(t *testing.T) {
	p := writeConfig(t, minimal+"\n[pool]\nsize = 8x\n")
	_, err := Load(p, noEnv)
	ps := problemsOf(t, err)
	if len(ps) != 1 || ps[0].File != p || ps[0].Line != 9 {
		t.Fatalf("got:\n%v", err)
	}
	if !strings.Contains(ps[0].Reason, "syntax error") {
		t.Errorf("reason %q", ps[0].Reason)
	}
}

func TestLoadTypeAndDurationErrors(t *testing.T) {
	p := writeConfig(t, minimal+"\n[pool]\nsize = \"8\"\n")
	_, err := Load(p, noEnv)
	hasProblem(t, err, p+":9: pool.size: is a string; want an integer")

	p = writeConfig(t, minimal+"\n[pool]\nwait_timeout = \"5 minutes\"\n")
	_, err = Load(p, noEnv)
	hasProblem(t, err, p+`:9: pool.wait_timeout: invalid duration "5 minutes"; want a Go duration`)
}

func TestLoadLimitDefaults(t *testing.T) {
	p := writeConfig(t, minimal+`
[[limits]]
name = "a"
queries_per_second = 5
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	l := c.Limits[0]
	if l.Action != "delay" || l.Burst != 1 || l.MaxDelay.Duration != DefaultMaxDelay {
		t.Errorf("limit defaults not applied: %+v", l)
	}
}

func TestExampleFileIsValid(t *testing.T) {
	c, err := Load(filepath.Join("..", "config.example.toml"), noEnv)
	if err != nil {
		t.Fatalf("config.example.toml: %v", err)
	}
	if c.Databases["app"] == nil || len(c.Users) != 1 || len(c.Limits) != 1 {
		t.Errorf("unexpected example contents: %+v", c)
	}
}

// TestExampleFileHasEveryKey keeps config.example.toml complete.
func TestExampleFileHasEveryKey(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("..", "config.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	written := map[string]bool{}
	for _, k := range scanKeys(string(text)) {
		written[k.key.String()] = true
	}
	var walk func(prefix string, n *schemaNode)
	walk = func(prefix string, n *schemaNode) {
		for _, k := range n.keys {
			full := k
			if prefix != "" {
				full = prefix + "." + k
			}
			if child := n.children[k]; child != nil {
				if star := child.children["*"]; star != nil {
					walk(full+".app", star)
				} else {
					walk(full, child)
				}
				continue
			}
			if !written[full] {
				t.Errorf("config.example.toml lacks %s", full)
			}
		}
	}
	walk("", schema)
}
