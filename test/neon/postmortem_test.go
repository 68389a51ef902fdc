package neon

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// The post-mortem's traffic per minute of the day, fleet-wide
// (/work/shared/seeds: 1,440 + 240 worker queries and 144,000 + ~50,000
// API queries a day).
const (
	brandingPerMinute = 100 // GET /branding, on every page load
	otherPerMinute    = 35  // other endpoints: ~50,000 a day
	workerEvery       = 1   // AvailabilityBackgroundWorker: every minute
	otherWorkersEvery = 6   // other workers: 240 a day
	dayMinutes        = 10  // minutes of daytime traffic replayed
	nightMinutes      = 15  // then minutes of workers only
)

// pmSetup is one column of the replay: what the three pgguard instances
// are configured with.
type pmSetup struct {
	name          string
	limits, cache bool
}

// pmResult is what the compute saw in one replay.
type pmResult struct {
	setup                         pmSetup
	dayQueries, nightQueries      int64
	daySent                       int64   // queries the clients sent in the day phase
	daySimple                     int64   // simple Query messages among dayQueries
	dayAwake, nightAwake          float64 // share of the phase
	wakes                         int
	workerRefused, workerAnswered int64
}

// TestPostMortemReplay: a fleet of three pgguard instances on one Redis in
// front of one simulated compute replays the post-mortem's workload in
// scaled time, with no rules, with the runbook's limit on the poller, and
// with that limit plus the branding query cached; the queries reaching the
// compute and its awake share are logged side by side with the
// post-mortem's own figures.
func TestPostMortemReplay(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	ctx := context.Background()
	setupConn, err := pgx.Connect(ctx, pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS tenant_branding (tenant_id int PRIMARY KEY, logo text, color text)",
		"INSERT INTO tenant_branding VALUES (1, 'logo.svg', '#0a7') ON CONFLICT DO NOTHING",
	} {
		if _, err := setupConn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	setupConn.Close(ctx)

	var results []pmResult
	for _, s := range []pmSetup{{"no rules", false, false}, {"limits", true, false}, {"limits + cache", true, true}} {
		t.Run(strings.ReplaceAll(s.name, " ", ""), func(t *testing.T) {
			results = append(results, replayPostMortem(t, s))
		})
	}
	if len(results) != 3 {
		return
	}
	perDay := func(q int64, minutes int) string { return fmt.Sprintf("%d", q*1440/int64(minutes)) }
	var b strings.Builder
	fmt.Fprintf(&b, "\npost-mortem replay: 3 pgguard instances on one Redis, one compute, suspend_after 4 min, %d min of daytime traffic then %d min of workers only (scaled 600x)\n", dayMinutes, nightMinutes)
	fmt.Fprintf(&b, "%-16s %12s %21s %18s %12s %12s %9s %s\n", "setup", "clients sent", "reaching the compute", "of which pgguard's", "post-mortem", "awake share", "awake", "wake-ups / poller")
	fmt.Fprintf(&b, "%-16s %12s %21s %18s %12s %12s %9s %s\n", "", "(per day)", "(per day)", "set_config", "(per day)", "(daytime)", "(night)", "answered / refused")
	pm := []string{"~195,680", "-", "~50,816"}
	for i, r := range results {
		fmt.Fprintf(&b, "%-16s %12s %21s %18s %12s %11.0f%% %8.0f%% %d / %d / %d\n", r.setup.name, perDay(r.daySent, dayMinutes), perDay(r.dayQueries, dayMinutes),
			perDay(r.daySimple-int64(dayMinutes/workerEvery+dayMinutes/otherWorkersEvery), dayMinutes), pm[i],
			100*r.dayAwake, 100*r.nightAwake, r.wakes, r.workerAnswered, r.workerRefused)
	}
	t.Log(b.String())
	if results[1].workerAnswered*3 > results[0].workerAnswered || results[2].dayQueries*2 > results[0].dayQueries {
		t.Errorf("the limit did not cut the poller's queries, or limits and cache the queries reaching the compute: %+v", results)
	}
	if results[0].nightAwake < 0.95 {
		t.Errorf("the 60-s poller alone kept the compute awake only %.0f%% of the night; want all of it", 100*results[0].nightAwake)
	}
	if results[1].nightAwake >= results[0].nightAwake {
		t.Errorf("limiting the poller did not let the compute sleep at night: %.2f vs %.2f", results[1].nightAwake, results[0].nightAwake)
	}
}

func replayPostMortem(t *testing.T, s pmSetup) pmResult {
	guardtest.CheckGoroutines(t)
	redis, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redis.Stop() })
	sim := startSim(t, neonsim.Options{SuspendAfter: suspend})
	e := sim.Endpoint(ep)
	var gs []*guard
	for range 3 {
		cfg := baseConfig(sim.URL(ep, appUser, appSecret, "app"), suspend)
		cfg.Pool.Size, cfg.Pool.MaxOverflow = 8, 4 // DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW after the fix
		cfg.Limiter.RedisURL = redis.URL()
		if s.limits { // the runbook's 300 s, enforced fleet-wide
			cfg.Limits = []config.Limit{{Name: "availability-worker", ApplicationName: "availability-worker", QueriesPerHour: 12 * 600, Burst: 1, Action: "reject"}}
		}
		if s.cache { // the post-mortem's 5-minute TTL, scaled
			cfg.Cache = []config.CacheRule{{Name: "branding", Query: "SELECT * FROM tenant_branding WHERE tenant_id = $1", TTL: config.D(5 * minute), MaxEntryBytes: 1 << 20}}
		}
		gs = append(gs, startGuard(t, cfg, sim))
	}
	ctx := context.Background()
	var res pmResult
	res.setup = s
	var wg sync.WaitGroup
	var failed atomic.Value
	var sent atomic.Int64
	run := func(g *guard, app string, every time.Duration, d time.Duration, q func(c *pgx.Conn) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, g.url("app", app))
			if err != nil {
				failed.CompareAndSwap(nil, err)
				return
			}
			defer c.Close(ctx)
			tick(every, d, func() {
				sent.Add(1)
				if err := q(c); err != nil {
					if pgCode(err) == "53400" && app == "availability-worker" {
						atomic.AddInt64(&res.workerRefused, 1)
						return
					}
					failed.CompareAndSwap(nil, fmt.Errorf("%s: %w", app, err))
				} else if app == "availability-worker" {
					atomic.AddInt64(&res.workerAnswered, 1)
				}
			})
		}()
	}
	workers := func(d time.Duration) {
		run(gs[0], "availability-worker", workerEvery*minute, d, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT count(*) FROM tenant_branding")
			return err
		})
		run(gs[1], "other-worker", otherWorkersEvery*minute, d, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT now()")
			return err
		})
	}

	l0 := e.Ledger()
	q0 := l0.Queries
	dayStart := time.Now()
	day := dayMinutes * minute
	workers(day)
	for _, g := range gs { // the API on every machine, a third of the traffic each
		run(g, "api-branding", 3*minute/brandingPerMinute, day, func(c *pgx.Conn) error {
			rows, err := c.Query(ctx, "SELECT * FROM tenant_branding WHERE tenant_id = $1", 1)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		})
		run(g, "api-other", 3*minute/otherPerMinute, day, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT $1::int", 7)
			return err
		})
	}
	wg.Wait()
	dayEnd := time.Now()
	l1 := e.Ledger()
	q1 := l1.Queries
	res.daySent, res.daySimple = sent.Load(), l1.SimpleQueries-l0.SimpleQueries
	night := nightMinutes * minute
	workers(night)
	wg.Wait()
	nightEnd := time.Now()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	l := e.Ledger()
	res.dayQueries, res.nightQueries = q1-q0, l.Queries-q1
	res.dayAwake = awakeShare(l, dayStart, dayEnd)
	res.nightAwake = awakeShare(l, dayEnd, nightEnd)
	res.wakes = len(l.Wakes)
	if !s.limits { // the fleet's figure, merged in Redis by every instance's janitor each second
		time.Sleep(1500 * time.Millisecond)
		l := e.Ledger()
		for i, g := range gs {
			b := g.lim.Budget().Snapshot()
			model := g.endpoint(t).AwakeSeconds
			t.Logf("instance %d: model awake %.2fs (fleet figure: %v) against the ledger's %.2fs; the fleet bitmap has one-second resolution",
				i, model, b.Fleet, l.AwakeTime.Seconds())
			// A bit per second: each awake period may gain up to a second
			// at either end.
			if tol := 0.01*l.AwakeTime.Seconds() + 2*float64(len(l.Awake)); !b.Fleet || math.Abs(model-l.AwakeTime.Seconds()) > tol {
				t.Errorf("instance %d: fleet model %.2fs against the ledger's %.2fs (tolerance %.2fs), fleet %v", i, model, l.AwakeTime.Seconds(), tol, b.Fleet)
			}
		}
	}
	t.Logf("%s: day %d queries reached the compute (awake %.0f%%), night %d (awake %.0f%%), %d wake-ups; poller %d answered, %d refused; %d simple queries of %d in all",
		s.name, res.dayQueries, 100*res.dayAwake, res.nightQueries, 100*res.nightAwake, res.wakes, res.workerAnswered, res.workerRefused, l.SimpleQueries-l0.SimpleQueries, l.Queries-l0.Queries)
	return res
}

// awakeShare is the share of [a, b) the ledger has the compute awake.
func awakeShare(l neonsim.Ledger, a, b time.Time) float64 {
	var d time.Duration
	now := time.Now()
	for _, iv := range l.Awake {
		end := iv.End
		if end.IsZero() {
			end = now
		}
		lo, hi := later(iv.Start, a), earlier(end, b)
		if hi.After(lo) {
			d += hi.Sub(lo)
		}
	}
	return float64(d) / float64(b.Sub(a))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
