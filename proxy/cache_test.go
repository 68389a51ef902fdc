package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// The result cache through the proxy, against a real PostgreSQL, which
// counts what it executes: every SELECT of the table is a sequential scan
// in pg_stat_user_tables (the table has no index).

const brandingQuery = "SELECT tenant_id, name, color, logo FROM cache_branding WHERE tenant_id = $1"

func brandingRule() config.CacheRule {
	return config.CacheRule{Name: "branding", Query: brandingQuery, TTL: config.D(5 * time.Minute), MaxEntryBytes: 1 << 20}
}

// freshBranding (re)creates the table with three tenants.
func freshBranding(t testing.TB) {
	t.Helper()
	superExec(t, `DROP TABLE IF EXISTS cache_branding;
		CREATE TABLE cache_branding (tenant_id int, name text, color text, logo bytea);
		INSERT INTO cache_branding SELECT i, 'tenant ' || i, '#00' || i, decode(repeat('ab', i * 100), 'hex') FROM generate_series(1, 9) i;
		INSERT INTO cache_branding VALUES (10, 'tenant 10', '#010', decode(repeat('cd', 50000), 'hex'));
		GRANT ALL ON cache_branding TO tester`)
}

func superExec(t testing.TB, sql string) {
	t.Helper()
	if err := pg.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// scans is how many times PostgreSQL has read cache_branding (it has no
// index: each read is a sequential scan), with pgguard's server
// connections ended so that their statistics land.
func scans(t testing.TB) int64 {
	t.Helper()
	n, err := pg.SeqScans(context.Background(), "cache_branding")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cacheGuard starts pgguard with the rules and a cache of its own.
func cacheGuard(t testing.TB, mode string, redisURL string, rules []config.CacheRule, opts ...cache.Option) (*guard, *cache.Cache) {
	t.Helper()
	cfg := testConfig(mode)
	cfg.Cache = rules
	cfg.CacheStore.RedisURL = redisURL
	rc, err := cache.New(cfg, guardtest.Logger(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Cache = rc })
	return g, rc
}

// TestCacheExecutesOncePerTTL runs 1,000 identical cached queries in every
// pgx mode, in both pool modes: in transaction mode PostgreSQL executes
// each mode's first only; in session mode, whose session state pgguard
// does not know exactly, the cache stays out and PostgreSQL executes every
// one. Every answer equals a direct connection's.
func TestCacheExecutesOncePerTTL(t *testing.T) {
	freshBranding(t)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	ctx := context.Background()
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	wants := map[int]string{}
	for tenant := 1; tenant <= len(modes); tenant++ {
		wants[tenant] = brandingRow(t, direct, tenant)
	}
	direct.Close(ctx)
	// In session mode an execution that parses the unnamed statement
	// again (pgx's exec and cache-describe modes) goes to the server,
	// whose unnamed statement must stay the client's.
	sessionModes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeSimpleProtocol}
	for pool, modes := range map[string][]pgx.QueryExecMode{"transaction": modes, "session": sessionModes} {
		t.Run(pool, func(t *testing.T) {
			g, rc := cacheGuard(t, pool, "", []config.CacheRule{brandingRule()})
			for m, mode := range modes {
				before := scans(t) // ends server connections: before a session-mode client links one
				conn := connect(t, g.url("app"), mode)
				tenant := 1 + m // modes may send the same bytes: each reads its own entry
				want := wants[tenant]
				for i := range 1000 {
					if got := brandingRow(t, conn, tenant); got != want {
						t.Fatalf("%v: query %d: %q, direct %q", mode, i, got, want)
					}
				}
				conn.Close(ctx)
				runs := int64(1)
				if pool == "session" {
					runs = 1000
				}
				if n := scans(t) - before; n != runs {
					t.Errorf("%v: PostgreSQL read the table %d times for 1,000 cached queries, want %d; cache: %+v", mode, n, runs, rc.Status())
				}
			}
		})
	}
}

func brandingRow(t testing.TB, conn *pgx.Conn, id int) string {
	t.Helper()
	var tid int
	var name, color string
	var logo []byte
	if err := conn.QueryRow(context.Background(), brandingQuery, id).Scan(&tid, &name, &color, &logo); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d|%s|%s|%x", tid, name, color, logo)
}

// TestCacheInvalidation: a write committed through pgguard makes the next
// read return the new row, whatever way it commits; a write rolled back
// invalidates nothing.
func TestCacheInvalidation(t *testing.T) {
	freshBranding(t)
	superExec(t, "CREATE TABLE IF NOT EXISTS cache_other (x int); GRANT ALL ON cache_other TO tester")
	g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{brandingRule()})
	ctx := context.Background()
	reader := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	writer := connect(t, g.url("app"), pgx.QueryExecModeExec)
	read := func() string {
		t.Helper()
		var name string
		if err := reader.QueryRow(ctx, brandingQuery, 1).Scan(nil, &name, nil, nil); err != nil {
			t.Fatal(err)
		}
		return name
	}
	run := func(sqls ...string) {
		t.Helper()
		for _, sql := range sqls {
			writer.Exec(ctx, sql) // errors are part of some cases
		}
	}
	read()
	for i, c := range []struct {
		name    string
		sqls    []string
		changed bool
	}{
		{"autocommit UPDATE", []string{"UPDATE cache_branding SET name = 'v1' WHERE tenant_id = 1"}, true},
		{"transaction committed", []string{"BEGIN", "UPDATE cache_branding SET name = 'v2' WHERE tenant_id = 1", "COMMIT"}, true},
		{"rolled back", []string{"BEGIN", "UPDATE cache_branding SET name = 'rolled back' WHERE tenant_id = 1", "ROLLBACK"}, false},
		{"failed transaction", []string{"BEGIN", "UPDATE cache_branding SET name = 'failed' WHERE tenant_id = 1", "SELECT 1/0", "COMMIT"}, false},
		{"savepoint rolled back, then committed", []string{"BEGIN", "UPDATE cache_branding SET name = 'v3' WHERE tenant_id = 1",
			"SAVEPOINT s", "SELECT 1/0", "ROLLBACK TO SAVEPOINT s", "COMMIT"}, true},
		{"multi-statement query", []string{"UPDATE cache_branding SET name = 'v4' WHERE tenant_id = 1; SELECT 1"}, true},
		{"another table", []string{"INSERT INTO cache_other VALUES (1)"}, false},
		{"DELETE and INSERT in a CTE", []string{"WITH d AS (DELETE FROM cache_branding WHERE tenant_id = 1 RETURNING *) INSERT INTO cache_branding SELECT tenant_id, 'v5', color, logo FROM d"}, true},
		{"TRUNCATE, rolled back", []string{"BEGIN", "TRUNCATE cache_branding", "ROLLBACK"}, false},
	} {
		before := scans(t)
		old := read()
		executed := scans(t) - before
		run(c.sqls...)
		before = scans(t) // the writes' own scans are not counted
		got := read()
		executed += scans(t) - before
		var now string
		directConn := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
		if err := directConn.QueryRow(ctx, brandingQuery, 1).Scan(nil, &now, nil, nil); err != nil {
			t.Fatal(err)
		}
		directConn.Close(ctx)
		if got != now {
			t.Errorf("%d %s: read %q through the cache, the table says %q", i, c.name, got, now)
		}
		if c.changed && (old == got || executed != 1) {
			t.Errorf("%d %s: before %q, after %q, %d executions (want a change and 1)", i, c.name, old, got, executed)
		}
		if !c.changed && executed != 0 {
			t.Errorf("%d %s: %d executions after a write that changed nothing the entry read (want 0)", i, c.name, executed)
		}
	}
}

