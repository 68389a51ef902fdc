package limiter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pgguard/pgguard/config"
)

func TestMatch(t *testing.T) {
	cfg := testConfig(
		config.Limit{Name: "workers", ApplicationName: "availability-worker", QueriesPerMinute: 10, Burst: 5},
		config.Limit{Name: "batch-net", ClientAddr: "10.1.0.0/16", MaxConnections: 2, Priority: -1},
		config.Limit{Name: "one-host", ClientAddr: "192.0.2.7", User: "etl", QueriesPerSecond: 1},
		config.Limit{Name: "vip", Database: "app", User: "admin", MaxConnections: 50, Priority: 10},
	)
	l, _, _ := testLimiter(t, cfg, newFakeClock(day0))
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		c        Client
		rules    string
		priority int
	}{
		{Client{Database: "app", User: "web", Application: "branding"}, "", 0},
		{Client{Database: "app", User: "web", Application: "availability-worker"}, "workers", 0},
		{Client{Database: "app", Application: "availability-worker", Addr: ip("10.1.2.3")}, "workers,batch-net", 0},
		{Client{Database: "app", Addr: ip("::ffff:10.1.2.3")}, "batch-net", -1},
		{Client{User: "etl", Addr: ip("192.0.2.7")}, "one-host", 0},
		{Client{User: "etl", Addr: ip("192.0.2.8")}, "", 0},
		{Client{User: "etl"}, "", 0}, // Unix socket: no address
		{Client{Database: "app", User: "admin", Addr: ip("10.1.0.1")}, "batch-net,vip", 10},
	} {
		s := l.Match(tc.c)
		if s == nil {
			t.Fatalf("%+v: nil session", tc.c)
		}
		if got := strings.Join(s.Rules(), ","); got != tc.rules || s.Priority() != tc.priority {
			t.Errorf("%+v: rules %q priority %d, want %q %d", tc.c, got, s.Priority(), tc.rules, tc.priority)
		}
	}
}

func TestRuleMessages(t *testing.T) {
	r := compileRule(config.Limit{Name: "etl", QueriesPerHour: 100, Burst: 1, Action: "delay", MaxDelay: config.D(config.DefaultMaxDelay)}, nil)
	if got := r.rateError(-1, 0).Message; !strings.Contains(got, `rate limit "etl" exceeded: queries_per_hour = 100 (burst 1)`) ||
		!strings.Contains(got, "raise limits.queries_per_hour") {
		t.Errorf("rate message: %s", got)
	}
	r = compileRule(config.Limit{Name: "w", MaxConnections: 3}, nil)
	if e := r.connError(0, nil); e.Setting != "limits.max_connections" || !strings.Contains(e.Message, "max_connections = 3") {
		t.Errorf("conn message: %+v", e)
	}
	if r := compileRule(config.Limit{Name: "bad", ClientAddr: "not-an-ip"}, nil); r.matches(Client{Addr: netip.MustParseAddr("10.0.0.1")}) {
		t.Error("an invalid client_addr matched")
	}
}
