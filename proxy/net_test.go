package proxy_test

import (
	"net/url"
	"testing"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/proxy"
)

// startGuardOver runs pgguard with every upstream of cfg reached over
// network n: directly, or through a faultnet relay that splits server bytes
// (guardtest.EachNet runs a test once per network).
func startGuardOver(t testing.TB, n guardtest.Net, cfg *config.Config, setup ...func(*proxy.Proxy)) *guard {
	t.Helper()
	n.Route(t, cfg)
	return startGuard(t, cfg, setup...)
}

// hostOf returns the host:port of an upstream URL: the address pgguard
// dials, a relay's on a split network.
func hostOf(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
