package drivers

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgguard/pgguard/internal/localpg"
)

// TestAsyncpgMigration runs asyncpg (Debian python3-asyncpg) around schema
// migrations — ALTER TABLE and a type dropped and created again over a
// direct connection, an ALTER TABLE through the client's own address — once
// on a direct connection and once through pgguard with 2 server
// connections, and requires the same transcript: the driver sees the
// "cached plan" error where it would directly, and its statements prepared
// again work.
func TestAsyncpgMigration(t *testing.T) {
	requirePython(t, "asyncpg", "python3-asyncpg")
	direct := python(t, 60*time.Second, "asyncpg_migration.py", "transcript", pg.URL("app"), pg.URL("app"))
	t.Logf("transcript on a direct connection:\n%s", direct)
	g := startTxGuard(t)
	sameTranscript(t, direct, python(t, 60*time.Second, "asyncpg_migration.py", "transcript", g.url(), pg.URL("app")))
}

// replayCount is what one replay of a migration under load observed.
type replayCount struct {
	asyncpg, pgx   int // failed queries after the migration
	queries        int // queries after it, per driver
	warmFailed     int // failed queries before it (must be 0)
	asyncpgErrors  map[string]int
	pgxErrors      map[string]int
	target, reason string
}

// replayKinds are the migrations replayed: the statement sessions run, the
// schema before, and the migration made over a direct connection.
var replayKinds = []struct {
	kind, sql, setup, migrate string
	args                      []any
}{{
	kind:    "alter",
	sql:     "SELECT * FROM mig_load",
	setup:   "DROP TABLE IF EXISTS mig_load; CREATE TABLE mig_load (a int); INSERT INTO mig_load VALUES (1), (2); ALTER TABLE mig_load OWNER TO tester",
	migrate: "ALTER TABLE mig_load ADD COLUMN b int",
}, {
	kind:    "type",
	sql:     "SELECT $1::mig_load_mood::text",
	args:    []any{"sad"},
	setup:   "DROP TYPE IF EXISTS mig_load_mood; CREATE TYPE mig_load_mood AS ENUM ('happy', 'sad'); ALTER TYPE mig_load_mood OWNER TO tester",
	migrate: "DROP TYPE mig_load_mood; CREATE TYPE mig_load_mood AS ENUM ('happy', 'sad')",
}}

const (
	replaySessions = 6 // asyncpg sessions, and as many pgx sessions
	replayRounds   = 3 // queries per session after the migration
)

// TestMigrationReplay replays a migration under load: 6 asyncpg and 6 pgx
// sessions (pgx in every QueryExecMode) run a statement until warm, a
// migration runs over a direct connection, and each session runs the
// statement 3 more times. Through pgguard (transaction pooling, 4 server
// connections) the sessions must fail at most as often as on direct
// connections. PgBouncer's count, when it is installed, is logged beside.
func TestMigrationReplay(t *testing.T) {
	requirePython(t, "asyncpg", "python3-asyncpg")
	for _, k := range replayKinds {
		t.Run(k.kind, func(t *testing.T) {
			var counts []replayCount
			for _, target := range []string{"direct", "pgguard", "pgbouncer"} {
				setup(t, k.setup)
				var url string
				switch target {
				case "direct":
					url = pg.URL("app")
				case "pgguard":
					cfg := txConfig()
					cfg.Pool.Size = 4
					url = startGuard(t, cfg).url()
				case "pgbouncer":
					if err := localpg.PgBouncerAvailable(); err != nil {
						t.Logf("PgBouncer not run: %v", err)
						continue
					}
					// Prepared statements in transaction mode, where PgBouncer
					// has them (1.21 and later; older ones refuse the setting).
					opts := localpg.PgBouncerOptions{Cluster: pg, PoolSize: 4,
						Settings: map[string]string{"max_prepared_statements": "200"}}
					b, err := localpg.StartPgBouncer(opts)
					if err != nil {
						opts.Settings = nil
						if b, err = localpg.StartPgBouncer(opts); err != nil {
							t.Fatal(err)
						}
						t.Log("this PgBouncer has no max_prepared_statements (before 1.21): asyncpg's statements fail outright")
					}
					t.Cleanup(func() { b.Stop() })
					url = b.URL("app")
				}
				c := replay(t, url, k.kind, k.sql, k.args, k.migrate)
				c.target = target
				counts = append(counts, c)
				t.Logf("%-9s asyncpg %2d of %d failed, pgx %2d of %d failed; errors: asyncpg %v pgx %v",
					target, c.asyncpg, c.queries, c.pgx, c.queries, c.asyncpgErrors, c.pgxErrors)
			}
			d, g := counts[0], counts[1]
			if g.warmFailed > 0 || d.warmFailed > 0 {
				t.Errorf("queries failed before the migration: direct %d, pgguard %d", d.warmFailed, g.warmFailed)
			}
			if g.asyncpg > d.asyncpg || g.pgx > d.pgx {
				t.Errorf("through pgguard sessions failed more often than directly: asyncpg %d vs %d, pgx %d vs %d",
					g.asyncpg, d.asyncpg, g.pgx, d.pgx)
			}
		})
	}
}