// TestCacheFleet: two pgguard instances on one Redis share entries and
// invalidations.
func TestCacheFleet(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	freshBranding(t)
	rules := []config.CacheRule{brandingRule()}
	a, ra := cacheGuard(t, "transaction", r.URL(), rules)
	b, rb := cacheGuard(t, "transaction", r.URL(), rules)
	ctx := context.Background()
	ca := connect(t, a.url("app"), pgx.QueryExecModeCacheStatement)
	cb := connect(t, b.url("app"), pgx.QueryExecModeCacheStatement)

	before := scans(t)
	want := brandingRow(t, ca, 3)
	for range 100 {
		if got := brandingRow(t, cb, 3); got != want {
			t.Fatalf("instance b: %q, instance a stored %q", got, want)
		}
	}
	if n := scans(t) - before; n != 1 {
		t.Errorf("two instances, 101 queries: %d executions, want 1 (b answers a's entry)", n)
	}
	if _, err := cb.Exec(ctx, "UPDATE cache_branding SET color = '#fff' WHERE tenant_id = 3"); err != nil {
		t.Fatal(err)
	}
	if got := brandingRow(t, ca, 3); !strings.Contains(got, "|#fff|") {
		t.Errorf("instance a after b's UPDATE: %q", got)
	}

	// Redis gone: queries go on (each instance per instance); b's write
	// made meanwhile reaches a once Redis is back.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		brandingRow(t, ca, 3)
		brandingRow(t, cb, 3)
	}
	if _, err := cb.Exec(ctx, "UPDATE cache_branding SET color = '#000' WHERE tenant_id = 3"); err != nil {
		t.Fatal(err)
	}
	if got := brandingRow(t, cb, 3); !strings.Contains(got, "|#000|") {
		t.Errorf("instance b after its own UPDATE, Redis down: %q", got)
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	fleet := func(c *cache.Cache) bool { st, _ := c.Status().(cache.Status); return st.Redis == "fleet" }
	guardtest.WaitFor(t, "both instances fleet-wide again", func() bool {
		brandingRow(t, ca, 3) // an instance learns of Redis's return on use or by its probe
		return fleet(ra) && fleet(rb)
	})
	if got := brandingRow(t, ca, 3); !strings.Contains(got, "|#000|") {
		t.Errorf("instance a after Redis came back: %q (b wrote #000 while Redis was down)", got)
	}
}

