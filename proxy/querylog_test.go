package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// TestQueryLog runs a known mix of queries (simple and extended, fast, slow
// and failing) and checks the log lines, the per-shape counts and that the
// per-shape p95 matches the known sleeps within the sketch's accuracy.
func TestQueryLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queries.log")
	qcfg := config.QueryLog{Path: path, Slow: config.D(time.Hour), MaxShapes: 100}
	ql, err := querylog.New(qcfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	cfg := testConfig("transaction")
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.QueryLog = ql })
	ctx := context.Background()
	simple := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	extended := connect(t, g.url("app"), pgx.QueryExecModeExec)

	for i := 0; i < 20; i++ {
		if _, err := simple.Exec(ctx, "SELECT pg_sleep(0.05), 'secret-literal'"); err != nil {
			t.Fatal(err)
		}
		if _, err := extended.Exec(ctx, "SELECT $1::int + 1", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		simple.Exec(ctx, "SELECT 1/0")
	}
	ql.Close() // flush
	stats := ql.Stats().Snapshot("total", 0)
	byQuery := map[string]querylog.ShapeStats{}
	for _, s := range stats {
		byQuery[s.Query] = s
	}
	sleep, ok := byQuery["SELECT pg_sleep($1), $2"]
	if !ok || sleep.Calls != 20 {
		t.Fatalf("pg_sleep shape: %+v (all: %+v)", sleep, stats)
	}
	if sleep.P95MS < 50 || sleep.P95MS > 1000 { // the upper bound only catches nonsense: the machine is shared
		t.Errorf("pg_sleep(0.05) p95 = %.1f ms, want about 50", sleep.P95MS)
	}
	if sleep.Rows != 20 {
		t.Errorf("pg_sleep shape rows = %d, want 20 (one per call)", sleep.Rows)
	}
	if ext := byQuery["SELECT $1::int + $2"]; ext.Calls != 20 {
		t.Errorf("extended shape: %+v", ext)
	}
	if div := byQuery["SELECT $1/$2"]; div.Calls != 5 || div.Errors != 5 {
		t.Errorf("failing shape: %+v", div)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, errorsSeen := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("bad log line %q: %v", sc.Text(), err)
		}
		lines++
		if rec["database"] != "app" || rec["user"] != testUser || rec["upstream"] != "primary" {
			t.Errorf("record fields: %v", rec)
		}
		if q, _ := rec["query"].(string); q == "" || strings.Contains(q, "secret-literal") {
			t.Errorf("query text %q: want normalized, no literals", q)
		}
		if rec["sqlstate"] == "22012" {
			errorsSeen++
		}
	}
	if lines != 45 || errorsSeen != 5 {
		t.Errorf("%d log lines (%d with 22012), want 45 (5)", lines, errorsSeen)
	}
}

// TestPollingWorkerLimited: a worker polling every 50 ms under a 10/minute
// rule (burst 5, reject) gets exactly its share and 53400 naming the rule,
// while a web client on the same database is never refused.
func TestPollingWorkerLimited(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Limits = []config.Limit{{Name: "workers", ApplicationName: "availability-worker",
		QueriesPerMinute: 10, Burst: 5, Action: "reject"}}
	lim, err := limiter.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	g := startGuard(t, cfg, func(p *proxy.Proxy) { p.Limiter = lim })
	ctx := context.Background()
	worker := connect(t, g.url("app")+"&application_name=availability-worker", pgx.QueryExecModeExec)
	web := connect(t, g.url("app")+"&application_name=web", pgx.QueryExecModeExec)

	var wg sync.WaitGroup
	webErrs := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 60; i++ {
			if _, err := web.Exec(ctx, "SELECT 1"); err != nil {
				webErrs++
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	admitted, refused := 0, 0
	for i := 0; i < 30; i++ { // 1.5 s of polling every 50 ms
		_, err := worker.Exec(ctx, "SELECT 1")
		switch {
		case err == nil:
			admitted++
		case pgCode(err) == "53400" && strings.Contains(pgMessage(err), `"workers"`):
			refused++
		default:
			t.Fatalf("worker: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	if admitted != 5 || refused != 25 || webErrs != 0 {
		t.Fatalf("worker admitted %d refused %d (want 5 and 25: burst 5, 10/min); web errors %d", admitted, refused, webErrs)
	}
}

// TestQueryLogClientFields: each record carries its client's id, the
// transaction status that ended it, and an argument hash that is equal for
// equal literals or Bind parameters and differs otherwise (the advisor's
// signals for N+1 loops and cache keys).
func TestQueryLogClientFields(t *testing.T) {
	ql, err := querylog.New(config.QueryLog{MaxShapes: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	var mu sync.Mutex
	var recs []querylog.Record
	ql.SetObserver(func(r *querylog.Record, _ uint64, _ string) {
		mu.Lock()
		recs = append(recs, *r)
		mu.Unlock()
	})
	g := startGuard(t, testConfig("transaction"), func(p *proxy.Proxy) { p.QueryLog = ql })
	ctx := context.Background()
	simple := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	extended := connect(t, g.url("app"), pgx.QueryExecModeExec)
	for _, q := range []string{"BEGIN", "SELECT 1", "SELECT 1", "SELECT 2", "COMMIT"} {
		if _, err := simple.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []int{7, 7, 8} {
		if _, err := extended.Exec(ctx, "SELECT $1::int", v); err != nil {
			t.Fatal(err)
		}
	}
	ql.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(recs) != 8 {
		t.Fatalf("%d records, want 8: %+v", len(recs), recs)
	}
	s, x := recs[:5], recs[5:]
	for i, want := range "TTTTI" {
		if s[i].TxStatus != byte(want) || s[i].Client == 0 || s[i].Client != s[0].Client {
			t.Errorf("simple record %d (%s): client %d, tx %q, want client %d, tx %q", i, s[i].Query, s[i].Client, s[i].TxStatus, s[0].Client, want)
		}
	}
	if s[1].Args == 0 || s[1].Args != s[2].Args || s[2].Args == s[3].Args {
		t.Errorf("simple args: SELECT 1 %x, SELECT 1 %x, SELECT 2 %x: want equal, then different", s[1].Args, s[2].Args, s[3].Args)
	}
	if x[0].Client == s[0].Client || x[0].Client != x[2].Client || x[0].TxStatus != 'I' {
		t.Errorf("extended records: client %d (simple %d), tx %q", x[0].Client, s[0].Client, x[0].TxStatus)
	}
	if x[0].Args == 0 || x[0].Args != x[1].Args || x[1].Args == x[2].Args {
		t.Errorf("extended args: 7 %x, 7 %x, 8 %x: want equal, then different", x[0].Args, x[1].Args, x[2].Args)
	}
}
