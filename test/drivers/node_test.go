package drivers

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// TestNodePostgres runs node-postgres (npm "pg", installed in
// test/drivers/node by `npm ci`) with a pool of 50 connections through
// transaction pooling with 2 server connections: parameterized queries and
// named prepared statements, inside and outside transactions.
func TestNodePostgres(t *testing.T) {
	node, err := exec.LookPath("node")
	requireTool(t, "node", err)
	_, err = os.Stat("node/node_modules/pg/package.json")
	requireTool(t, "node-postgres (run: cd test/drivers/node && npm ci)", err)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const workers, rounds = 50, 6
		table := "node_clients"
		freshTable(t, table, "client int, seq int, kind text, note text, n int8")
		g := startGuardOver(t, n, txConfig())

		out, err := runTool(t, 90*time.Second, "node", node, "clients.js", g.url(), table, strconv.Itoa(workers), strconv.Itoa(rounds))
		if err != nil {
			t.Fatalf("node-postgres clients: %v\n%s", err, out)
		}
		want := int64(workers * rounds)
		if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s WHERE kind = 'tx' AND n = seq * 3 + 1 AND note = 'n' || client || '''s note #' || seq || ' ✓'", table)); n != want {
			t.Errorf("%d rows committed with the values written, want %d", n, want)
		}
		if n := queryInt(t, fmt.Sprintf("SELECT count(*) FROM %s WHERE kind <> 'tx'", table)); n != 0 {
			t.Errorf("%d rows of rolled-back transactions committed", n)
		}
	})
}