// TestCacheRepliesByteIdentical sends raw protocol messages and compares
// what a miss (the server's reply, relayed) and a hit (pgguard's answer)
// put on the wire, byte for byte, in each shape drivers send.
func TestCacheRepliesByteIdentical(t *testing.T) {
	freshBranding(t)
	g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{brandingRule()})
	enc := func(msgs ...pgproto3.FrontendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			var err error
			if b, err = m.Encode(b); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	parse := &pgproto3.Parse{Query: brandingQuery, ParameterOIDs: []uint32{23}}
	// Each case binds its own tenant id, so that no case answers another's.
	var tenant byte = '0'
	bind := func(stmt string, results ...int16) *pgproto3.Bind {
		tenant++
		return &pgproto3.Bind{PreparedStatement: stmt, Parameters: [][]byte{{tenant}}, ResultFormatCodes: results}
	}
	exec := &pgproto3.Execute{}
	describe := &pgproto3.Describe{ObjectType: 'P'}
	sync := &pgproto3.Sync{}
	for _, c := range []struct {
		name    string
		prepare []byte // sent once first, not compared
		msgs    []byte
	}{
		{"simple Query", nil, enc(&pgproto3.Query{String: strings.Replace(brandingQuery, "$1", "1", 1)})},
		{"a reply larger than pgguard copies (50 kB)", nil, enc(&pgproto3.Query{String: strings.Replace(brandingQuery, "$1", "10", 1)})},
		{"... in the extended protocol", nil, enc(parse, &pgproto3.Bind{Parameters: [][]byte{[]byte("10")}}, describe, exec, sync)},
		{"unnamed Parse/Bind/Describe/Execute/Sync (pgx exec, node-postgres)", nil, enc(parse, bind(""), describe, exec, sync)},
		{"binary results", nil, enc(parse, bind("", 1), describe, exec, sync)},
		{"per-column formats", nil, enc(parse, bind("", 0, 1, 0, 1), describe, exec, sync)},
		{"named, Bind/Describe/Execute (pgx cache)", enc(&pgproto3.Parse{Name: "s1", Query: brandingQuery}, sync),
			enc(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{{0, 0, 0, 8}}, ParameterFormatCodes: []int16{1}, ResultFormatCodes: []int16{1}}, describe, exec, sync)},
		{"named, Bind/Execute without Describe (asyncpg)", enc(&pgproto3.Parse{Name: "s2", Query: brandingQuery, ParameterOIDs: []uint32{23}}, sync),
			enc(bind("s2", 1), exec, sync)},
		{"unnamed Bind after a Parse sent before", enc(parse, sync), enc(bind(""), describe, exec, sync)},
		// The client sends its Bind as soon as it has the Parse's reply,
		// while the pump, paused, has not yet settled the server (psycopg 3
		// and asyncpg prepare in a round trip of their own).
		{"named, Bind at once after its Parse's reply", enc(&pgproto3.Parse{Name: "s3", Query: brandingQuery, ParameterOIDs: []uint32{23}}, sync),
			enc(bind("s3", 1), exec, sync)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if strings.Contains(c.name, "at once") {
				proxy.SetPanicHook(func(where string) {
					if where == "replied" {
						time.Sleep(20 * time.Millisecond)
					}
				})
				defer proxy.SetPanicHook(nil)
			}
			session := func() *rawConn {
				conn := newRawConn(t, g.url("app"))
				if c.prepare != nil {
					conn.roundTrip(t, c.prepare)
				}
				return conn
			}
			conn := session()
			before := scans(t)
			miss := conn.roundTrip(t, c.msgs)
			hit := conn.roundTrip(t, c.msgs)
			again := session().roundTrip(t, c.msgs)
			if n := scans(t) - before; n != 1 {
				t.Errorf("%d executions for 3 (want 1: a miss, then hits)", n)
			}
			if !bytes.Equal(miss, hit) || !bytes.Equal(miss, again) {
				t.Errorf("hit differs from miss:\nmiss  %q\nhit   %q\nagain %q", miss, hit, again)
			}
			if !bytes.Contains(miss, []byte("tenant ")) {
				t.Errorf("no row in %q", miss)
			}
		})
	}
}

