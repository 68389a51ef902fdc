package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// debianPython is the interpreter Debian's python3-psycopg2 installs into.
const debianPython = "/usr/bin/python3"

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{{"run"}, {"run", "--"}, {"run", "-config", "x.toml", "--"}} {
		code, _, errs := pgguard(args...)
		if code != 2 || !strings.Contains(errs, "usage: pgguard run [-config FILE] -- COMMAND [ARGS...]") {
			t.Errorf("%q: exit %d, %q", args, code, errs)
		}
	}
}

// TestRunBadDatabaseURL: an unparsable DATABASE_URL is named with the
// reason, and its password is never printed.
func TestRunBadDatabaseURL(t *testing.T) {
	clearEnv(t)
	t.Chdir(t.TempDir())
	for _, c := range []struct{ url, reason string }{
		{"postgres://app:hunter2@db.example:notaport/app", `invalid port ":notaport"`},
		{"postgres://app:hunter2@db.example:5432/app?connect_timeout=soon", "connect_timeout"},
		{"mysql://app:hunter2@db.example/app", "not a postgres:// URL"},
		{"postgres://app:hunter2@[::1/app", "missing ']'"},
	} {
		t.Setenv(envDatabaseURL, c.url)
		code, _, errs := pgguard("run", "--", "true")
		if code != 1 || !strings.Contains(errs, "DATABASE_URL") || !strings.Contains(errs, c.reason) || strings.Contains(errs, "hunter2") {
			t.Errorf("DATABASE_URL=%s: exit %d, stderr %q; want 1, naming DATABASE_URL and %q, without the password", c.url, code, errs, c.reason)
		}
	}
	// The same for another variable of run.rewrite_env, with a valid primary.
	t.Setenv(envDatabaseURL, "")
	t.Setenv(config.EnvPrimaryURL, "postgres://app:pw@127.0.0.1:5432/app")
	t.Setenv(config.EnvRunRewriteEnv, "DATABASE_URL,REPORTS_URL")
	t.Setenv("REPORTS_URL", "postgres://app:hunter2@db.example:99999/app")
	code, _, errs := pgguard("run", "--", "true")
	if code != 1 || !strings.Contains(errs, "REPORTS_URL") || strings.Contains(errs, "hunter2") {
		t.Errorf("REPORTS_URL bad port: exit %d, %q", code, errs)
	}
	// No primary at all.
	t.Setenv(config.EnvPrimaryURL, "")
	t.Setenv("REPORTS_URL", "")
	if code, _, errs := pgguard("run", "--", "true"); code != 1 || !strings.Contains(errs, "set NEON_DATABASE_URL, or DATABASE_URL") {
		t.Errorf("no primary: exit %d, %q", code, errs)
	}
}

func TestRewriteURL(t *testing.T) {
	u, err := parseAppURL("DATABASE_URL", "postgres://app:p%40ss@ep-x.aws.neon.tech:5432/neondb?sslmode=verify-full&sslrootcert=/ca.pem&application_name=web&options=-c%20search_path%3Dapp")
	if err != nil {
		t.Fatal(err)
	}
	got, err := url.Parse(rewrite(u, &net.TCPAddr{IP: net.IPv4zero, Port: 6432}, "neondb"))
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := got.User.Password()
	q := got.Query()
	if got.Host != "127.0.0.1:6432" || got.User.Username() != "app" || pw != "p@ss" || got.Path != "/neondb" ||
		q.Get("sslmode") != "disable" || q.Has("sslrootcert") || q.Get("application_name") != "web" || q.Get("options") != "-c search_path=app" {
		t.Errorf("rewritten: %s", got)
	}
	if a := dialAddr(&net.TCPAddr{IP: net.IPv6zero, Port: 1}); a != "[::1]:1" {
		t.Errorf("dialAddr([::]:1) = %s", a)
	}
}

func TestRewriteTargets(t *testing.T) {
	cfg := config.Default()
	cfg.Databases = map[string]*config.Database{"app": {Primary: "postgres://app:pw@10.1.1.1/neondb"}}
	cfg.Users = []config.User{{Name: "app", Password: "pw"}}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	// DATABASE_URL unset: made from NEON_DATABASE_URL, served as the entry it fills.
	ts, err := rewriteTargets(cfg, env(map[string]string{config.EnvPrimaryURL: "postgres://app:pw@10.1.1.1/neondb"}))
	if err != nil || len(ts) != 1 || ts[0].name != "DATABASE_URL" || ts[0].database != "app" {
		t.Fatalf("from NEON_DATABASE_URL: %+v, %v", ts, err)
	}
	for _, c := range []struct{ url, want string }{
		{"postgres://app:pw@10.1.1.1/other", `names database "other", which pgguard does not serve (it serves app)`},
		{"postgres://bob:pw@10.1.1.1/app", `logs in as "bob", which is not in [[users]]`},
		{"postgres://app:pw@127.0.0.1:6432/app", "already points at pgguard's listen address"},
	} {
		_, err := rewriteTargets(cfg, env(map[string]string{"DATABASE_URL": c.url}))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "DATABASE_URL") {
			t.Errorf("%s: %v, want %q", c.url, err, c.want)
		}
	}
}

