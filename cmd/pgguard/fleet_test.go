package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/internal/localpg"
)

// fleetInstance is one pgguard process of a test fleet.
type fleetInstance struct {
	id, addr, http string
	cmd            *exec.Cmd
	logs           *lockedBuffer
	served, errs   atomic.Int64 // transactions its clients completed, and errors they saw
}

// startFleetInstance starts the binary with a config for a fleet member
// and waits until it accepts clients.
func startFleetInstance(t *testing.T, bin, id, extra string) *fleetInstance {
	t.Helper()
	in := &fleetInstance{id: id, addr: freeOr("127.0.0.1:0"), http: freeOr("127.0.0.1:0"), logs: &lockedBuffer{}}
	path := filepath.Join(t.TempDir(), id+".toml")
	cfg := fmt.Sprintf(`listen = %q
http_listen = %q
shutdown_timeout = "2s"
log_level = "info"
%s
[fleet]
instance_id = %q
lease_ttl = "1s"
heartbeat = "100ms"
`, in.addr, in.http, extra, id)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	in.cmd = exec.Command(bin, "-config", path)
	in.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	in.cmd.Stdout, in.cmd.Stderr = in.logs, in.logs
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.cmd.Process.Kill()
		in.cmd.Wait()
		if t.Failed() {
			t.Logf("logs of %s:\n%s", id, in.logs)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("tcp", in.addr); err == nil {
			c.Close()
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up:\n%s", id, in.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fleetView reads GET /fleet of the instance.
func (in *fleetInstance) fleetView(t *testing.T) fleet.View {
	t.Helper()
	var v fleet.View
	resp, err := http.Get("http://" + in.http + "/fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// hammer runs n clients of the instance, each running short transactions
// until stop; errors are counted, and the first few kept.
func (in *fleetInstance) hammer(n int, url string, stop <-chan struct{}, firstErrs *errList, wg *sync.WaitGroup) {
	for range n {
		wg.Go(func() {
			ctx := context.Background()
			conn, err := pgconn.Connect(ctx, url)
			if err != nil {
				in.errs.Add(1)
				firstErrs.add(in.id, err)
				return
			}
			defer conn.Close(ctx)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.004)").ReadAll(); err != nil {
					in.errs.Add(1)
					firstErrs.add(in.id, err)
					return
				}
				in.served.Add(1)
			}
		})
	}
}

type errList struct {
	mu   sync.Mutex
	errs []string
}

func (l *errList) add(id string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, id+": "+err.Error())
	}
}

// activitySampler counts the app's connections in pg_stat_activity every
// few milliseconds; max is the most seen.
type activitySampler struct {
	max, samples atomic.Int64
	stop         chan struct{}
	done         chan struct{}
}

func sampleActivity(t *testing.T, superURL, user string) *activitySampler {
	t.Helper()
	conn, err := pgconn.Connect(context.Background(), superURL)
	if err != nil {
		t.Fatal(err)
	}
	s := &activitySampler{stop: make(chan struct{}), done: make(chan struct{})}
	sql := fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", user)
	go func() {
		defer close(s.done)
		defer conn.Close(context.Background())
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			res, err := conn.Exec(context.Background(), sql).ReadAll()
			if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
				continue
			}
			var n int64
			fmt.Sscan(string(res[0].Rows[0][0]), &n)
			s.samples.Add(1)
			for m := s.max.Load(); n > m && !s.max.CompareAndSwap(m, n); m = s.max.Load() {
			}
		}
	}()
	return s
}

func (s *activitySampler) finish() { close(s.stop); <-s.done }

