package limiter

import (
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
)

// The post-mortem's alert: "worker queries > 1,000/hour". The uncached
// branding endpoint (100 requests a minute) crosses it; the 60 s worker
// (60 an hour) does not.
func TestQueriesPerHourWarnsOncePerHour(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, logs := testLimiter(t, config.Default(), clk)
	web := l.Match(Client{Database: "app", Application: "branding-web"})
	worker := l.Match(Client{Database: "app", Application: "availability-worker"})
	warned := func() int { return logs.Count("above limiter.queries_per_hour_warn") }
	for m := range 150 { // two and a half hours, a tick every 10 s
		for s := 0; s < 60; s += 10 {
			for range 100 / 6 { // ~100 a minute
				web.Observe()
			}
			if s == 0 {
				worker.Observe()
			}
			clk.Advance(10 * time.Second)
			l.tick()
		}
		if m == 9 && warned() != 0 { // 10 minutes: about 1000
			t.Fatalf("warned after %d minutes", m+1)
		}
	}
	if n := warned(); n != 3 { // at 10, 70 and 130 minutes
		t.Fatalf("%d WARNs over 2.5 hours at ~6000 queries/hour, want 3 (once per hour)\n%s", n, logs)
	}
	apps := l.apps.snapshot()
	if apps[0].Application != "branding-web" || apps[0].QueriesLastHour < 5600 || !apps[0].AboveWarn {
		t.Fatalf("branding: %+v", apps[0])
	}
	if apps[1].Application != "availability-worker" || apps[1].QueriesLastHour < 59 || apps[1].QueriesLastHour > 61 || apps[1].AboveWarn {
		t.Fatalf("worker: %+v", apps[1])
	}
	if got := testutil.ToFloat64(l.m.appQPH.WithLabelValues("availability-worker")); got < 59 || got > 61 {
		t.Fatalf("pgguard_application_queries_per_hour{availability-worker} = %v", got)
	}
	t.Logf("queries in the last hour: branding-web %d (WARN, %d times in 2.5 h), availability-worker %d",
		apps[0].QueriesLastHour, warned(), apps[1].QueriesLastHour)
}

func TestApplicationsCapAndEviction(t *testing.T) {
	clk := newFakeClock(day0)
	l, _, _ := testLimiter(t, config.Default(), clk)
	var last *Session
	for i := range maxApps + 5 {
		last = l.Match(Client{Application: "job-" + strconv.Itoa(i)})
		last.Observe()
	}
	l.tick()
	if n := len(l.apps.snapshot()); n != maxApps {
		t.Fatalf("%d applications tracked, cap %d", n, maxApps)
	}
	if last.app.name != otherApp {
		t.Fatalf("application past the cap counted as %q", last.app.name)
	}
	// An hour idle: forgotten; a session that comes back is counted again.
	keep := l.Match(Client{Application: "job-1"})
	for range 62 {
		clk.Advance(time.Minute)
		l.tick()
	}
	if n := len(l.apps.snapshot()); n != 1 { // only "other" stays
		t.Fatalf("%d applications after an idle hour", n)
	}
	keep.Observe()
	l.tick()
	if apps := l.apps.snapshot(); apps[0].Application != "job-1" || apps[0].QueriesLastHour != 1 {
		t.Fatalf("after coming back: %+v", apps)
	}
}