// rawConn is a session through pgguard past its startup, for raw messages.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func newRawConn(t *testing.T, url string) *rawConn {
	t.Helper()
	c := rawSession(t, url)
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

// roundTrip writes msgs and returns every byte up to and including the
// ReadyForQuery of the last Sync or Query.
func (s *rawConn) roundTrip(t testing.TB, msgs []byte) []byte {
	t.Helper()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(msgs); err != nil {
		t.Fatal(err)
	}
	return s.replies(t, msgs)
}

// replies reads every byte up to and including the ReadyForQuery of the
// last Sync or Query of msgs, which were (or are being) written.
func (s *rawConn) replies(t testing.TB, msgs []byte) []byte {
	syncs := 0
	for b := msgs; len(b) >= 5; b = b[1+int(binary.BigEndian.Uint32(b[1:])):] {
		if b[0] == 'S' || b[0] == 'Q' {
			syncs++
		}
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []byte
	for syncs > 0 {
		hdr := make([]byte, 5)
		if _, err := io.ReadFull(s.r, hdr); err != nil {
			t.Fatalf("after %q: %v", out, err)
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(s.r, body); err != nil {
			t.Fatal(err)
		}
		out = append(append(out, hdr...), body...)
		if hdr[0] == 'Z' {
			syncs--
		}
	}
	return out
}

// TestCacheOversize: a reply over max_entry_bytes is served, uncached.
func TestCacheOversize(t *testing.T) {
	freshBranding(t)
	rule := brandingRule()
	rule.MaxEntryBytes = 300 // tenant 3's logo alone is 300 bytes
	g, rc := cacheGuard(t, "transaction", "", []config.CacheRule{rule})
	before := scans(t)
	conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	direct := connect(t, pg.URL("app"), pgx.QueryExecModeExec)
	for range 5 {
		if got, want := brandingRow(t, conn, 3), brandingRow(t, direct, 3); got != want {
			t.Fatalf("%q, direct %q", got, want)
		}
	}
	if n := scans(t) - before; n != 5+5 {
		t.Errorf("%d executions, want 10: 5 uncached through pgguard, 5 direct", n)
	}
	if st, _ := rc.Status().(cache.Status); len(st.Rules) != 1 || st.Rules[0].Oversize != 5 {
		t.Errorf("rule status %+v: want 5 replies too big", st.Rules)
	}
}

// TestCacheHitsInQueryLog: a hit is logged as one, and costs the server nothing.
func TestCacheHitsInQueryLog(t *testing.T) {
	freshBranding(t)
	path := filepath.Join(t.TempDir(), "queries.log")
	ql, err := querylog.New(config.QueryLog{Path: path, Slow: config.D(time.Hour), MaxShapes: 100}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("transaction")
	cfg.Cache = []config.CacheRule{brandingRule()}
	rc, err := cache.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.QueryLog, p.Cache = ql, rc })
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	for range 3 {
		brandingRow(t, conn, 1)
	}
	// A query's record is logged after its reply is written: let the
	// session end, so every record is in before the log closes.
	conn.Close(context.Background())
	guardtest.WaitFor(t, "the session to end", func() bool { return len(g.Clients()) == 0 })
	ql.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	hits := 0
	for _, l := range lines {
		if strings.Contains(l, "cache_branding") && strings.Contains(l, `"cache":"hit"`) {
			hits++
			if strings.Contains(l, `"upstream"`) || !strings.Contains(l, `"rows":1`) {
				t.Errorf("hit line: %s", l)
			}
		}
	}
	if hits != 2 {
		t.Errorf("%d hits logged, want 2:\n%s", hits, b)
	}
}

// TestCacheBrandingReplay replays the post-mortem's GET /branding: 100
// requests a minute for an hour, on a clock that runs an hour in seconds,
// with branding saved twice; PostgreSQL counts the executions.
func TestCacheBrandingReplay(t *testing.T) {
	freshBranding(t)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	g, _ := cacheGuard(t, "transaction", "", []config.CacheRule{brandingRule()}, cache.WithClock(clock))
	conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	saves := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	before := scans(t)
	const perMinute, minutes = 100, 60
	for i := range perMinute * minutes {
		if i == 22*perMinute || i == 41*perMinute { // saved at minutes 22 and 41
			if _, err := saves.Exec(context.Background(), "UPDATE cache_branding SET name = name || '!' WHERE tenant_id = 1"); err != nil {
				t.Fatal(err)
			}
		}
		brandingRow(t, conn, 1)
		mu.Lock()
		now = now.Add(time.Minute / perMinute)
		mu.Unlock()
	}
	n := scans(t) - before - 2 // each save scanned the table once too
	// One per 5-minute ttl, restarting after each save: minutes 0, 5, 10,
	// 15, 20, 22, 27, 32, 37, 41, 46, 51, 56.
	t.Logf("branding replay: %d requests in an hour, %d reached PostgreSQL (%.0f a day, against 144,000 uncached)",
		perMinute*minutes, n, float64(n)*24)
	if n != 13 {
		t.Errorf("%d executions in the hour, want 13", n)
	}
}

// BenchmarkCacheHit: one client asking one row, through pgguard to the
// primary and from the cache, per protocol.
func BenchmarkCacheHit(b *testing.B) {
	benchOneClient(b, "primary", "hit", func(int) int { return 1 })
}

// BenchmarkCacheMiss: one client asking a different row each time (every
// query a miss, stored), against no cache.
func BenchmarkCacheMiss(b *testing.B) {
	benchOneClient(b, "no-cache", "miss", func(i int) int { return 1000 + i })
}

// benchOneClient runs brandingQuery for tenant(i) on one connection, per
// protocol, through pgguard without a cache (plain) and with the rule (cached).
func benchOneClient(b *testing.B, plain, cached string, tenant func(i int) int) {
	freshBranding(b)
	ctx := context.Background()
	without := startGuard(b, testConfig("transaction"))
	with, _ := cacheGuard(b, "transaction", "", []config.CacheRule{brandingRule()})
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		for _, g := range []struct {
			name string
			g    *guard
		}{{plain, without}, {cached, with}} {
			b.Run(fmt.Sprintf("%v/%s", mode, g.name), func(b *testing.B) {
				conn := connect(b, g.g.url("app"), mode)
				defer conn.Close(ctx)
				rows, _ := conn.Query(ctx, brandingQuery, tenant(-1)) // warm: prepared, and a hit's entry stored
				rows.Close()
				b.ResetTimer()
				for i := range b.N {
					rows, err := conn.Query(ctx, brandingQuery, tenant(i))
					if err != nil {
						b.Fatal(err)
					}
					rows.Close()
				}
			})
		}
	}
}

