package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/internal/neonsim"
)

// demoEndpoint is the simulated Neon endpoint of `pgguard demo -neon`.
const demoEndpoint = "ep-demo-sun-123456"

// demo starts a throwaway local PostgreSQL, runs pgguard in front of it and
// prints the DATABASE_URL to use; Ctrl-C drains pgguard and removes the
// cluster. With -neon the PostgreSQL sits behind a simulated Neon endpoint
// (internal/neonsim) whose compute suspends and wakes as Neon's does.
func demo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgguard demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	neon := fs.Bool("neon", false, "put a simulated Neon endpoint (TLS, SNI, scale-to-zero, cold starts) between pgguard and PostgreSQL")
	suspendAfter := fs.Duration("suspend-after", 30*time.Second, "with -neon: the compute suspends after this long without queries (Neon: 5m)")
	coldStart := fs.Duration("cold-start", time.Second, "with -neon: how long a suspended compute takes to wake")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := localpg.Available(); err != nil {
		fmt.Fprintln(stderr, "pgguard demo needs a local PostgreSQL server installation:", err)
		fmt.Fprintln(stderr, "install it with: make deps (or apt-get install postgresql)")
		return 1
	}
	secret := make([]byte, 12)
	rand.Read(secret)
	fmt.Fprintln(stderr, "starting a throwaway PostgreSQL ...")
	pg, err := localpg.Start(localpg.Options{User: "app", Password: hex.EncodeToString(secret), Database: "app"})
	if err != nil {
		fmt.Fprintln(stderr, "start PostgreSQL:", err)
		return 1
	}
	defer pg.Stop()
	log := newLogger(stderr, "info")

	cfg := config.Default()
	cfg.Listen = freeOr("127.0.0.1:6432")
	cfg.HTTPListen = freeOr("127.0.0.1:9187")
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: "app", Password: "secret"}}
	cfg.Admin.Users = []string{"app"}
	cfg.Pool.Size = 4
	opts := serveOptions{}
	upstream := "a throwaway PostgreSQL (" + pg.Host() + ", data in " + pg.Dir() + ")"
	if *neon {
		sim, err := neonsim.Start(neonsim.Options{Upstream: pg.Addr(), Endpoints: []string{demoEndpoint},
			SuspendAfter: *suspendAfter, ColdStart: *coldStart, OnChange: logCompute(log)})
		if err != nil {
			fmt.Fprintln(stderr, "start the Neon simulator:", err)
			return 1
		}
		defer sim.Close()
		cfg.Databases["app"].Primary = sim.URL(demoEndpoint, "app", hex.EncodeToString(secret), "app")
		cfg.Budget.SuspendAfter = config.D(*suspendAfter)
		opts.lookupHost = sim.LookupHost
		upstream = fmt.Sprintf("a simulated Neon endpoint %s (suspends after %v without queries, wakes in %v) in front of a throwaway PostgreSQL",
			sim.Host(demoEndpoint), *suspendAfter, *coldStart)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	opts.ready = func(addr net.Addr) {
		fmt.Fprintf(stdout, `
pgguard is running in front of %s.

  DATABASE_URL=postgres://app:secret@%s/app

  psql "postgres://app:secret@%s/app"        # your queries, pooled
  psql "postgres://app:secret@%s/pgguard"    # admin console: SHOW POOLS; SHOW QUERIES; SHOW BUDGET; ...
  http://%s/                                # the live dashboard, in a browser
  curl http://%s/metrics                     # Prometheus metrics (also /status, /queries, /healthz, /readyz)

Every query is logged as a JSON line on stderr (querylog.path).
`, upstream, addr, addr, addr, cfg.HTTPListen, cfg.HTTPListen)
		if *neon {
			fmt.Fprintf(stdout, `
Watch the compute sleep and wake: the dashboard's "Neon budget" card and SHOW BUDGET
say whether pgguard believes it awake or suspended and which application woke it
last; the simulator logs each wake-up and suspend on stderr. Leave psql idle for
%v and the compute suspends (pgguard sends nothing to keep it awake); the next
query wakes it, after a %v cold start:

  psql "postgres://app:secret@%s/app?application_name=me" -c 'SELECT 1'
`, *suspendAfter, *coldStart, addr)
		}
		fmt.Fprintln(stdout, "\nPress Ctrl-C to stop; the PostgreSQL cluster is removed.")
	}
	if err := serveWith(cfg, log, opts); err != nil {
		fmt.Fprintln(stderr, "pgguard:", err)
		return 1
	}
	return 0
}

// logCompute logs the simulated compute's wake-ups and suspends.
func logCompute(log *slog.Logger) func(endpoint string, awake bool, cause string) {
	log = log.With("component", "neonsim")
	return func(endpoint string, awake bool, cause string) {
		if awake {
			log.Info("simulated Neon compute woke", "endpoint", endpoint, "caused_by", cause)
		} else {
			log.Info("simulated Neon compute suspended: every session got 57P01", "endpoint", endpoint)
		}
	}
}

// freeOr returns addr when it can be bound, else a free port on the same host.
func freeOr(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		host, _, _ := net.SplitHostPort(addr)
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			return addr
		}
	}
	defer ln.Close()
	return ln.Addr().String()
}
