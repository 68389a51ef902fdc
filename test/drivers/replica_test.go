package drivers

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// rywRole is the role the replica test's server connections use: its
// commits are synchronous (synchronous_commit = on, as on Neon), so their
// WAL reaches the standby at once; localpg's default (off) leaves it to the
// WAL writer's next round.
const rywRole = "ryw_tester"

// TestReplicaDrivers runs write-then-read rounds with pgx, psycopg 3,
// asyncpg and node-postgres through transaction pooling with a streaming
// standby applying commits 20ms late as the replica (replica_reads =
// "read_only", read-your-writes per session), over both networks: no read
// misses its own write, and most reads land on the standby.
func TestReplicaDrivers(t *testing.T) {
	setup(t, fmt.Sprintf("DROP ROLE IF EXISTS %[1]s; CREATE ROLE %[1]s LOGIN PASSWORD 'ryw-pw'; ALTER ROLE %[1]s SET synchronous_commit = on; GRANT CREATE ON SCHEMA public TO %[1]s", rywRole))
	drivers := []string{"pgx", "psycopg", "asyncpg", "node"}
	for _, d := range drivers {
		setup(t, fmt.Sprintf("DROP TABLE IF EXISTS ryw_%[1]s; CREATE TABLE ryw_%[1]s (id int); ALTER TABLE ryw_%[1]s OWNER TO %[2]s", d, rywRole))
	}
	sb, err := pg.StartStandby(map[string]string{"recovery_min_apply_delay": "20ms"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Stop() })
	roleURL := func(c *localpg.Cluster) string {
		u, _ := url.Parse(c.URL("app"))
		u.User = url.UserPassword(rywRole, "ryw-pw")
		return u.String()
	}

	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		rounds := 60
		if n.Splits() {
			rounds = 30
		}
		cfg := txConfig()
		cfg.Databases["app"] = &config.Database{Primary: roleURL(pg), Replicas: []string{roleURL(sb)}, ReplicaReads: "read_only"}
		cfg.Replica.RYWWait = config.D(2 * time.Second)
		g := startGuardOver(t, n, cfg)
		for _, d := range drivers {
			t.Run(d, func(t *testing.T) {
				table := "ryw_" + d
				setup(t, "TRUNCATE "+table)
				before, err := sb.SeqScans(context.Background(), table)
				if err != nil {
					t.Fatal(err)
				}
				misses := runRounds(t, d, g.url(), table, rounds)
				after, err := sb.SeqScans(context.Background(), table)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s over %s: %d of %d reads missed their write; %d ran on the replica", d, n.Name, misses, rounds, after-before)
				if misses != 0 {
					t.Errorf("%d of %d reads missed their own write", misses, rounds)
				}
				if after-before < int64(rounds)/2 {
					t.Errorf("%d of %d reads ran on the replica; want most", after-before, rounds)
				}
			})
		}
	})
}

// runRounds runs rounds write-then-read rounds with driver d and returns
// the misses it reports.
func runRounds(t *testing.T, d, url, table string, rounds int) int {
	t.Helper()
	var out string
	var err error
	switch d {
	case "pgx":
		return pgxRYWRounds(t, url, table, rounds)
	case "psycopg":
		requirePython(t, "psycopg", "python3-psycopg")
		out, err = runTool(t, 120*time.Second, "py", debianPython, "ryw_rounds.py", d, url, table, strconv.Itoa(rounds))
	case "asyncpg":
		requirePython(t, "asyncpg", "python3-asyncpg")
		out, err = runTool(t, 120*time.Second, "py", debianPython, "ryw_rounds.py", d, url, table, strconv.Itoa(rounds))
	case "node":
		node, lerr := exec.LookPath("node")
		requireTool(t, "node", lerr)
		_, serr := os.Stat("node/node_modules/pg/package.json")
		requireTool(t, "node-postgres (run: cd test/drivers/node && npm ci)", serr)
		out, err = runTool(t, 120*time.Second, "node", node, "ryw.js", url, table, strconv.Itoa(rounds))
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", d, err, out)
	}
	var misses, n int
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "misses %d rounds %d", &misses, &n); err != nil || n != rounds {
		t.Fatalf("%s printed %q", d, out)
	}
	return misses
}

func pgxRYWRounds(t *testing.T, url, table string, rounds int) int {
	ctx := context.Background()
	c := connect(t, pgxConfig(t, url, pgx.QueryExecModeCacheStatement))
	misses := 0
	for i := 0; i < rounds; i++ {
		if _, err := c.Exec(ctx, "INSERT INTO "+table+" VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var got int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE id = $1", i).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != 1 {
			misses++
		}
	}
	return misses
}
