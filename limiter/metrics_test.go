package limiter

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/config"
)

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "w", QueriesPerSecond: 1, Action: "reject"})
	cfg.Limiter.RedisURL = "redis://127.0.0.1:1/0"
	l, err := New(cfg, nil, WithRegisterer(reg), withTick(-1), withRedisBackoff(3600e9, 3600e9))
	if err != nil {
		t.Fatal(err)
	}
	s := l.Match(Client{Application: "w"})
	s.Observe()
	_ = s.Admit(t.Context())
	_ = s.Admit(t.Context())
	l.tick()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	got := strings.Join(names, " ")
	for _, want := range []string{"pgguard_limiter_rejected_total", "pgguard_limiter_redis_up", "pgguard_application_queries_per_hour",
		"pgguard_budget_awake_seconds_total", "pgguard_budget_cu_hours", "pgguard_budget_used_ratio", "pgguard_budget_exhausted"} {
		if !strings.Contains(got, want) {
			t.Errorf("metric %s missing from %s", want, got)
		}
	}
	if _, err := New(cfg, nil, WithRegisterer(reg), withTick(-1)); err == nil {
		t.Fatal("a second Limiter on the same registerer: no error")
	}
	l.Close()
	l2, err := New(cfg, nil, WithRegisterer(reg), withTick(-1))
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	l2.Close()
}
