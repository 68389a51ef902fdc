package limiter

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
)

// workersConfig marks application "worker" as a worker (a rule with only
// worker = true) and gives "web" a priority rule.
func workersConfig(on bool) *config.Config {
	cfg := testConfig(
		config.Limit{Name: "workers", ApplicationName: "worker", Worker: true},
		config.Limit{Name: "web", ApplicationName: "web", Priority: 10, QueriesPerSecond: 1000, Burst: 1000},
	)
	cfg.DisableWorkers = on
	return cfg
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestDisableWorkers(t *testing.T) {
	clk := newFakeClock(day0)
	l, reg, logs := testLimiter(t, workersConfig(false), clk)
	ctx := context.Background()
	worker := l.Match(Client{Database: "app", Application: "worker"})
	web := l.Match(Client{Database: "app", Application: "web"})
	other := l.Match(Client{Database: "app", Application: "cron"})

	for _, s := range []*Session{worker, web, other} {
		if err := s.Admit(ctx); err != nil {
			t.Fatalf("switch off: %v", err)
		}
	}
	if l.WorkersDisabled() || gauge(t, reg, "pgguard_workers_disabled") != 0 {
		t.Fatal("switch on at start with disable_workers = false")
	}

	l.SetWorkersDisabled(true, "console:admin")
	if !l.WorkersDisabled() || gauge(t, reg, "pgguard_workers_disabled") != 1 {
		t.Fatal("SetWorkersDisabled(true): switch or gauge not on")
	}
	if !strings.Contains(logs.String(), `msg="worker switch flipped" component=limiter disable_workers=true by=console:admin worker_rules=workers`) {
		t.Errorf("flip not logged with who:\n%s", logs)
	}
	err := worker.Admit(ctx)
	var le *LimitError
	if !errors.As(err, &le) || le.SQLState() != "53400" || le.Rule != "workers" || le.Setting != "disable_workers" ||
		!strings.Contains(le.Message, "DISABLE_WORKERS") || !strings.Contains(le.Message, `rule "workers"`) {
		t.Fatalf("worker's new transaction: %v, want 53400 naming DISABLE_WORKERS and the rule", err)
	}
	// A worker inside a transaction block finishes it.
	if err := worker.AdmitQuery(ctx, true); err != nil {
		t.Errorf("worker inside a transaction: %v", err)
	}
	for _, s := range []*Session{web, other} {
		if err := s.Admit(ctx); err != nil {
			t.Errorf("non-worker refused while workers are disabled: %v", err)
		}
	}
	if got := testutil.ToFloat64(l.m.rejected.WithLabelValues("workers")); got != 1 {
		t.Errorf("pgguard_limiter_rejected_total{rule=workers} = %v, want 1", got)
	}

	b, _ := json.Marshal(l.Status())
	for _, want := range []string{`"disable_workers":{"on":true,"by":"console:admin"`, `"rules":["workers"]`, `"worker":true`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/status lacks %s:\n%s", want, b)
		}
	}
	_, rows := l.StatsRows()
	found := false
	for _, r := range rows {
		if r[0] == "limiter" && r[1] == "disable_workers" {
			found = strings.HasPrefix(r[2], "ON") && strings.Contains(r[2], "console:admin") && strings.Contains(r[2], "worker rules: workers")
		}
		if r[0] == "rule" && r[1] == "workers" && !strings.HasPrefix(r[2], "worker ") {
			t.Errorf("SHOW LIMITS rule row does not say worker: %q", r[2])
		}
	}
	if !found {
		t.Errorf("SHOW LIMITS lacks the disable_workers row: %v", rows)
	}

	l.SetWorkersDisabled(false, "http:admin")
	if err := worker.Admit(ctx); err != nil {
		t.Errorf("switch off again: %v", err)
	}
}

// TestDisableWorkersReload: the configured value applies at start and when
// it changes; a reload that leaves it alone keeps a run-time flip.
func TestDisableWorkersReload(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, logs := testLimiter(t, workersConfig(true), clk)
	worker := l.Match(Client{Application: "worker"})
	ctx := context.Background()
	if !l.WorkersDisabled() || worker.Admit(ctx) == nil {
		t.Fatal("disable_workers = true at start: worker admitted")
	}
	if !strings.Contains(logs.String(), `by="startup (defaults)"`) {
		t.Errorf("start not logged with its origin:\n%s", logs)
	}

	l.SetWorkersDisabled(false, "console:admin")
	l.Reconfigure(workersConfig(true)) // unchanged in the config: the flip stays
	if l.WorkersDisabled() {
		t.Fatal("a reload with disable_workers unchanged undid the console's flip")
	}
	l.Reconfigure(workersConfig(false)) // changed to false: off (it already is)
	l.Reconfigure(workersConfig(true))  // changed to true: on
	if !l.WorkersDisabled() || worker.Admit(ctx) == nil {
		t.Fatal("reload changing disable_workers to true: worker admitted")
	}
	if !strings.Contains(logs.String(), `by="reload (defaults)"`) {
		t.Errorf("reload flip not logged:\n%s", logs)
	}

	// A rule that stops being a worker rule frees its clients at once.
	cfg := workersConfig(true)
	cfg.Limits[0].Worker, cfg.Limits[0].QueriesPerSecond, cfg.Limits[0].Burst = false, 1000, 1000
	l.Reconfigure(cfg)
	if err := worker.Admit(ctx); err != nil {
		t.Errorf("rule no longer worker = true: %v", err)
	}
}

func TestDisableWorkersWithoutWorkerRules(t *testing.T) {
	cfg := testConfig(config.Limit{Name: "web", ApplicationName: "web", QueriesPerSecond: 1})
	cfg.DisableWorkers = true
	l, _, logs := testLimiter(t, cfg, newFakeClock(day0))
	if !strings.Contains(logs.String(), "no [[limits]] rule has worker = true: nothing is refused") {
		t.Errorf("no warning for a switch that refuses nothing:\n%s", logs)
	}
	if err := l.Match(Client{Application: "web"}).Admit(context.Background()); err != nil {
		t.Errorf("web refused: %v", err)
	}
}