// replay runs one replay against url (see TestMigrationReplay).
func replay(t *testing.T, url, kind, sql string, args []any, migrate string) replayCount {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, debianPython, "asyncpg_migration.py", "replay", url, pg.URL("app"), kind,
		strconv.Itoa(replaySessions), strconv.Itoa(replayRounds))
	cmd.Dir = "py"
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)

	// The pgx sessions, one per mode, warm first.
	var c replayCount
	c.pgxErrors = map[string]int{}
	var mu sync.Mutex
	warm, migrated := make(chan struct{}, replaySessions), make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < replaySessions; i++ {
		mode := pgxModes[i%len(pgxModes)]
		conn := connect(t, pgxConfig(t, url, mode))
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := func(n int) (failed int) {
				for j := 0; j < n; j++ {
					rows, err := conn.Query(ctx, sql, args...)
					if err == nil {
						for rows.Next() {
						}
						err = rows.Err()
					}
					if err != nil {
						failed++
						mu.Lock()
						c.pgxErrors[fmt.Sprintf("%s: %s", mode, typeOID.ReplaceAllString(err.Error(), "type N"))]++
						mu.Unlock()
					}
					time.Sleep(2 * time.Millisecond)
				}
				return failed
			}
			w := run(10)
			warm <- struct{}{}
			<-migrated
			f := run(replayRounds)
			mu.Lock()
			c.warmFailed += w
			c.pgx += f
			mu.Unlock()
		}()
	}
	for i := 0; i < replaySessions; i++ {
		<-warm
	}
	if !lines.Scan() || lines.Text() != "warm" {
		close(migrated)
		cmd.Wait()
		t.Fatalf("asyncpg replay did not warm up: %q %v\n%s", lines.Text(), lines.Err(), stderr.String())
	}
	setup(t, migrate)
	close(migrated)
	io.WriteString(stdin, "go\n")
	wg.Wait()
	if !lines.Scan() {
		cmd.Wait()
		t.Fatalf("asyncpg replay: %v\n%s", lines.Err(), stderr.String())
	}
	var res struct {
		WarmFailed int            `json:"warm_failed"`
		Failed     int            `json:"failed"`
		Queries    int            `json:"queries"`
		Errors     map[string]int `json:"errors"`
	}
	if err := json.Unmarshal(lines.Bytes(), &res); err != nil {
		t.Fatalf("asyncpg replay printed %q: %v", lines.Text(), err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("asyncpg replay: %v\n%s", err, stderr.String())
	}
	c.asyncpg, c.asyncpgErrors, c.queries = res.Failed, res.Errors, res.Queries
	c.warmFailed += res.WarmFailed
	return c
}
