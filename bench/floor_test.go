package bench

import (
	"bufio"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pgguard/pgguard/internal/localpg"
)

// floorProc is bench/floorrelay running as its own process: the cheapest
// transaction-pooling relay, the floor under pgguard's and PgBouncer's cost.
type floorProc struct {
	cmd  *exec.Cmd
	addr string
}

func (f *floorProc) pid() int { return f.cmd.Process.Pid }

func (f *floorProc) url(db string) string {
	return fmt.Sprintf("postgres://bench:bench@%s/%s?sslmode=disable", f.addr, db)
}

func startFloorRelay(t *testing.T, pg *localpg.Cluster) *floorProc {
	bin := filepath.Join(t.TempDir(), "floorrelay")
	if out, err := exec.Command("go", "build", "-o", bin, "./floorrelay").CombinedOutput(); err != nil {
		t.Fatalf("build floorrelay: %v\n%s", err, out)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, "-listen", addr, "-upstream", pg.URL("bench"), "-pool", "10")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("floorrelay did not come up: %q %v", line, err)
	}
	return &floorProc{cmd: cmd, addr: addr}
}

// TestFloorRelay checks that the floor relay carries pgbench, so that
// `make bench` measures a relay that works.
func TestFloorRelay(t *testing.T) {
	skipUnlessBench(t)
	e := setup(t)
	f := startFloorRelay(t, e.pg)
	// Several runs of more clients than servers: clients that leave while
	// queued or mid-request must not cost the relay its servers.
	for range 3 {
		res := run(t, f.url("bench"), "-S", "-n", "-c", "50", "-j", "2", "-T", "2", "-M", "simple")
		if res.failed != 0 || res.transactions == 0 {
			t.Fatalf("floor relay: %d transactions, %d failed", res.transactions, res.failed)
		}
		t.Logf("floor relay: %.0f tps at 50 clients on 10 servers", res.tps)
	}
}
