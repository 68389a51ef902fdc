package drivers

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// requirePython skips (or fails in CI) unless Debian's python3 can import
// the modules; pkgs names the Debian packages that provide them.
func requirePython(t *testing.T, modules, pkgs string) {
	t.Helper()
	out, err := exec.Command(debianPython, "-c", "import "+modules).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	requireTool(t, debianPython+" with "+modules+" (Debian "+pkgs+")", err)
}

// python runs a script of py/ with Debian's python3 and returns its output;
// a failure fails t with the output.
func python(t *testing.T, timeout time.Duration, script string, args ...string) string {
	t.Helper()
	out, err := runTool(t, timeout, "py", debianPython, append([]string{script}, args...)...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", script, args[0], err, out)
	}
	return out
}

// sameTranscript compares a transcript run directly with one through
// pgguard, line by line.
func sameTranscript(t *testing.T, direct, through string) {
	t.Helper()
	d, g := strings.Split(strings.TrimSpace(direct), "\n"), strings.Split(strings.TrimSpace(through), "\n")
	for i := 0; i < max(len(d), len(g)); i++ {
		var dl, gl string
		if i < len(d) {
			dl = d[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if dl != gl {
			t.Errorf("step %d differs from a direct connection's\nthrough pgguard: %s\ndirect:          %s", i, gl, dl)
		}
	}
	if len(d) < 5 {
		t.Errorf("the transcript has only %d steps:\n%s", len(d), direct)
	}
}

// TestPsycopg3Pipeline runs psycopg 3 (Debian python3-psycopg) through
// transaction pooling with 2 server connections: a transcript of pipelines,
// errors inside them, automatically prepared statements, executemany, a
// server-side cursor, compared with the same transcript on a direct
// connection; then 24 threads, each on its own connection, running
// pipelined transactions and prepared statements and checking every value,
// and the committed rows checked on the server.
func TestPsycopg3Pipeline(t *testing.T) {
	requirePython(t, "psycopg", "python3-psycopg")
	direct := python(t, 60*time.Second, "psycopg3_clients.py", "transcript", pg.URL("app"))
	t.Logf("transcript on a direct connection:\n%s", direct)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		g := startGuardOver(t, n, txConfig())
		sameTranscript(t, direct, python(t, 60*time.Second, "psycopg3_clients.py", "transcript", g.url()))

		threads, rounds := 24, 6
		if n.Splits() {
			rounds = 3
		}
		table := "pg3_clients"
		freshTable(t, table, "client text, seq int, kind text, note text, n int8")
		python(t, 120*time.Second, "psycopg3_clients.py", "load", g.url(), table, strconv.Itoa(threads), strconv.Itoa(rounds))
		want := int64(threads * rounds)
		if n := queryInt(t, "SELECT count(*) FROM pg3_clients WHERE kind = 'tx' AND n = seq * 4 + 3 AND note = 'q' || client || '''s note #' || seq || ' ✓'"); n != want {
			t.Errorf("%d rows committed with the values written, want %d", n, want)
		}
		if n := queryInt(t, "SELECT count(*) FROM pg3_clients WHERE kind <> 'tx'"); n != 0 {
			t.Errorf("%d rows of rolled-back pipelines committed", n)
		}
	})
}

// TestAsyncpg runs asyncpg (Debian python3-asyncpg), which prepares and
// caches every statement per connection, through transaction pooling with 2
// server connections: a transcript (statement cache evicting, errors,
// executemany, a cursor, binary COPY, type introspection) compared with
// the same on a direct connection; then an asyncpg pool of 30 connections,
// reset with RESET ALL on every release, with as many tasks running
// transactions and checking every value, and the committed rows checked on
// the server.
func TestAsyncpg(t *testing.T) {
	requirePython(t, "asyncpg", "python3-asyncpg")
	setup(t, "DROP TYPE IF EXISTS ap_mood; CREATE TYPE ap_mood AS ENUM ('happy', 'sad')")
	const columns = "client text, seq int, kind text, note text, n int8"
	freshTable(t, "ap_transcript", columns)
	direct := python(t, 60*time.Second, "asyncpg_clients.py", "transcript", pg.URL("app"), "ap_transcript")
	t.Logf("transcript on a direct connection:\n%s", direct)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		g := startGuardOver(t, n, txConfig())
		sameTranscript(t, direct, python(t, 60*time.Second, "asyncpg_clients.py", "transcript", g.url(), "ap_transcript"))

		workers, rounds := 30, 6
		if n.Splits() {
			rounds = 3
		}
		table := "ap_clients"
		freshTable(t, table, columns)
		python(t, 120*time.Second, "asyncpg_clients.py", "load", g.url(), table, strconv.Itoa(workers), strconv.Itoa(rounds))
		want := int64(workers * rounds)
		if n := queryInt(t, "SELECT count(*) FROM ap_clients WHERE kind = 'tx' AND n = seq * 5 + 2 AND note = 'a' || client || '''s note #' || seq || ' ✓'"); n != want {
			t.Errorf("%d rows committed with the values written, want %d", n, want)
		}
		if n := queryInt(t, "SELECT count(*) FROM ap_clients WHERE kind <> 'tx'"); n != 0 {
			t.Errorf("%d rows of rolled-back transactions committed", n)
		}
	})
}
