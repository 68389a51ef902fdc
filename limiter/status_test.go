package limiter

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

func TestStatusAndStatsRows(t *testing.T) {
	clk := newFakeClock(day0)
	cfg := testConfig(config.Limit{Name: "workers", ApplicationName: "availability-worker", QueriesPerMinute: 10, Burst: 5, MaxConnections: 2})
	l, _, _ := testLimiter(t, cfg, clk)
	s := l.Match(Client{Database: "app", Application: "availability-worker"})
	for i := range 30 {
		_ = s.Admit(context.Background())
		s.Observe()
		l.ObserveUpstreamQuery("app", "availability-worker", clk.Now())
		clk.Advance(time.Minute)
		if i%5 == 0 {
			l.tick()
		}
	}
	b, err := json.Marshal(l.Status())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"redis":"off"`, `"name":"workers"`, `"match":"application_name=availability-worker"`,
		`"application":"availability-worker"`, `"keeps_compute_awake":true`, `"month":"2026-04"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("status lacks %s:\n%s", want, b)
		}
	}
	if m := l.RedisMode(); m != "off" {
		t.Errorf("RedisMode() = %q without redis_url, want off", m)
	}
	if m := (*Limiter)(nil).RedisMode(); m != "off" {
		t.Errorf("nil RedisMode() = %q, want off", m)
	}
	cols, rows := l.StatsRows()
	if len(cols) != 3 || len(rows) < 5 {
		t.Fatalf("stats rows: %v %v", cols, rows)
	}
	for _, r := range rows {
		t.Logf("%-11s | %-19s | %s", r[0], r[1], r[2])
	}
}
