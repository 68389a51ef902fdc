package neon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// neonFailure is one of the simulator's failure switches and what pgguard
// must name when it trips.
type neonFailure struct {
	name    string
	set     func(sim *neonsim.Sim, on bool)
	reasons []string // one is in pgguard's failover state or the client's error
}

func (f neonFailure) named(s string) bool {
	s = strings.ToLower(s)
	for _, r := range f.reasons {
		if strings.Contains(s, r) {
			return true
		}
	}
	return false
}

var neonFailures = []neonFailure{
	{"quota", func(s *neonsim.Sim, on bool) { s.Endpoint(ep).SetQuotaExceeded(on) }, []string{"compute time quota"}},
	{"endpoint disabled", func(s *neonsim.Sim, on bool) { s.Endpoint(ep).SetDisabled(on) }, []string{"endpoint has been disabled"}},
	{"project suspended", func(s *neonsim.Sim, on bool) { s.Endpoint(ep).SetProjectSuspended(on) }, []string{"project has been suspended"}},
	{"refused", func(s *neonsim.Sim, on bool) {
		if on {
			s.Endpoint(ep).Suspend() // the compute goes away with the proxy
		}
		s.Refuse(on)
	}, []string{"refused", "reset by peer"}}, // a splitting relay in front resets what the target refused
}

// TestNeonFailuresFailover: with a fallback, each Neon refusal moves new
// transactions to the fallback (read-only, as fallback_read_only says),
// the cause is named in the failover state, and traffic returns to the
// primary when the switch clears.
func TestNeonFailuresFailover(t *testing.T) {
	t.Parallel()
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		sim := startSim(t, neonsim.Options{SuspendAfter: time.Minute})
		cfg := baseConfig(primaryURL(t, sim, n), time.Minute)
		cfg.Databases["app"].Fallback = pg.URL("app")
		cfg.Failover.FailureThreshold = 1
		cfg.Failover.ProbeInterval = config.D(50 * time.Millisecond)
		cfg.Failover.ProbeMaxInterval = config.D(100 * time.Millisecond)
		cfg.Failover.FailbackAfter = config.D(200 * time.Millisecond)
		cfg.Failover.FallbackReadOnly = true
		g := startGuard(t, cfg, sim)
		ctx := context.Background()
		c := g.connect(t, "web")
		onPrimary := func(what string) {
			t.Helper()
			q := sim.Endpoint(ep).Ledger().Queries
			if v, err := scalar(ctx, c, "SELECT current_setting('default_transaction_read_only')"); err != nil || v != "off" {
				t.Fatalf("%s: %q, %v; want an answer from the primary", what, v, err)
			}
			if sim.Endpoint(ep).Ledger().Queries == q {
				t.Fatalf("%s: the query did not reach the compute", what)
			}
		}
		onPrimary("before")
		for _, f := range neonFailures {
			f.set(sim, true)
			// The switch suspends the compute: pgguard notices its pooled
			// connections' 57P01 before any client asks.
			guardtest.WaitFor(t, "pgguard to drop its dead connections", func() bool { return g.servers(t) == 0 })
			v, err := scalar(ctx, c, "SELECT current_setting('default_transaction_read_only')")
			if err != nil || v != "on" {
				t.Fatalf("%s: %q, %v; want an answer from the read-only fallback", f.name, v, err)
			}
			if _, err := c.Exec(ctx, "CREATE TEMP TABLE t_write (x int)"); pgCode(err) != "25006" {
				t.Errorf("%s: a write on the fallback: %v, want 25006", f.name, err)
			}
			ps := g.pool(t)
			if ps.Upstream != "fallback" || !f.named(ps.Failover.Primary.LastError) {
				t.Errorf("%s: upstream %q, primary's last error %q; want fallback and one of %q", f.name, ps.Upstream, ps.Failover.Primary.LastError, f.reasons)
			}
			t.Logf("%s: on the fallback; primary's last error: %s", f.name, ps.Failover.Primary.LastError)
			// Failback probes of the refusing primary wake nothing.
			l0 := sim.Endpoint(ep).Ledger()
			wakes := len(l0.Wakes)
			if f.name == "refused" {
				time.Sleep(4 * cfg.Failover.ProbeMaxInterval.Duration) // refused at TCP: the ledger sees nothing
			} else {
				guardtest.WaitFor(t, "two failback probes refused", func() bool { return sim.Endpoint(ep).Ledger().Refused >= l0.Refused+2 })
			}
			if w := len(sim.Endpoint(ep).Ledger().Wakes); w != wakes {
				t.Errorf("%s: failback probes woke the compute: %d -> %d wake-ups", f.name, wakes, w)
			}
			f.set(sim, false)
			guardtest.WaitFor(t, f.name+" cleared: traffic back on the primary", func() bool { return g.pool(t).Upstream == "primary" })
			onPrimary(f.name + " cleared")
		}
	})
}

// TestNeonFailuresNoFallback: without a fallback the client gets 08006
// with Neon's reason in the message, and the next query after the switch
// clears succeeds.
func TestNeonFailuresNoFallback(t *testing.T) {
	t.Parallel()
	sim := startSim(t, neonsim.Options{SuspendAfter: time.Minute})
	g := startGuard(t, baseConfig(primaryURL(t, sim, guardtest.Direct), time.Minute), sim)
	ctx := context.Background()
	c := g.connect(t, "web")
	for _, f := range neonFailures {
		f.set(sim, true)
		guardtest.WaitFor(t, "pgguard to drop its dead connections", func() bool { return g.servers(t) == 0 })
		_, err := scalar(ctx, c, "SELECT 1")
		if pgCode(err) != "08006" || !f.named(err.Error()) {
			t.Errorf("%s: %v; want 08006 naming one of %q", f.name, err, f.reasons)
		} else {
			t.Logf("%s: the client is told: %v", f.name, err)
		}
		f.set(sim, false)
		if _, err := scalar(ctx, c, "SELECT 1"); err != nil {
			t.Fatalf("%s cleared: %v", f.name, err)
		}
	}
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
