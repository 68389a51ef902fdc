package fleet

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func startRedis(t *testing.T) *localpg.Redis {
	t.Helper()
	localpg.Require(t, localpg.RedisAvailable())
	redis.SetLogger(quietRedis{})
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pid := r.Pid(); pid != 0 {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		r.Stop()
	})
	return r
}

// testTTL is the lease TTL of the tests: renewals every 200 ms.
const testTTL = 600 * time.Millisecond

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// member is one instance of a test fleet.
type member struct {
	*Fleet
	leases *Leases
	dead   bool
}

// kill stops the instance as kill -9 would: no renewal, nothing given back.
func (m *member) kill() {
	m.dead = true
	close(m.stop)
	m.wg.Wait()
	m.link.Close()
}

func newMember(t *testing.T, url, id string, capacity int, setup ...func(*Fleet)) *member {
	t.Helper()
	cfg := config.Default()
	cfg.Databases["app"] = &config.Database{Primary: "postgres://u:p@db.example:5432/app", FleetMaxConnections: capacity}
	cfg.Fleet.RedisURL, cfg.Fleet.InstanceID = url, id
	cfg.Fleet.LeaseTTL, cfg.Fleet.Heartbeat = config.D(testTTL), config.D(50*time.Millisecond)
	f, err := New(cfg, slog.New(slog.NewTextHandler(&logBuffer{}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	m := &member{Fleet: f, leases: f.Leases("app", "db.example:5432")}
	for _, s := range setup {
		s(f)
	}
	f.Start()
	t.Cleanup(func() {
		if !m.dead {
			f.Close()
		}
	})
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Three instances taking and giving leases as fast as they can never hold
// more than the cap between them, and Redis's count matches.
func TestLeasesHoldTheCapAcrossInstances(t *testing.T) {
	r := startRedis(t)
	const capacity = 5
	ms := []*member{newMember(t, r.URL(), "a", capacity), newMember(t, r.URL(), "b", capacity), newMember(t, r.URL(), "c", capacity)}
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	var granted [3]atomic.Int64
	for i, m := range ms {
		for range 4 {
			wg.Go(func() {
				for range 200 {
					if !m.leases.TryTake() {
						time.Sleep(time.Millisecond)
						continue
					}
					granted[i].Add(1)
					n := held.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(200 * time.Microsecond)
					held.Add(-1)
					m.leases.Give()
				}
			})
		}
	}
	wg.Wait()
	if peak.Load() > capacity {
		t.Fatalf("peak leases held %d over the cap %d", peak.Load(), capacity)
	}
	for i := range granted {
		if granted[i].Load() == 0 {
			t.Fatalf("instance %d never got a lease", i)
		}
	}
	t.Logf("peak %d of cap %d; granted %d %d %d", peak.Load(), capacity, granted[0].Load(), granted[1].Load(), granted[2].Load())
	for _, m := range ms {
		m.poke()
	}
	waitFor(t, "Redis to count 0 leases", func() bool {
		ms[0].leases.sync()
		return ms[0].leases.Status().FleetTotal == 0
	})
}

// A killed instance's leases are free within lease_ttl; an instance
// refused a lease counts as wishing, and the others' limit drops to their
// fair share.
func TestDeadInstanceLeasesExpireAndFairShare(t *testing.T) {
	r := startRedis(t)
	a, b := newMember(t, r.URL(), "a", 4), newMember(t, r.URL(), "b", 4)
	for range 4 {
		if !a.leases.TryTake() {
			t.Fatal("a refused a lease under the cap")
		}
	}
	if b.leases.TryTake() {
		t.Fatal("b got a fifth lease of a cap of 4")
	}
	// b wishes: a learns it at its next renewal, and may keep only 2.
	waitFor(t, "a to see b wishing", func() bool { return a.leases.Over() })
	if lim := a.leases.Status().Limit; lim != 2 {
		t.Fatalf("a's limit while b wishes is %d, want the fair share 2", lim)
	}
	a.leases.Give()
	a.leases.Give()
	if a.leases.Over() {
		t.Fatal("a still over after giving back to its fair share")
	}
	waitFor(t, "b to get a lease a gave back", func() bool { return b.leases.TryTake() })
	if !b.leases.TryTake() || b.leases.TryTake() {
		t.Fatalf("b should hold 2 of 4 beside a's 2: %+v", b.leases.Status())
	}

	a.kill()
	killed := time.Now()
	waitFor(t, "b to get a's leases", func() bool { return b.leases.TryTake() })
	freed := time.Since(killed)
	if !b.leases.TryTake() {
		t.Fatalf("b did not get a's second lease: %+v", b.leases.Status())
	}
	t.Logf("a killed holding 2 leases: b had them after %s (lease_ttl %s)", freed.Round(time.Millisecond), testTTL)
	if freed > testTTL+300*time.Millisecond {
		t.Fatalf("a's leases freed after %s, want within lease_ttl %s", freed, testTTL)
	}
}

// Redis unreachable: each instance keeps its static share (cap / fleet
// size seen); back: the static share binds one lease_ttl more, then leases.
func TestRedisOutageStaticShareAndHandover(t *testing.T) {
	r := startRedis(t)
	ms := []*member{newMember(t, r.URL(), "a", 6), newMember(t, r.URL(), "b", 6), newMember(t, r.URL(), "c", 6)}
	for range 2 { // every instance registered: the fleet size each saw is 3
		for _, m := range ms {
			m.leases.sync()
		}
	}
	a := ms[0]
	for range 4 {
		if !a.leases.TryTake() {
			t.Fatal("a refused under the cap")
		}
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to notice Redis gone", func() bool { return a.Mode() == "static" })
	st := a.leases.Status()
	if !st.Static || st.Limit != 2 || !a.leases.Over() {
		t.Fatalf("a during the outage: %+v, want static share 2 and over it", st)
	}
	if a.leases.TryTake() {
		t.Fatal("a took a lease beyond its static share")
	}
	a.leases.Give()
	a.leases.Give() // a's pool closed two connections as they were released
	b := ms[1]
	b.leases.TryTake() // b notices Redis gone on its first call
	if !b.leases.TryTake() || b.leases.TryTake() {
		t.Fatalf("b during the outage should get exactly its static share of 2: %+v", b.leases.Status())
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a back on leases", func() bool { return a.Mode() == "leases" })
	if st := a.leases.Status(); !st.Static || st.Limit != 2 {
		t.Fatalf("a just after Redis came back: %+v, want the static share still binding", st)
	}
	waitFor(t, "every instance back", func() bool { return b.Mode() == "leases" && ms[2].Mode() == "leases" })
	waitFor(t, "the handover to end", func() bool { return !a.leases.Status().Static })
	// Leases again: a may grow to what the cap leaves (6 - 2 - 2).
	if !a.leases.TryTake() || !a.leases.TryTake() {
		t.Fatalf("a refused a lease after the handover under the cap: %+v", a.leases.Status())
	}
	if a.leases.TryTake() {
		t.Fatalf("a got a lease over the cap after the handover: %+v", a.leases.Status())
	}
	if st := a.leases.Status(); st.FleetTotal != 6 {
		t.Fatalf("Redis counts %d leases, want 6 (a 4, b 2)", st.FleetTotal)
	}
}

// Heartbeats list every live instance; a switch flipped fleet-wide reaches
// the others within a heartbeat, and an instance that starts later gets it.
func TestHeartbeatsAndFleetSwitches(t *testing.T) {
	r := startRedis(t)
	type flip struct {
		name string
		on   bool
	}
	flips := make(chan flip, 8)
	a := newMember(t, r.URL(), "a", 0, func(f *Fleet) {
		f.Describe = func() Instance {
			return Instance{Version: "t", Clients: 3, Pools: []Pool{{Database: "app", ServerConns: 2}}}
		}
	})
	b := newMember(t, r.URL(), "b", 0, func(f *Fleet) {
		f.Switch = func(name string, on bool, who string) { flips <- flip{name, on} }
	})
	waitFor(t, "both heartbeats", func() bool { return len(b.View(context.Background()).Instances) == 2 })
	v := b.View(context.Background())
	if v.Instances[0].ID != "a" || v.Instances[0].Clients != 3 || len(v.Totals) != 1 || v.Totals[0].ServerConns != 2 {
		t.Fatalf("view %+v", v)
	}
	start := time.Now()
	if err := a.SetSwitch(context.Background(), "read_only", true, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-flips:
		if f != (flip{"read_only", true}) {
			t.Fatalf("b applied %+v", f)
		}
		t.Logf("read_only reached b after %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("the fleet-wide switch did not reach b within 2s")
	}
	late := make(chan flip, 1)
	newMember(t, r.URL(), "c", 0, func(f *Fleet) {
		f.Switch = func(name string, on bool, who string) { late <- flip{name, on} }
	})
	select {
	case f := <-late:
		if f != (flip{"read_only", true}) {
			t.Fatalf("late starter applied %+v", f)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("an instance started later did not pick the fleet's read_only up")
	}
	if err := a.SetSwitch(context.Background(), "pool_size", true, "test"); err == nil {
		t.Fatal("a switch that cannot be flipped fleet-wide was accepted")
	}
	a.kill()
	waitFor(t, "a's heartbeat to expire", func() bool { return len(b.View(context.Background()).Instances) == 2 })
}
