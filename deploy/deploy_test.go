// Package deploy holds pgguard's deployment artifacts: Prometheus alerting
// rules (prometheus/alerts.yml, unit-tested by prometheus/alerts_test.yml),
// a Grafana dashboard (grafana/pgguard.json) and Fly.io configs (fly/). Its
// tests check that the first two use only metrics pgguard exports and, when
// promtool is on PATH, that the rules and every dashboard query are valid
// and the alerts fire as intended; and that the Fly configs parse as flyctl
// reads them and agree with pgguard's ports, drain and image (fly_test.go).
package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// metrics is every metric pgguard exports, with its type.
var metrics = map[string]string{
	"pgguard_query_duration_seconds":        "histogram",
	"pgguard_queries_total":                 "counter",
	"pgguard_query_errors_total":            "counter",
	"pgguard_client_connections":            "gauge",
	"pgguard_server_connections":            "gauge",
	"pgguard_pool_max_connections":          "gauge",
	"pgguard_pool_wait_seconds":             "histogram",
	"pgguard_upstream_active":               "gauge",
	"pgguard_upstream_switches_total":       "counter",
	"pgguard_read_only":                     "gauge",
	"pgguard_bytes_total":                   "counter",
	"pgguard_querylog_dropped_total":        "counter",
	"pgguard_querylog_shapes_evicted_total": "counter",
	"pgguard_budget_used_ratio":             "gauge",
	"pgguard_budget_awake_seconds_total":    "counter",
	"pgguard_limiter_rejected_total":        "counter",
	"pgguard_limiter_delayed_total":         "counter",
	"pgguard_application_queries_per_hour":  "gauge",
	"pgguard_workers_disabled":              "gauge",
	"pgguard_upstream_refusals_total":       "counter",
	"pgguard_fleet_server_connections":      "gauge",
	"pgguard_fleet_max_connections":         "gauge",
	"pgguard_fleet_leases":                  "gauge",
	"pgguard_fleet_lease_limit":             "gauge",
	"pgguard_fleet_static":                  "gauge",
	"pgguard_fleet_instances":               "gauge",
	"pgguard_fleet_redis_up":                "gauge",
	"pgguard_fleet_lease_refusals_total":    "counter",
	"pgguard_panics_total":                  "counter",
}

const (
	alertsFile     = "prometheus/alerts.yml"
	alertTestsFile = "prometheus/alerts_test.yml"
	dashboardFile  = "grafana/pgguard.json"
)

var metricRE = regexp.MustCompile(`\bpgguard_[a-z0-9_]+`)

// known reports whether name is an exported metric or a histogram's series.
func known(name string) bool {
	if _, ok := metrics[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && metrics[base] == "histogram" {
			return true
		}
	}
	return false
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMetricNames(t *testing.T) {
	for _, f := range []string{alertsFile, alertTestsFile, dashboardFile} {
		used := metricRE.FindAllString(read(t, f), -1)
		if len(used) == 0 {
			t.Errorf("%s uses no pgguard metric", f)
		}
		for _, name := range used {
			if !known(name) {
				t.Errorf("%s: unknown metric %s", f, name)
			}
		}
	}
}

// dashboard is the part of the Grafana JSON model the tests look at.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(read(t, dashboardFile)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q title %q schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	hasDS := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			hasDS = true
		}
	}
	if !hasDS {
		t.Error("no datasource variable of type prometheus")
	}
	ids := map[int]bool{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("duplicate panel id %d", p.ID)
		}
		ids[p.ID] = true
		titles[p.Title] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.RefID == "" || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: empty target %+v", p.Title, tg)
			}
		}
	}
	for _, want := range []string{
		"Client connections by state", "Server connections vs pool limit", "Pool wait p95",
		"QPS by database", "QPS by application", "Query duration p95 / p99 by database",
		"Errors by SQLSTATE", "Upstream in use", "Read-only", "Neon budget used",
		"Query log drops and shape evictions",
	} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
}

// TestAlertRules checks the rules file's shape without a YAML parser: every
// alert has an expression, a severity and both annotations.
func TestAlertRules(t *testing.T) {
	src := read(t, alertsFile)
	blocks := strings.Split(src, "- alert: ")[1:]
	names := map[string]bool{}
	for _, b := range blocks {
		name, _, _ := strings.Cut(b, "\n")
		names[name] = true
		for _, want := range []string{"expr:", "summary:", "description:"} {
			if !strings.Contains(b, want) {
				t.Errorf("alert %s: no %s", name, want)
			}
		}
		if !regexp.MustCompile(`severity: (critical|warning|info)\n`).MatchString(b) {
			t.Errorf("alert %s: no severity label", name)
		}
	}
	for _, want := range []string{
		"PgguardQueryP95High", "PgguardServerConnectionsHigh", "PgguardApplicationQueryRateHigh",
		"PgguardNeonBudgetHigh", "PgguardOnFallback", "PgguardReadOnly", "PgguardQueryLogDropping", "PgguardNoUpstream", "PgguardPanics",
		"PgguardFleetConnectionsHigh", "PgguardFleetStaticShare", "PgguardUpstreamFull",
	} {
		if !names[want] {
			t.Errorf("no alert %s", want)
		}
	}
	// The post-mortem's thresholds.
	for _, want := range []string{"> 0.5\n", ">= 0.7\n", "[1h])) > 1000\n", ">= 0.8\n"} {
		if !strings.Contains(src, want) {
			t.Errorf("threshold %q missing", want)
		}
	}
}

// TestPromtool runs promtool when it is installed (CI): the rules check, the
// alert unit tests, and a syntax check of every dashboard query wrapped as
// a recording rule.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH")
	}
	run := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run(".", "check", "rules", alertsFile)
	run("prometheus", "test", "rules", filepath.Base(alertTestsFile))

	// Grafana variables become plain values so promtool can parse the queries.
	expand := strings.NewReplacer("$__rate_interval", "5m", "$database", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, p := range loadDashboard(t).Panels {
		for _, tg := range p.Targets {
			expr, _ := json.Marshal(expand.Replace(tg.Expr)) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d_%s\n        expr: %s\n", p.ID, tg.RefID, expr)
		}
	}
	f := filepath.Join(t.TempDir(), "dashboard_rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(".", "check", "rules", f)
}