// TestCacheHitsAndLimits: hits cost the primary nothing, so a rate limit
// that refuses the poller's further trips to the server lets its hits
// through; the worker kill switch refuses them like any query.
func TestCacheHitsAndLimits(t *testing.T) {
	freshBranding(t)
	cfg := testConfig("transaction")
	cfg.Cache = []config.CacheRule{brandingRule()}
	// Four trips: pgx's prepare and the miss; after the refused hit, its
	// DEALLOCATE and prepare again.
	cfg.Limits = []config.Limit{{Name: "poller", ApplicationName: "poller", Worker: true, QueriesPerMinute: 4, Burst: 4, Action: "reject"}}
	lim, err := limiter.New(cfg, guardtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	conn := connect(t, g.url("app")+"&application_name=poller", pgx.QueryExecModeCacheStatement)
	ctx := context.Background()
	query := func() error { return conn.QueryRow(ctx, brandingQuery, 1).Scan(nil, nil, nil, nil) }
	for i := range 100 {
		if err := query(); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	lim.SetWorkersDisabled(true, "test")
	if err := query(); err == nil || !strings.Contains(err.Error(), "DISABLE_WORKERS") {
		t.Errorf("a hit for a worker with the kill switch on: %v, want 53400 naming DISABLE_WORKERS", err)
	}
	lim.SetWorkersDisabled(false, "test")
	for i := range 100 {
		if err := query(); err != nil {
			t.Fatalf("after the kill switch, query %d: %v", i, err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil || !strings.Contains(err.Error(), "53400") {
		t.Errorf("a query for the server past the rate: %v, want 53400", err)
	}
}

// TestCacheReadYourWritesUnderLoad: clients that each update their own
// tenant and read it back through the cache at once always see their
// write, while readers hammer the same entries, over a network that splits
// the server's bytes too; at the end every tenant reads as the table says.
func TestCacheReadYourWritesUnderLoad(t *testing.T) {
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		freshBranding(t)
		cfg := testConfig("transaction")
		cfg.Cache = []config.CacheRule{brandingRule()}
		n.Route(t, cfg)
		g := startGuard(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const writers, rounds, readers = 6, 40, 6
		errs := make(chan error, writers+readers)
		var wwg, rwg sync.WaitGroup
		stop := make(chan struct{})
		for w := range writers {
			wwg.Add(1)
			go func() {
				defer wwg.Done()
				conn := connect(t, g.url("app"), []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol}[w%2])
				tenant := 1 + w
				for i := range rounds {
					want := fmt.Sprintf("w%d-%d", w, i)
					var err error
					if i%3 == 0 { // in a transaction block, committed
						err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
							_, err := tx.Exec(ctx, "UPDATE cache_branding SET name = $1 WHERE tenant_id = $2", want, tenant)
							return err
						})
					} else {
						_, err = conn.Exec(ctx, "UPDATE cache_branding SET name = $1 WHERE tenant_id = $2", want, tenant)
					}
					if err != nil {
						errs <- err
						return
					}
					var got string
					if err := conn.QueryRow(ctx, brandingQuery, tenant).Scan(nil, &got, nil, nil); err != nil {
						errs <- err
						return
					}
					if got != want {
						errs <- fmt.Errorf("writer %d round %d read %q after committing %q", w, i, got, want)
						return
					}
				}
			}()
		}
		for r := range readers {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := conn.QueryRow(ctx, brandingQuery, 1+(r+i)%writers).Scan(nil, nil, nil, nil); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wwg.Wait()
		close(stop)
		rwg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		check := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
		for w := range writers {
			var got string
			if err := check.QueryRow(ctx, brandingQuery, 1+w).Scan(nil, &got, nil, nil); err != nil || got != fmt.Sprintf("w%d-%d", w, rounds-1) {
				t.Errorf("tenant %d reads %q (%v) through the cache, want its last write", 1+w, got, err)
			}
		}
	})
}

// TestCacheKeyFollowsSession: the same text under another search_path (at
// startup, or SET later) reads another table, and gets its own entry.
func TestCacheKeyFollowsSession(t *testing.T) {
	superExec(t, `DROP SCHEMA IF EXISTS cache_a CASCADE; DROP SCHEMA IF EXISTS cache_b CASCADE;
		CREATE SCHEMA cache_a; CREATE SCHEMA cache_b;
		CREATE TABLE cache_a.cache_sp (id int, v text); CREATE TABLE cache_b.cache_sp (id int, v text);
		INSERT INTO cache_a.cache_sp VALUES (1, 'in a'); INSERT INTO cache_b.cache_sp VALUES (1, 'in b');
		GRANT USAGE ON SCHEMA cache_a, cache_b TO tester; GRANT SELECT ON cache_a.cache_sp, cache_b.cache_sp TO tester`)
	cfg := testConfig("transaction")
	cfg.Cache = []config.CacheRule{{Name: "sp", Query: "SELECT v FROM cache_sp WHERE id = $1", TTL: config.D(time.Hour), MaxEntryBytes: 1 << 20}}
	g := startGuard(t, cfg)
	ctx := context.Background()
	read := func(conn *pgx.Conn) string {
		t.Helper()
		var v string
		if err := conn.QueryRow(ctx, "SELECT v FROM cache_sp WHERE id = $1", 1).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	a := connect(t, g.url("app")+"&options=-c%20search_path%3Dcache_a", pgx.QueryExecModeCacheStatement)
	b := connect(t, g.url("app")+"&options=-c%20search_path%3Dcache_b", pgx.QueryExecModeCacheStatement)
	for range 3 {
		if got := read(a); got != "in a" {
			t.Fatalf("search_path cache_a reads %q", got)
		}
		if got := read(b); got != "in b" {
			t.Fatalf("search_path cache_b reads %q", got)
		}
	}
	if _, err := a.Exec(ctx, "SET search_path = cache_b"); err != nil {
		t.Fatal(err)
	}
	if got := read(a); got != "in b" {
		t.Errorf("after SET search_path = cache_b: %q", got)
	}
	if _, err := a.Exec(ctx, "RESET search_path"); err != nil {
		t.Fatal(err)
	}
	if got := read(a); got != "in a" {
		t.Errorf("after RESET search_path (startup cache_a): %q", got)
	}
}

// BenchmarkCacheMissParallel: 50 clients on a pool of 2, each query a
// miss; NOCACHE=1 runs it without the rule, for comparison.
func BenchmarkCacheMissParallel(b *testing.B) {
	freshBranding(b)
	ctx := context.Background()
	cfg := testConfig("transaction")
	cfg.Cache = []config.CacheRule{brandingRule()}
	if os.Getenv("NOCACHE") != "" {
		cfg.Cache = nil
	}
	g := startGuard(b, cfg)
	var next atomic.Int64
	b.SetParallelism(25)
	b.RunParallel(func(pb *testing.PB) {
		conn := connect(b, g.url("app"), pgx.QueryExecModeCacheStatement)
		for pb.Next() {
			rows, err := conn.Query(ctx, brandingQuery, next.Add(1))
			if err != nil {
				b.Error(err)
				return
			}
			rows.Close()
		}
	})
}

// TestCacheHitsWithPrimaryDown: entries answer while the primary is down
// (a suspended or failed compute), on the fallback too, where nothing is
// stored; a miss then goes to the fallback.
func TestCacheHitsWithPrimaryDown(t *testing.T) {
	primary, fallback := startCluster(t, nil), startCluster(t, nil)
	for _, c := range []*localpg.Cluster{primary, fallback} {
		if err := c.Exec(context.Background(), `CREATE TABLE cache_down (id int, v text); INSERT INTO cache_down VALUES (1, 'one'), (2, 'two');
			GRANT SELECT ON cache_down TO tester`); err != nil {
			t.Fatal(err)
		}
	}
	if err := fallback.Exec(context.Background(), "UPDATE cache_down SET v = v || ' (fallback)'"); err != nil {
		t.Fatal(err)
	}
	cfg := failoverConfig("transaction", primary.URL("app"), fallback.URL("app"))
	cfg.Cache = []config.CacheRule{{Name: "down", Query: "SELECT v FROM cache_down WHERE id = $1", TTL: config.D(time.Hour), MaxEntryBytes: 1 << 20}}
	g := startGuard(t, cfg)
	ctx := context.Background()
	conn := connect(t, g.url("app"), pgx.QueryExecModeCacheStatement)
	read := func(id int) (string, error) {
		var v string
		err := conn.QueryRow(ctx, "SELECT v FROM cache_down WHERE id = $1", id).Scan(&v)
		return v, err
	}
	if v, err := read(1); err != nil || v != "one" {
		t.Fatalf("from the primary: %q, %v", v, err)
	}
	if err := primary.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if v, err := read(1); err != nil || v != "one" {
			t.Fatalf("hit %d with the primary down: %q, %v", i, v, err)
		}
	}
	// A miss goes to the fallback once pgguard has switched; its answer is
	// relayed, not stored.
	var v string
	guardtest.WaitFor(t, "a miss answered by the fallback", func() bool {
		var err error
		v, err = read(2)
		return err == nil
	})
	if v != "two (fallback)" {
		t.Errorf("miss with the primary down: %q", v)
	}
	if v, _ := read(2); v != "two (fallback)" {
		t.Errorf("second read on the fallback: %q", v)
	}
	if st, _ := g.Cache.Status().(cache.Status); st.Rules[0].Stored != 1 {
		t.Errorf("%d replies stored, want 1 (the primary's; none from the fallback)", st.Rules[0].Stored)
	}
}