// TestFleetCapAcrossProcesses is issue 27's acceptance test: three pgguard
// processes on one Redis, pool 10 each, fleet cap 12, 60 clients each.
// PostgreSQL never shows more than 12 of the app's connections, no client
// sees an error, every instance serves; kill -9 of one frees its leases
// within lease_ttl; with Redis down the static shares hold the cap, and
// with Redis back leases take over without exceeding it. SHOW FLEET, GET
// /fleet and a fleet-wide switch reach all three.
func TestFleetCapAcrossProcesses(t *testing.T) {
	localpg.Require(t, localpg.Available())
	localpg.Require(t, localpg.RedisAvailable())
	bin := pgguardBinary(t)
	pg, err := localpg.Start(localpg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	rd, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })

	const capacity, perInstance = 12, 60
	extra := fmt.Sprintf(`
[databases.app]
primary = %q
fleet_max_connections = %d

[[users]]
name = "app"
password = "app"

[[users]]
name = "admin"
password = "admin-pw"

[admin]
users = ["admin"]

[pool]
size = 10
max_overflow = 0
wait_timeout = "30s"

[querylog]
path = ""

[limiter]
redis_url = %q
`, pg.URL("app"), capacity, rd.URL())
	ins := []*fleetInstance{startFleetInstance(t, bin, "a", extra), startFleetInstance(t, bin, "b", extra), startFleetInstance(t, bin, "c", extra)}
	act := sampleActivity(t, pg.SuperURL("postgres"), pg.User())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstErrs errList
	for _, in := range ins {
		in.hammer(perInstance, fmt.Sprintf("postgres://app:app@%s/app?sslmode=disable", in.addr), stop, &firstErrs, &wg)
	}
	stopped := false
	defer func() {
		if !stopped {
			close(stop)
			wg.Wait()
			act.finish()
		}
	}()
	rc := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rc.Close()
	leaseKey := "pgguard:fleet:lease:" + pg.Addr()
	leases := func() map[string]string {
		m, _ := rc.HGetAll(context.Background(), leaseKey).Result()
		return m
	}

	// Phase 1: all three serve.
	time.Sleep(3 * time.Second)
	var phase1 [3]int64
	for i, in := range ins {
		phase1[i] = in.served.Load()
	}
	t.Logf("phase 1 (3 instances, 3s): served a=%d b=%d c=%d, leases %v, max pg_stat_activity %d over %d samples",
		phase1[0], phase1[1], phase1[2], leases(), act.max.Load(), act.samples.Load())
	for i, n := range phase1 {
		if n == 0 {
			t.Fatalf("instance %s served nobody: starved", ins[i].id)
		}
	}

	// SHOW FLEET and GET /fleet list the three, and the totals.
	v := ins[0].fleetView(t)
	if len(v.Instances) != 3 || len(v.Totals) != 1 || v.Totals[0].Cap != capacity || v.Totals[0].ServerConns > capacity {
		t.Fatalf("GET /fleet: %+v", v)
	}
	admin, err := pgconn.Connect(context.Background(), fmt.Sprintf("postgres://admin:admin-pw@%s/pgguard?sslmode=disable", ins[1].addr))
	if err != nil {
		t.Fatal(err)
	}
	res, err := admin.Exec(context.Background(), "SHOW FLEET").ReadAll()
	admin.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, r := range res[0].Rows {
		rows = append(rows, string(r[0]))
	}
	if got := strings.Join(rows, ","); got != "a,b (this),c,TOTAL app" {
		t.Fatalf("SHOW FLEET lists %q", got)
	}

	// A fleet-wide switch flipped on a reaches b and c.
	flip := func(on string) {
		req, _ := http.NewRequest("POST", "http://"+ins[0].http+"/switches/disable_workers?fleet=1", strings.NewReader(on))
		req.SetBasicAuth("admin", "admin-pw")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("fleet-wide flip: %d %s", resp.StatusCode, body)
		}
	}
	flipped := time.Now()
	flip("on")
	for _, in := range ins {
		deadline := time.Now().Add(2 * time.Second)
		for !fleetSwitchOn(t, in) {
			if time.Now().After(deadline) {
				t.Fatalf("disable_workers flipped fleet-wide did not reach %s within 2s", in.id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("fleet-wide disable_workers reached all three in %s", time.Since(flipped).Round(time.Millisecond))
	flip("off")

	// Phase 2: kill -9 c; its leases are free within lease_ttl (1s).
	c := ins[2]
	before := c.served.Load()
	c.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	for leases()["c"] != "" {
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("c's leases still in Redis 5s after kill -9: %v", leases())
		}
		time.Sleep(10 * time.Millisecond)
	}
	freed := time.Since(killed)
	for {
		m := leases()
		var ab int
		fmt.Sscan(m["a"], &ab)
		var b int
		fmt.Sscan(m["b"], &b)
		if ab+b == capacity {
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("a and b did not take c's leases up: %v", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
	takenUp := time.Since(killed)
	cErrs := c.errs.Load()
	c.errs.Store(0) // c's clients lost their pgguard: expected
	t.Logf("kill -9 of c (served %d): its leases gone from Redis after %s (lease_ttl 1s), a and b hold all %d after %s; c's %d clients saw the kill",
		before, freed.Round(time.Millisecond), capacity, takenUp.Round(time.Millisecond), cErrs)
	if freed > 1500*time.Millisecond {
		t.Errorf("c's leases freed after %s, over lease_ttl 1s (+0.5s)", freed)
	}

	// Phase 3: Redis down: the static shares (12 / 2) hold the cap.
	maxBefore := act.max.Load()
	rd.Kill()
	downAt := time.Now()
	time.Sleep(2 * time.Second)
	modes := []string{ins[0].fleetView(t).Mode, ins[1].fleetView(t).Mode}
	servedDown := [2]int64{ins[0].served.Load(), ins[1].served.Load()}
	time.Sleep(time.Second)
	servedDown = [2]int64{ins[0].served.Load() - servedDown[0], ins[1].served.Load() - servedDown[1]}
	t.Logf("Redis down %s: modes %v, served in the last 1s a=%d b=%d", time.Since(downAt).Round(time.Millisecond), modes, servedDown[0], servedDown[1])
	if modes[0] != "static" || modes[1] != "static" {
		t.Fatalf("with Redis down the instances say %v, want static", modes)
	}
	if servedDown[0] == 0 || servedDown[1] == 0 {
		t.Fatalf("an instance served nobody on its static share: %v", servedDown)
	}

	// Phase 4: Redis back: leases again.
	if err := rd.Restart(); err != nil {
		t.Fatal(err)
	}
	backAt := time.Now()
	for ins[0].fleetView(t).Mode != "leases" || ins[1].fleetView(t).Mode != "leases" {
		if time.Since(backAt) > 10*time.Second {
			t.Fatal("the instances did not go back to leases with Redis back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // past the handover (lease_ttl)
	final := leases()
	close(stop)
	wg.Wait()
	act.finish()
	stopped = true

	t.Logf("Redis back: leases again after %s, Redis holds %v; max pg_stat_activity %d before the outage, %d overall, over %d samples",
		time.Since(backAt).Round(time.Millisecond), final, maxBefore, act.max.Load(), act.samples.Load())
	t.Logf("served overall a=%d b=%d c=%d (c until killed)", ins[0].served.Load(), ins[1].served.Load(), c.served.Load())
	if act.max.Load() > capacity {
		t.Errorf("pg_stat_activity showed %d of the app's connections, over the fleet cap %d", act.max.Load(), capacity)
	}
	if final["a"] == "" || final["b"] == "" {
		t.Errorf("after Redis came back a and b hold no leases in it: %v", final)
	}
	for _, in := range ins[:2] {
		if n := in.errs.Load(); n != 0 {
			t.Errorf("%s's clients saw %d errors: %v", in.id, n, firstErrs.errs)
		}
	}
}

// fleetSwitchOn reports whether the instance's disable_workers is on, from /status.
func fleetSwitchOn(t *testing.T, in *fleetInstance) bool {
	t.Helper()
	resp, err := http.Get("http://" + in.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), "\npgguard_workers_disabled 1")
}

// An upstream whose max_connections is below the pool's demand refuses
// dials with 53300: clients wait for a connection instead, and none sees
// an error; the refusals are counted.
func TestUpstreamFullClientsWait(t *testing.T) {
	localpg.Require(t, localpg.Available())
	bin := pgguardBinary(t)
	// 8 slots, 3 reserved for superusers: the app gets 5, the pool wants 10.
	pg, err := localpg.Start(localpg.Options{MaxConnections: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	in := startFleetInstance(t, bin, "solo", fmt.Sprintf(`
[databases.app]
primary = %q

[pool]
size = 10
max_overflow = 0
wait_timeout = "30s"

[querylog]
path = ""
`, pg.URL("app")))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstErrs errList
	in.hammer(30, fmt.Sprintf("postgres://app:app@%s/app?sslmode=disable", in.addr), stop, &firstErrs, &wg)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	resp, err := http.Get("http://" + in.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var refusals float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, `pgguard_upstream_refusals_total{database="app"}`) {
			fmt.Sscan(strings.Fields(line)[1], &refusals)
		}
	}
	t.Logf("max_connections 8 (5 for the app), pool 10, 30 clients for 3s: served %d, errors %d, upstream refusals retried %v",
		in.served.Load(), in.errs.Load(), refusals)
	if n := in.errs.Load(); n != 0 {
		t.Fatalf("clients saw %d errors with a full upstream, want none: %v", n, firstErrs.errs)
	}
	if refusals == 0 {
		t.Fatal("the upstream never refused a connection: the test did not test")
	}
	// One try per retry delay (20 ms doubling to 250 ms), not one per
	// transaction: a full Neon is not to be hammered with logins.
	if refusals > 60 {
		t.Errorf("%v refused dials in 3s: the pool retries too eagerly", refusals)
	}
	if in.served.Load() == 0 {
		t.Fatal("nobody was served")
	}
}
