// Package guardtest runs pgguard in-process for integration tests: a proxy
// served on a free loopback port until the test ends, plus the polling and
// goroutine-leak checks every such test wants. Only tests import it.
package guardtest

import (
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
)

// Logger discards, unless the test runs with -v or PGGUARD_TEST_LOG is set:
// then it logs at debug level to stderr.
func Logger() *slog.Logger {
	if testing.Verbose() || os.Getenv("PGGUARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Start builds a proxy for cfg, with a result cache when cfg has [[cache]]
// rules, runs setup on it (to set hooks such as QueryLog before Serve) and
// serves it until the test ends.
func Start(t testing.TB, cfg *config.Config, setup ...func(*proxy.Proxy)) (p *proxy.Proxy, m *metrics.Metrics, addr string) {
	t.Helper()
	m = metrics.New()
	p, err := proxy.New(cfg, Logger(), m)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Cache) > 0 {
		rc, err := cache.New(cfg, Logger(), cache.WithRegisterer(m.Registry))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rc.Close() })
		p.Cache = rc
	}
	for _, f := range setup {
		f(p)
	}
	return p, m, Serve(t, p)
}

// Serve serves p on a free 127.0.0.1 port until the test ends, then closes
// it and waits for Serve to return. It returns the address.
func Serve(t testing.TB, p *proxy.Proxy) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Serve(ln); close(done) }()
	t.Cleanup(func() {
		p.Close()
		<-done
	})
	return ln.Addr().String()
}

// WaitFor polls cond until it holds, or fails the test after 10 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CheckGoroutines fails the test when goroutines started during it outlive
// it (after 5 s of grace), printing the pgguard ones.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var keep []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "pgguard") {
					keep = append(keep, g)
				}
			}
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, strings.Join(keep, "\n\n"))
		}
	})
}