// wrapper is `pgguard run` running as a child process.
type wrapper struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan struct{}
}

// runEnviron is a clean environment for the wrapper plus extra.
func runEnviron(t *testing.T, extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"LANG=C",
		"PGGUARD_LISTEN=127.0.0.1:0",
		"PGGUARD_HTTP_LISTEN=" + freeOr("127.0.0.1:0"),
		"SUSPEND_REDIS=",
	}, extra...)
}

func startWrapper(t *testing.T, env []string, args ...string) *wrapper {
	t.Helper()
	w := &wrapper{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	w.cmd = exec.Command(pgguardBinary(t), append([]string{"run", "--"}, args...)...)
	w.cmd.Env = env
	w.cmd.Stdout, w.cmd.Stderr = w.stdout, w.stderr
	// An app that outlives the wrapper holds the output pipes open: do not
	// wait for them longer than this after the wrapper exits.
	w.cmd.WaitDelay = 5 * time.Second
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		<-w.done
		if t.Failed() {
			t.Logf("pgguard run stdout:\n%s\nstderr:\n%s", w.stdout, w.stderr)
		}
	})
	return w
}

// wait returns the wrapper's exit code, failing the test after 30 s.
func (w *wrapper) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-w.done:
		return w.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatalf("pgguard run did not exit\nstdout:\n%s\nstderr:\n%s", w.stdout, w.stderr)
		return -1
	}
}

var listeningRE = regexp.MustCompile(`msg="pgguard listening" addr=(\S+)`)

// inOrder fails unless each of msgs appears in s after the one before.
func inOrder(t *testing.T, s string, msgs ...string) {
	t.Helper()
	at := 0
	for _, m := range msgs {
		i := strings.Index(s[at:], m)
		if i < 0 {
			t.Errorf("log lacks %q after offset %d:\n%s", m, at, s)
			return
		}
		at += i + len(m)
	}
}

const appScript = `
import os, psycopg2
conn = psycopg2.connect(os.environ["DATABASE_URL"])
with conn:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS run_py (id serial PRIMARY KEY, who text)")
        cur.execute("INSERT INTO run_py (who) VALUES (%s) RETURNING id", ("psycopg2",))
        print("python inserted", cur.fetchone()[0] > 0)
with conn.cursor() as cur:
    cur.execute("SELECT count(*), current_user, current_database() FROM run_py")
    n, user, db = cur.fetchone()
    print("python saw", n, user, db)
conn.close()
`

