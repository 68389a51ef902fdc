package proxy_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
)

// startStandby starts a streaming replica of pg (pg_basebackup -R) with the
// given settings, stopped when the test ends, and waits until it has
// replayed everything pg wrote so far.
func startStandby(t *testing.T, settings map[string]string) *localpg.Cluster {
	t.Helper()
	sb, err := pg.StartStandby(settings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Stop() })
	return sb
}

// replicaConfig is testConfig with sb as database app's replica.
func replicaConfig(sb *localpg.Cluster, reads string) *config.Config {
	cfg := testConfig("transaction")
	cfg.Databases["app"].Replicas = []string{sb.URL("app")}
	cfg.Databases["app"].ReplicaReads = reads
	cfg.Replica.PoolSize = 2
	return cfg
}

// waitReplayed waits until sb has replayed pg's current position.
func waitReplayed(t *testing.T, sb *localpg.Cluster) {
	t.Helper()
	ctx := context.Background()
	var lsn string
	if err := pgScalar(ctx, pg.SuperURL("app"), "SELECT pg_current_wal_lsn()::text", &lsn); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := sb.QueryInt(ctx, "SELECT (pg_last_wal_replay_lsn() >= $1::pg_lsn)::int", lsn)
		if err == nil && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby did not replay %s: %v", lsn, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pgScalar(ctx context.Context, url, sql string, dst any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dst)
}

// TestReplicaRouting: with replica_reads = "read_only", single read-only
// statements and READ ONLY transactions are read on the replica (counted
// in its pg_stat_user_tables), everything else on the primary.
func TestReplicaRouting(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_route; CREATE TABLE rr_route (id int); INSERT INTO rr_route SELECT generate_series(1, 10); GRANT ALL ON rr_route TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, nil)
	waitReplayed(t, sb)
	g := startGuard(t, replicaConfig(sb, "read_only"))

	scans := func() (primary, replica int64) {
		t.Helper()
		var err error
		if primary, err = pg.SeqScans(ctx, "rr_route"); err != nil {
			t.Fatal(err)
		}
		if replica, err = sb.SeqScans(ctx, "rr_route"); err != nil {
			t.Fatal(err)
		}
		return primary, replica
	}
	cases := []struct {
		name      string
		run       func(c *pgx.Conn) error
		onReplica bool
	}{
		{"select", func(c *pgx.Conn) error {
			var n int
			return c.QueryRow(ctx, "SELECT count(*) FROM rr_route").Scan(&n)
		}, true},
		{"select with parameter", func(c *pgx.Conn) error {
			var n int
			return c.QueryRow(ctx, "SELECT count(*) FROM rr_route WHERE id > $1", 3).Scan(&n)
		}, true},
		{"read-only transaction", func(c *pgx.Conn) error {
			tx, err := c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
			if err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM rr_route").Scan(&n); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}, true},
		{"begin; set transaction read only", func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "BEGIN; SET TRANSACTION READ ONLY; SELECT count(*) FROM rr_route; COMMIT")
			return err
		}, true},
		{"read-write transaction", func(c *pgx.Conn) error {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM rr_route").Scan(&n); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}, false},
		{"locking read", func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT * FROM rr_route WHERE id = 1 FOR UPDATE")
			return err
		}, false},
		{"volatile function", func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT count(*), nextval('pg_catalog.pg_class_oid_seq'::regclass) FROM rr_route")
			_ = err // the sequence does not exist: the primary says so
			return nil
		}, false},
		{"user function", func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT count(*) FROM rr_route WHERE my_func(id)")
			_ = err // the primary says it does not exist
			return nil
		}, false},
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/%v", tc.name, mode), func(t *testing.T) {
				c := connect(t, g.url("app"), mode)
				p0, r0 := scans()
				const n = 5
				for i := 0; i < n; i++ {
					if err := tc.run(c); err != nil {
						t.Fatal(err)
					}
				}
				p1, r1 := scans()
				dp, dr := p1-p0, r1-r0
				if tc.onReplica && (dr < n || dp != 0) {
					t.Errorf("%d runs: %d scans on the replica, %d on the primary; want them on the replica", n, dr, dp)
				}
				if !tc.onReplica && dr != 0 {
					t.Errorf("%d runs: %d scans on the replica, %d on the primary; want none on the replica", n, dr, dp)
				}
			})
		}
	}

	// The replica shows up in SHOW POOLS and SHOW SERVERS.
	c := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx, "SELECT 1 FROM rr_route LIMIT 1"); err != nil {
		t.Fatal(err)
	}
	pools := g.Pools()
	if len(pools) != 2 || pools[1].Upstream != "replica" || pools[1].UpstreamHost != sb.Addr() {
		t.Errorf("pools %+v: want the primary's and the replica's", pools)
	}
	found := false
	for _, s := range g.Servers() {
		found = found || s.Upstream == "replica" && s.Host == sb.Addr()
	}
	if !found {
		t.Errorf("servers %+v: no replica connection", g.Servers())
	}
}

