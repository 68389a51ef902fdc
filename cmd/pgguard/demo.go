package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// demo starts a throwaway local PostgreSQL, runs pgguard in front of it and
// prints the DATABASE_URL to use; Ctrl-C drains pgguard and removes the cluster.
func demo(stdout, stderr io.Writer) int {
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

	cfg := config.Default()
	cfg.Listen = freeOr("127.0.0.1:6432")
	cfg.HTTPListen = freeOr("127.0.0.1:9187")
	cfg.Databases = map[string]*config.Database{"app": {Primary: pg.URL("app")}}
	cfg.Users = []config.User{{Name: "app", Password: "secret"}}
	cfg.Admin.Users = []string{"app"}
	cfg.Pool.Size = 4
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(stderr, "info")
	err = serve(cfg, "", log, func(addr net.Addr) {
		fmt.Fprintf(stdout, `
pgguard is running in front of a throwaway PostgreSQL (%s, data in %s).

  DATABASE_URL=postgres://app:secret@%s/app

  psql "postgres://app:secret@%s/app"        # your queries, pooled
  psql "postgres://app:secret@%s/pgguard"    # admin console: SHOW POOLS; SHOW QUERIES; SHOW BUDGET; ...
  http://%s/                                # the live dashboard, in a browser
  curl http://%s/metrics                     # Prometheus metrics (also /status, /queries, /healthz, /readyz)

Every query is logged as a JSON line on stderr (querylog.path).

Press Ctrl-C to stop; the PostgreSQL cluster is removed.
`, pg.Host(), pg.Dir(), addr, addr, addr, cfg.HTTPListen, cfg.HTTPListen)
	})
	if err != nil {
		fmt.Fprintln(stderr, "pgguard:", err)
		return 1
	}
	return 0
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
