package drivers

import (
	"fmt"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// debianPython is the interpreter Debian's python3-psycopg2 and
// python3-sqlalchemy packages install into (not a pyenv or venv python).
const debianPython = "/usr/bin/python3"

// TestPsycopg2SQLAlchemy runs three Python processes, each with a SQLAlchemy
// engine of pool_size=8, max_overflow=4 over psycopg2 and 16 threads, through
// transaction pooling with 2 server connections.
func TestPsycopg2SQLAlchemy(t *testing.T) {
	_, err := exec.Command(debianPython, "-c", "import psycopg2, sqlalchemy").CombinedOutput()
	requireTool(t, debianPython+" with psycopg2 and sqlalchemy (Debian python3-psycopg2, python3-sqlalchemy)", err)
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const procs, threads, rounds = 3, 16, 8
		table := "py_clients"
		freshTable(t, table, "client text, seq int, kind text, note text, n int8")
		g := startGuardOver(t, n, txConfig())
		url := fmt.Sprintf("postgresql+psycopg2://%s:%s@%s/app?sslmode=disable", testUser, testPassword, g.addr)

		var wg sync.WaitGroup
		errs := newCollect(procs)
		for p := 0; p < procs; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := runTool(t, 90*time.Second, "py", debianPython, "sqlalchemy_clients.py",
					url, table, strconv.Itoa(p), strconv.Itoa(threads), strconv.Itoa(rounds))
				if err != nil {
					errs.add(fmt.Errorf("process %d: %v\n%s", p, err, out))
				}
			}()
		}
		wg.Wait()
		errs.report(t)
		want := int64(procs * threads * rounds)
		if n := queryInt(t, "SELECT count(*) FROM py_clients WHERE kind = 'tx' AND n = seq * 2 + 5 AND note = 'p' || client || '''s note #' || seq || ' ✓'"); n != want {
			t.Errorf("%d rows committed with the values written, want %d", n, want)
		}
		if n := queryInt(t, "SELECT count(*) FROM py_clients WHERE kind <> 'tx'"); n != 0 {
			t.Errorf("%d rows of rolled-back transactions committed", n)
		}
	})
}