// TestReplicaRoutes: [[routes]] sends one application's read-only work to
// the replica while replica_reads is off; others stay on the primary.
func TestReplicaRoutes(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_routes; CREATE TABLE rr_routes (id int); GRANT ALL ON rr_routes TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, nil)
	waitReplayed(t, sb)
	cfg := replicaConfig(sb, "off")
	cfg.Routes = []config.Route{{Name: "reports", ApplicationName: "reporting", To: "replica"}}
	g := startGuard(t, cfg)
	run := func(app string) {
		c := connect(t, g.url("app")+"&application_name="+app, pgx.QueryExecModeCacheStatement)
		for i := 0; i < 5; i++ {
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM rr_routes").Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
	}
	r0, _ := sb.SeqScans(ctx, "rr_routes")
	run("web")
	r1, _ := sb.SeqScans(ctx, "rr_routes")
	run("reporting")
	r2, _ := sb.SeqScans(ctx, "rr_routes")
	if r1 != r0 || r2-r1 < 5 {
		t.Errorf("replica scans: web %d (want 0), reporting %d (want 5)", r1-r0, r2-r1)
	}
}

// syncCommit makes a client's commits wait for their WAL to be flushed (and
// so sent to the standby), as on Neon: localpg runs synchronous_commit off,
// which leaves a commit's WAL to the WAL writer's next round (200ms).
const syncCommit = "&options=-c%20synchronous_commit%3Don"

// rywRounds writes a row and reads it back n times: writes through w,
// reads through r; it returns how many reads missed their own write.
func rywRounds(t *testing.T, w, r *pgx.Conn, table string, n int) (misses int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		if _, err := w.Exec(ctx, "INSERT INTO "+table+" VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var got int
		if err := r.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE id = $1", i).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != 1 {
			misses++
		}
	}
	return misses
}

