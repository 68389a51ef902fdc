package limiter

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/config"
)

// redisProc is a redis-server of the machine's packages on a free port,
// without persistence, killed when the test ends.
type redisProc struct {
	t    *testing.T
	bin  string
	port int
	cmd  *exec.Cmd
	out  strings.Builder
}

// startRedis skips the test when redis-server is absent, unless CI is set.
func startRedis(t *testing.T) *redisProc {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
			t.Fatalf("redis-server not found (CI=%s): %v", ci, err)
		}
		t.Skip("redis-server not installed (apt-get install redis-server); set CI=true to fail instead")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisProc{t: t, bin: bin, port: ln.Addr().(*net.TCPAddr).Port}
	ln.Close()
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }
func (p *redisProc) url() string  { return "redis://" + p.addr() + "/0" }

func (p *redisProc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "--port", strconv.Itoa(p.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", p.t.TempDir())
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !p.ping() {
		if time.Now().After(deadline) {
			p.t.Fatalf("redis-server did not answer on %s:\n%s", p.addr(), p.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *redisProc) ping() bool {
	c, err := net.DialTimeout("tcp", p.addr(), 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, "+PONG")
}

func (p *redisProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // in case it is stopped
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

func (p *redisProc) signal(sig syscall.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

func (p *redisProc) client(t *testing.T) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: p.addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

var workerClient = Client{Database: "app", User: "app", Application: "availability-worker"}

// Two pgguard instances on one Redis enforce one limit between them.
func TestFleetWideLimit(t *testing.T) {
	r := startRedis(t)
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "availability-worker", QueriesPerMinute: 10, Burst: 5, Action: "reject"})
	cfg.Limiter.RedisURL = r.url()
	admit := func(ls ...*Limiter) int {
		var ss []*Session
		for _, l := range ls {
			ss = append(ss, l.Match(workerClient))
		}
		n := 0
		for range 20 {
			for _, s := range ss {
				if s.Admit(context.Background()) == nil {
					n++
				}
			}
		}
		return n
	}
	a, _, _ := testLimiter(t, cfg, realClock{})
	b, _, _ := testLimiter(t, cfg, realClock{})
	if up := testutil.ToFloat64(a.m.redisUp); up != 1 || a.redisMode() != "fleet" {
		t.Fatalf("redis_up %v mode %s", up, a.redisMode())
	}
	if n := admit(a, b); n != 5 {
		t.Fatalf("two instances admitted %d queries under a fleet-wide burst of 5", n)
	}
	// SUSPEND_REDIS: each instance on its own bucket.
	c, _, _ := testLimiter(t, cfg, realClock{}, WithRedisSuspended(true))
	d, _, _ := testLimiter(t, cfg, realClock{}, WithRedisSuspended(true))
	if c.redisMode() != "suspended" {
		t.Fatalf("mode %s", c.redisMode())
	}
	if n := admit(c, d); n != 10 {
		t.Fatalf("suspended Redis: %d admitted, want 5 per instance", n)
	}
	t.Logf("fleet-wide: 40 attempts on 2 instances -> 5 admitted; with SUSPEND_REDIS -> 10 (5 each)")
}

// Two instances seeing queries in the same minutes count the compute's awake
// time once; a span flushed late still counts.
func TestFleetBudget(t *testing.T) {
	r := startRedis(t)
	cfg := config.Default()
	cfg.Limiter.RedisURL = r.url()
	ca, cb := newFakeClock(day0), newFakeClock(day0)
	a, _, _ := testLimiter(t, cfg, ca)
	b, _, _ := testLimiter(t, cfg, cb)
	for k := range 10 { // A at :00, B at :30 of minutes 0..9
		a.ObserveUpstreamQuery("app", "availability-worker", day0.Add(time.Duration(k)*time.Minute))
		b.ObserveUpstreamQuery("app", "availability-worker", day0.Add(time.Duration(k)*time.Minute+30*time.Second))
	}
	ca.Set(day0.Add(20 * time.Minute))
	cb.Set(day0.Add(20 * time.Minute))
	a.tick()
	b.tick()
	a.tick()
	// Union: 00:00 to 09:30 + 5 min = 14.5 min; each alone saw 14 min; a sum would be 28.
	for name, l := range map[string]*Limiter{"A": a, "B": b} {
		st := l.Budget().Snapshot()
		if !st.Fleet || st.AwakeSeconds < 869 || st.AwakeSeconds > 871 {
			t.Fatalf("%s: fleet awake %v s (fleet %v), want 870", name, st.AwakeSeconds, st.Fleet)
		}
	}
	// A later span pushed first, an earlier one after it: both count.
	a.ObserveUpstreamQuery("app", "w", day0.Add(2*time.Hour))
	ca.Set(day0.Add(3 * time.Hour))
	a.tick()
	b.ObserveUpstreamQuery("app", "w", day0.Add(time.Hour))
	cb.Set(day0.Add(3 * time.Hour))
	b.tick()
	a.tick()
	if st := a.Budget().Snapshot(); st.AwakeSeconds < 1469 || st.AwakeSeconds > 1471 {
		t.Fatalf("fleet awake %v s, want 1470 (14.5 + 5 + 5 min)", st.AwakeSeconds)
	}
	if n, err := r.client(t).Exists(context.Background(), "pgguard:limiter:awake:app:2026-04").Result(); err != nil || n != 1 {
		t.Fatalf("month bitmap: %v %v", n, err)
	}
	t.Logf("fleet budget: 2 instances, queries 30 s apart for 10 min -> 870 s awake (not 1680); late span merged -> 1470 s")
}

// Two instances on one Redis run overlapping queries: A from 10:00 to
// 10:10, B from 10:05 to 10:15. By hand: active 10:00 to 10:15, awake to
// 10:20 = 20 min; each instance alone saw 15 min, a sum would be 30. While
// both run, the fleet counts their overlap once too.
func TestFleetBudgetSpans(t *testing.T) {
	r := startRedis(t)
	cfg := config.Default()
	cfg.Limiter.RedisURL = r.url()
	t0 := day0.Add(10 * time.Hour)
	ca, cb := newFakeClock(t0), newFakeClock(t0)
	a, _, _ := testLimiter(t, cfg, ca)
	b, _, _ := testLimiter(t, cfg, cb)
	qa := a.Connected("app", "etl", t0)
	qa.Query("etl", t0)
	var qb *Activity
	for m := 1; m <= 30; m++ { // the janitors' ticks, once a minute
		now := t0.Add(time.Duration(m) * time.Minute)
		switch m {
		case 5:
			qb = b.Connected("app", "etl", now)
			qb.Query("etl", now)
		case 10:
			qa.Ready(now, false, false)
		case 15:
			qb.Ready(now, false, false)
		}
		ca.Set(now)
		cb.Set(now)
		a.tick()
		b.tick()
		a.tick() // reads B's spans back
		if m == 8 {
			// Both running: awake 10:00 to 10:08 = 8 min, not 8 + 3.
			for name, l := range map[string]*Limiter{"A": a, "B": b} {
				if st := l.Budget().Snapshot(); !st.Fleet || st.AwakeSeconds < 479 || st.AwakeSeconds > 481 {
					t.Fatalf("10:08, %s: fleet awake %v s (fleet %v), want 480", name, st.AwakeSeconds, st.Fleet)
				}
			}
		}
	}
	for name, l := range map[string]*Limiter{"A": a, "B": b} {
		st := l.Budget().Snapshot()
		if !st.Fleet || st.AwakeSeconds < 1199 || st.AwakeSeconds > 1201 {
			t.Fatalf("%s: fleet awake %v s (fleet %v), want 1200", name, st.AwakeSeconds, st.Fleet)
		}
	}
	t.Logf("fleet budget: queries 10:00-10:10 on A and 10:05-10:15 on B -> 1200 s awake (each alone 900 s, a sum 1800 s)")
}

// Redis hanging, then dying: queries keep being answered within the call
// timeout, the limits go per instance, and come back fleet-wide once Redis
// answers again.
func TestRedisOutage(t *testing.T) {
	r := startRedis(t)
	cfg := testConfig(config.Limit{Name: "outage", ApplicationName: "availability-worker", QueriesPerSecond: 1e6, Burst: 1000, Action: "reject"})
	cfg.Limiter.RedisURL = r.url()
	l, _, logs := testLimiter(t, cfg, realClock{}, withRedisBackoff(50*time.Millisecond, 200*time.Millisecond))
	s := l.Match(workerClient)
	ctx := context.Background()
	rc := r.client(t)
	if err := s.Admit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rc.Exists(ctx, "pgguard:limiter:rule:outage").Result(); n != 1 {
		t.Fatal("Admit did not use the Redis bucket")
	}
	burst := func(what string) {
		t.Helper()
		var worst, total time.Duration
		for range 50 {
			t0 := time.Now()
			if err := s.Admit(ctx); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			d := time.Since(t0)
			worst, total = max(worst, d), total+d
		}
		if worst > 150*time.Millisecond { // 50 ms timeout plus scheduling slack on a busy machine
			t.Fatalf("%s: an Admit took %v", what, worst)
		}
		t.Logf("%s: 50 Admits, slowest %v, mean %v; redis_up = %v, mode %s",
			what, worst, total/50, testutil.ToFloat64(l.m.redisUp), l.redisMode())
	}
	waitUp := func(want float64) {
		t.Helper()
		waitFor(t, "pgguard_limiter_redis_up = "+strconv.Itoa(int(want)), func() bool { return testutil.ToFloat64(l.m.redisUp) == want })
	}

	r.signal(syscall.SIGSTOP) // hung: calls time out
	burst("redis hung (SIGSTOP)")
	waitUp(0)
	r.signal(syscall.SIGCONT)
	waitUp(1)

	r.kill() // dead: calls fail at once
	burst("redis killed")
	waitUp(0)
	if l.redisMode() != "per_instance" {
		t.Fatalf("mode %s", l.redisMode())
	}
	r.start()
	waitUp(1)
	if err := s.Admit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rc.Exists(ctx, "pgguard:limiter:rule:outage").Result(); n != 1 {
		t.Fatal("after the restart, Admit does not use Redis again")
	}
	if n := logs.Count("redis unreachable, limits are per instance until it returns"); n != 2 {
		t.Fatalf("%d 'unreachable' logs for 2 outages:\n%s", n, logs)
	}
	if n := logs.Count("redis reachable again"); n != 2 {
		t.Fatalf("%d 'reachable again' logs for 2 recoveries", n)
	}
}

// Redis down at start: New does not fail or wait, limits are per instance.
func TestRedisDownAtStart(t *testing.T) {
	cfg := testConfig(config.Limit{Name: "w", ApplicationName: "availability-worker", QueriesPerMinute: 10, Burst: 2, Action: "reject"})
	cfg.Limiter.RedisURL = "redis://127.0.0.1:1/0"
	t0 := time.Now()
	l, _, logs := testLimiter(t, cfg, realClock{}, withRedisBackoff(time.Hour, time.Hour))
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("New took %v with Redis down", d)
	}
	s := l.Match(workerClient)
	n := 0
	for range 5 {
		if s.Admit(context.Background()) == nil {
			n++
		}
	}
	if n != 2 || l.redisMode() != "per_instance" || logs.Count("redis unreachable") != 1 {
		t.Fatalf("admitted %d, mode %s, logs:\n%s", n, l.redisMode(), logs)
	}
}