// TestRunWrapper runs real apps under `pgguard run` against a real
// PostgreSQL: psql and a psycopg2 script reach it through the rewritten
// DATABASE_URL, the exit code passes through, SIGTERM reaches the app and
// pgguard drains after it, killing pgguard stops the app, and a missing
// command exits 127 with pgguard drained.
func TestRunWrapper(t *testing.T) {
	localpg.Require(t, localpg.Available())
	requireTool(t, "psql")
	if _, err := exec.Command(debianPython, "-c", "import psycopg2").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s with psycopg2 (Debian python3-psycopg2) is required in CI: %v", debianPython, err)
		}
		t.Skipf("no %s with psycopg2: %v", debianPython, err)
	}
	pgguardBinary(t)
	pg, err := localpg.Start(localpg.Options{User: "tester", Password: "tester-pw", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	dbURL := "DATABASE_URL=" + pg.URL("app")
	dir := t.TempDir()
	script := filepath.Join(dir, "app.py")
	os.WriteFile(script, []byte(appScript), 0o644)

	t.Run("psql and psycopg2, exit code", func(t *testing.T) {
		w := startWrapper(t, runEnviron(t, dbURL), "sh", "-c", `
			echo "url=$DATABASE_URL"
			psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -Atc "SELECT 'psql saw', current_user, current_database()" || exit 90
			`+debianPython+` `+script+` || exit 91
			exit 7`)
		if code := w.wait(t); code != 7 {
			t.Fatalf("exit code %d, want the app's 7", code)
		}
		out, logs := w.stdout.String(), w.stderr.String()
		m := listeningRE.FindStringSubmatch(logs)
		if m == nil {
			t.Fatalf("no listen address in the log:\n%s", logs)
		}
		u, err := url.Parse(strings.TrimSpace(strings.SplitN(strings.SplitN(out, "url=", 2)[1], "\n", 2)[0]))
		if err != nil {
			t.Fatal(err)
		}
		pw, _ := u.User.Password()
		if u.Host != m[1] || u.Host == pg.Addr() || u.User.Username() != "tester" || pw != "tester-pw" || u.Path != "/app" || u.Query().Get("sslmode") != "disable" {
			t.Errorf("the app's DATABASE_URL is %s; want pgguard's %s with the same user, password and database", u.Redacted(), m[1])
		}
		for _, want := range []string{"psql saw|tester|app", "python inserted True", "python saw 1 tester app"} {
			if !strings.Contains(out, want) {
				t.Errorf("app output lacks %q:\n%s", want, out)
			}
		}
		// Both went through pgguard: its query log has their statements.
		for _, want := range []string{`"application":"psql"`, `"query":"INSERT INTO run_py (who) VALUES ($1) RETURNING id"`} {
			if !strings.Contains(logs, want) {
				t.Errorf("pgguard's query log lacks %s", want)
			}
		}
		inOrder(t, logs, "pgguard listening", "pgguard run: app started", "pgguard run: app exited; draining pgguard", "exit_code=7", "pgguard stopped")
		if strings.Contains(logs, "tester-pw") {
			t.Errorf("the log shows the password")
		}
	})

	t.Run("SIGTERM reaches the app, then pgguard drains", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "ready")
		w := startWrapper(t, runEnviron(t, dbURL), "sh", "-c", `
			trap 'psql "$DATABASE_URL" -Atc "SELECT 42 AS after_term" && exit 3; exit 92' TERM
			psql "$DATABASE_URL" -Atc "SELECT 1" >/dev/null && touch `+marker+`
			while :; do sleep 0.05; done`)
		guardtest.WaitFor(t, "the app to be up", func() bool { _, err := os.Stat(marker); return err == nil })
		w.cmd.Process.Signal(syscall.SIGTERM)
		if code := w.wait(t); code != 3 {
			t.Fatalf("exit code %d, want 3 (the app's trap ran a query through pgguard, then exit 3)", code)
		}
		if !strings.Contains(w.stdout.String(), "42") {
			t.Errorf("the app's query after SIGTERM did not run:\n%s", w.stdout)
		}
		inOrder(t, w.stderr.String(), "pgguard run: forwarding signal to the app", "signal=terminated",
			"pgguard run: app exited; draining pgguard", "exit_code=3", "draining: no new connections", "pgguard stopped")
		if !strings.Contains(w.stderr.String(), `"query":"SELECT $1 AS after_term"`) {
			t.Errorf("the query after SIGTERM is not in pgguard's query log")
		}
	})

	t.Run("killing pgguard stops the app", func(t *testing.T) {
		tmp := t.TempDir()
		pidFile, termFile := filepath.Join(tmp, "pid"), filepath.Join(tmp, "term")
		w := startWrapper(t, runEnviron(t, dbURL), "sh", "-c", `
			trap 'echo TERM > `+termFile+`; exit 0' TERM
			echo $$ > `+pidFile+`.tmp && mv `+pidFile+`.tmp `+pidFile+`
			while :; do sleep 0.05; done`)
		var pid int
		guardtest.WaitFor(t, "the app's pid", func() bool {
			b, err := os.ReadFile(pidFile)
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && pid > 0
		})
		// Whatever happens, the test's app goes when the test ends.
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
		w.cmd.Process.Kill() // SIGKILL: no goodbye from pgguard
		w.wait(t)
		guardtest.WaitFor(t, "the app to get SIGTERM", func() bool { _, err := os.Stat(termFile); return err == nil })
		guardtest.WaitFor(t, fmt.Sprintf("app pid %d to exit", pid), func() bool { return !running(pid) })
	})

	t.Run("command not found", func(t *testing.T) {
		w := startWrapper(t, runEnviron(t, dbURL), "no-such-command-pgguard")
		if code := w.wait(t); code != 127 {
			t.Fatalf("exit code %d, want 127", code)
		}
		logs := w.stderr.String()
		if !strings.Contains(logs, "pgguard run: no-such-command-pgguard: command not found") {
			t.Errorf("no clear error:\n%s", logs)
		}
		inOrder(t, logs, "pgguard listening", "cannot start the app; draining", "pgguard stopped")

		noExec := filepath.Join(t.TempDir(), "app.sh")
		os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644)
		if code := startWrapper(t, runEnviron(t, dbURL), noExec).wait(t); code != 126 {
			t.Errorf("a file without the execute bit: exit %d, want 126", code)
		}
	})
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