// rywRoundCount is how many write-then-read rounds the read-your-writes
// tests run: 200, or $PGGUARD_RYW_ROUNDS (the 1,000, say).
func rywRoundCount() int {
	if n, err := strconv.Atoi(os.Getenv("PGGUARD_RYW_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 200
}

// delayedStandby creates table (id int) afresh and starts a standby that
// applies the primary's commits 30 ms late, replayed up to now, with a
// config reading on it (replica_reads "read_only", ryw_wait 2s).
func delayedStandby(t *testing.T, table string) (*localpg.Cluster, *config.Config) {
	t.Helper()
	if err := pg.Exec(context.Background(), "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int); GRANT ALL ON "+table+" TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, map[string]string{"recovery_min_apply_delay": "30ms"})
	waitReplayed(t, sb)
	cfg := replicaConfig(sb, "read_only")
	cfg.Replica.RYWWait = config.D(2 * time.Second)
	return sb, cfg
}

// TestReadYourWrites: with the standby delayed, no read through pgguard
// misses the write its session made just before; the same rounds with
// reads on the standby directly miss.
func TestReadYourWrites(t *testing.T) {
	ctx := context.Background()
	sb, cfg := delayedStandby(t, "rr_ryw")
	g := startGuard(t, cfg)
	rounds := rywRoundCount()

	direct := connect(t, sb.URL("app"), pgx.QueryExecModeCacheStatement)
	primary := connect(t, pg.URL("app")+syncCommit, pgx.QueryExecModeCacheStatement)
	if m := rywRounds(t, primary, direct, "rr_ryw", rounds); m == 0 {
		t.Errorf("reads on the delayed standby directly: 0 of %d missed; the test proves nothing", rounds)
	} else {
		t.Logf("reads on the standby directly: %d of %d missed their write", m, rounds)
	}
	if err := pg.Exec(ctx, "TRUNCATE rr_ryw"); err != nil {
		t.Fatal(err)
	}
	waitReplayed(t, sb)
	c := connect(t, g.url("app")+syncCommit, pgx.QueryExecModeCacheStatement)
	rywOnReplica(t, sb, c, c, "rr_ryw", rounds, "through pgguard, a session's own write")
}

// rywOnReplica runs rywRounds through pgguard on table and requires that
// no read missed its write and that most reads ran on the replica sb
// (after waiting for its replay: ryw_wait 2s, delay 30ms).
func rywOnReplica(t *testing.T, sb *localpg.Cluster, w, r *pgx.Conn, table string, rounds int, what string) {
	t.Helper()
	ctx := context.Background()
	r0, _ := sb.SeqScans(ctx, table)
	if m := rywRounds(t, w, r, table, rounds); m != 0 {
		t.Errorf("%s: %d of %d reads missed", what, m, rounds)
	}
	r1, _ := sb.SeqScans(ctx, table)
	t.Logf("%s: %d of %d reads ran on the replica", what, r1-r0, rounds)
	if r1-r0 < int64(rounds/2) {
		t.Errorf("%s: only %d of %d reads ran on the replica; want most", what, r1-r0, rounds)
	}
}

// TestReadYourWritesPinnedWriter: a client pinned to its server (SQL
// PREPARE) keeps it, and its writes still count for read-your-writes
// (ryw_scope "user"): another session of the user reads them on the
// replica only once it has replayed them. Its unnamed statement survives
// the position query asked in its session.
func TestReadYourWritesPinnedWriter(t *testing.T) {
	ctx := context.Background()
	sb, cfg := delayedStandby(t, "rr_pinned")
	cfg.Replica.RYWScope = "user"
	g := startGuard(t, cfg)
	w := connect(t, g.url("app")+syncCommit, pgx.QueryExecModeCacheStatement)
	if _, err := w.Exec(ctx, "PREPARE rr_pin AS SELECT 1"); err != nil { // pins w
		t.Fatal(err)
	}
	r := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	rywOnReplica(t, sb, w, r, "rr_pinned", rywRoundCount()/2, "writes of a pinned session, read by another session of the user")
	// The writer's server kept its unnamed statement through the position
	// queries: a Bind of "" after a write finds the statement parsed before.
	pc := w.PgConn()
	if rr := pc.ExecParams(ctx, "INSERT INTO rr_pinned VALUES (-1)", nil, nil, nil, nil).Read(); rr.Err != nil {
		t.Fatal(rr.Err)
	}
	rr := pc.ExecPrepared(ctx, "", nil, nil, nil).Read() // the INSERT again
	if rr.Err != nil || rr.CommandTag.String() != "INSERT 0 1" {
		t.Errorf("Bind of the unnamed statement after a write: %v, %q", rr.Err, rr.CommandTag)
	}
}

// TestReadYourWritesAcrossInstances: two pgguards on one Redis, ryw_scope
// "user": a write through one is seen by the read through the other.
func TestReadYourWritesAcrossInstances(t *testing.T) {
	if err := localpg.RedisAvailable(); err != nil {
		t.Skip(err)
	}
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	sb, cfg := delayedStandby(t, "rr_fleet")
	cfg.Replica.RYWScope = "user"
	cfg.Limiter.RedisURL = r.URL()
	a, b := startGuard(t, cfg), startGuard(t, cfg)
	for _, g := range []*guard{a, b} {
		guardtest.WaitFor(t, "positions shared through Redis", func() bool {
			return strings.Contains(metricsText(t, g), "pgguard_ryw_redis_up{} 1")
		})
	}
	rounds := rywRoundCount()
	ca := connect(t, a.url("app")+syncCommit, pgx.QueryExecModeCacheStatement)
	cb := connect(t, b.url("app"), pgx.QueryExecModeCacheStatement)
	rywOnReplica(t, sb, ca, cb, "rr_fleet", rounds, "write through one pgguard, read through the other")
}

// TestReplicaLagBound: a replica further behind than max_lag is skipped:
// reads go to the primary.
func TestReplicaLagBound(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_lag; CREATE TABLE rr_lag (id int, pad text); GRANT ALL ON rr_lag TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, nil)
	if err := pg.Exec(ctx, "SET synchronous_commit = on; INSERT INTO rr_lag VALUES (0, '')"); err != nil { // a commit the standby replays
		t.Fatal(err)
	}
	waitReplayed(t, sb)
	// From now on the standby receives commits but applies them an hour late.
	for _, sql := range []string{"ALTER SYSTEM SET recovery_min_apply_delay = '1h'", "SELECT pg_reload_conf()"} {
		if err := sb.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	cfg := replicaConfig(sb, "read_only")
	cfg.Replica.MaxLag = config.D(time.Second)
	g := startGuard(t, cfg)
	time.Sleep(1100 * time.Millisecond) // the standby's last applied commit gets old
	// The standby receives the commit but does not apply it for an hour.
	w := connect(t, g.url("app")+syncCommit, pgx.QueryExecModeCacheStatement)
	if _, err := w.Exec(ctx, "INSERT INTO rr_lag SELECT g, repeat('x', 1000) FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)                             // streamed
	c := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement) // another session: no write of its own to wait for
	p0, _ := pg.SeqScans(ctx, "rr_lag")
	for i := 0; i < 5; i++ {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM rr_lag").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1001 {
			t.Errorf("read %d rows; want 1001 (the primary's)", n)
		}
	}
	p1, _ := pg.SeqScans(ctx, "rr_lag")
	if p1-p0 < 5 {
		t.Errorf("%d of 5 reads on the primary; want all (the replica lags)", p1-p0)
	}
	if !strings.Contains(metricsText(t, g), `pgguard_route_decisions_total{database="app",reason="replicas_lagging",route="primary"}`) {
		t.Errorf("no replicas_lagging decision in the metrics")
	}
}

// TestReplicaStoppedMidRun: clients reading while the replica stops get
// no error; their reads move to the primary.
func TestReplicaStoppedMidRun(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_down; CREATE TABLE rr_down (id int); INSERT INTO rr_down VALUES (1); GRANT ALL ON rr_down TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, nil)
	waitReplayed(t, sb)
	g := startGuard(t, replicaConfig(sb, "read_only"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	reads := 0
	for w := 0; w < 4; w++ {
		c := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				err := c.QueryRow(ctx, "SELECT count(*) FROM rr_down").Scan(&n)
				mu.Lock()
				reads++
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := sb.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d reads failed with the replica stopping: %v", len(errs), reads, errs[0])
	}
	t.Logf("%d reads, replica stopped after 300ms", reads)
}

func metricsText(t *testing.T, g *guard) string {
	t.Helper()
	mfs, err := g.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			b.WriteString(mf.GetName() + "{")
			for i, l := range m.GetLabel() {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, "%s=%q", l.GetName(), l.GetValue())
			}
			fmt.Fprintf(&b, "} %v\n", m.GetGauge().GetValue()+m.GetCounter().GetValue())
		}
	}
	return b.String()
}

// TestReplicaConflictRerun: a read the replica cancels for a recovery
// conflict (40001) before its reply started is run again on the primary:
// the client gets an answer, not the error.
func TestReplicaConflictRerun(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_conflict; CREATE TABLE rr_conflict (id int); INSERT INTO rr_conflict VALUES (1); GRANT ALL ON rr_conflict TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, map[string]string{"max_standby_streaming_delay": "0"})
	waitReplayed(t, sb)
	cfg := replicaConfig(sb, "read_only")
	cfg.Replica.RYWScope = "off"
	g := startGuard(t, cfg)
	c := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	done := make(chan error, 1)
	var n int64
	go func() {
		// Long enough to hold its lock on rr_conflict when the primary takes
		// an exclusive one.
		done <- c.QueryRow(ctx, "SELECT count(*) FROM rr_conflict, generate_series(1, 15000000) g").Scan(&n)
	}()
	time.Sleep(300 * time.Millisecond)
	if err := pg.Exec(ctx, "SET synchronous_commit = on; TRUNCATE rr_conflict"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the read failed: %v", err)
	}
	if !strings.Contains(metricsText(t, g), `pgguard_replica_reruns_total{database="app"} 1`) {
		t.Errorf("the read was not run again (n = %d):\n%s", n, metricsText(t, g))
	}
	if n != 0 {
		t.Errorf("count %d; want 0: the primary's answer after TRUNCATE", n)
	}
}

// TestReplicaBudget: the budget model books a replica's activity to a
// compute of its own (Neon bills each replica), not to the primary's.
func TestReplicaBudget(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS rr_budget; CREATE TABLE rr_budget (id int); GRANT ALL ON rr_budget TO tester"); err != nil {
		t.Fatal(err)
	}
	sb := startStandby(t, nil)
	waitReplayed(t, sb)
	cfg := replicaConfig(sb, "read_only")
	lim, err := limiter.New(cfg, guardtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	c := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx, "SELECT count(*) FROM rr_budget"); err != nil {
		t.Fatal(err)
	}
	awake := map[string]bool{}
	for _, e := range lim.Budget().Snapshot().Endpoints {
		awake[e.Endpoint] = e.AwakeNow
	}
	if !awake[sb.Addr()] {
		t.Errorf("endpoints %v: the replica %s is not a compute awake of its own", awake, sb.Addr())
	}
}
