// Command pgguard runs the PostgreSQL pooling proxy. It only wires: flags,
// config, signals; the work is in the packages.
//
//	pgguard [-config FILE]                        run the proxy
//	pgguard run [-config FILE] -- COMMAND [ARGS]  run the proxy and COMMAND beside it (run.go)
//	pgguard check [-config FILE]                  validate a config and print it, passwords masked
//	pgguard health [-config FILE]                 exit 0 when /readyz answers 200 (container health checks)
//	pgguard version                               print the version, commit and Go version
//	pgguard demo [-neon]                          throwaway local PostgreSQL with pgguard in front (-neon: behind a simulated Neon endpoint)
//	pgguard advise [-config FILE] [-json] FILE... the advisor's findings from query log files (advise.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/admin"
	"github.com/pgguard/pgguard/admin/dashboard"
	"github.com/pgguard/pgguard/advisor"
	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// envSuspendRedis forces per-instance limits and result cache even with a
// Redis URL set (true/1/on/yes). It is read at start only.
const envSuspendRedis = "SUSPEND_REDIS"

// version and commit are set at build time (make build) with -ldflags
// "-X main.version=... -X main.commit=..."; without a commit, the one Go
// stamped into the binary is shown.
var (
	version = "0.1.0-dev"
	commit  = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if cmd == "advise" { // its own flags
		return advise(args, stdout, stderr)
	}
	if cmd == "demo" {
		return demo(args, stdout, stderr)
	}
	fs := flag.NewFlagSet("pgguard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (default: $PGGUARD_CONFIG, else ./pgguard.toml if present, else built-in defaults and the environment)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, versionLine())
		return 0
	case "health":
		return health(*path, stdout, stderr)
	case "check":
		cfg, err := config.Load(*path, os.Getenv)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprint(stdout, cfg.Masked())
		return 0
	case "run":
		return runCommand(*path, fs.Args(), stdout, stderr)
	case "":
		cfg, err := config.Load(*path, os.Getenv)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if err := serve(cfg, *path, newLogger(stderr, cfg.LogLevel), nil); err != nil {
			fmt.Fprintln(stderr, "pgguard:", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "pgguard: unknown command %q (commands: run, check, health, version, demo, advise)\n", cmd)
		return 2
	}
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// serve runs pgguard until a signal drains it. ready, when set, receives the
// listen address once clients can connect.
func serve(cfg *config.Config, path string, log *slog.Logger, ready func(addr net.Addr)) error {
	return serveWith(cfg, log, serveOptions{path: path, ready: ready})
}

// serveOptions are serveWith's inputs besides the config and the log.
type serveOptions struct {
	path   string              // the config file reload re-reads
	getenv func(string) string // the environment reload reads; nil: os.Getenv
	ready  func(net.Addr)      // called with the listen address once clients can connect
	// sigs delivers SIGHUP (reload) and SIGINT/SIGTERM (drain; a second one
	// closes everything at once); nil: serveWith subscribes to them itself.
	sigs <-chan os.Signal
	// lookupHost resolves upstream host names (Proxy.LookupHost); nil: DNS.
	lookupHost func(ctx context.Context, host string) ([]string, error)
}

// serveWith runs pgguard until a signal on o.sigs drains it.
func serveWith(cfg *config.Config, log *slog.Logger, o serveOptions) error {
	ready := o.ready
	suspendRedis, err := envBool(envSuspendRedis)
	if err != nil {
		return err
	}
	redis.SetLogger(redisLogger{log.With("component", "redis")})
	applyMemoryLimit(cfg)
	applyMaxProcs(cfg)
	m := metrics.New()

	ql, err := querylog.New(cfg.QueryLog, log)
	if err != nil {
		return fmt.Errorf("querylog.path: %w", err)
	}
	defer ql.Close() // after the drain: the last queries are written
	for _, c := range ql.Collectors() {
		if err := m.Registry.Register(c); err != nil {
			return fmt.Errorf("querylog metrics: %w", err)
		}
	}
	lim, err := limiter.New(cfg, log, limiter.WithRegisterer(m.Registry), limiter.WithRedisSuspended(suspendRedis))
	if err != nil {
		return fmt.Errorf("limiter: %w", err)
	}
	defer lim.Close()
	rc, err := cache.New(cfg, log, cache.WithRegisterer(m.Registry), cache.WithRedisSuspended(suspendRedis))
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer rc.Close()

	fl, err := fleet.New(cfg, log, fleet.WithRegisterer(m.Registry))
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	defer fl.Close() // after the drain: the leases are given back

	p, err := proxy.New(cfg, log, m, proxy.WithFleet(fl))
	if err != nil {
		return err
	}
	p.QueryLog, p.Limiter, p.Cache, p.LookupHost = ql, lim, rc, o.lookupHost
	fleetURL := cfg.Limiter.RedisURL
	if suspendRedis {
		fleetURL = ""
	}
	foFleet, err := failover.NewFleet(fleetURL, "limiter.redis_url", log.With("component", "failover"), m.Registry)
	if err != nil {
		p.Close()
		return fmt.Errorf("failover: %w", err)
	}
	defer foFleet.Close()
	foFleet.Start(p.Monitors)
	var adv *advisor.Analyzer
	if n := cfg.QueryLog.AdvisorRecords; n > 0 {
		adv = advisor.New(advisor.Options{MaxRecords: n})
		ql.SetObserver(adv.Observe)
	}
	reload := reloader(p, ql, lim, rc, o.path, o.getenv, log)
	reload = alsoReconfigure(reload, p, fl)
	var dash *dashboard.Dashboard // set below with http_listen, before fl.Start
	wireFleet(fl, p, lim, func() *dashboard.Dashboard { return dash }, log)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		p.Close()
		return fmt.Errorf("listen: %w", err)
	}
	var httpSrv *http.Server
	if cfg.HTTPListen != "" {
		hln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			ln.Close()
			p.Close()
			return fmt.Errorf("http_listen: %w", err)
		}
		dash = dashboard.New(dashboard.Options{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Fleet: fl})
		defer dash.Close()
		h := &admin.HTTP{Proxy: p, Metrics: m, QueryLog: ql, Limiter: lim, Cache: rc, Fleet: fl, Advisor: adv, Dashboard: dash, ListenAddr: hln.Addr().String()}
		httpSrv = &http.Server{Handler: h.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go httpSrv.Serve(hln)
		log.Info("http listening", "addr", hln.Addr().String())
	}
	console := admin.NewConsole(p, reload)
	console.QueryLog, console.Limiter, console.Cache, console.Fleet = ql, lim, rc, fl
	console.Views["advice"] = console.AdviceView(adv)
	p.Console = console.Serve
	fl.Start() // before clients: a late starter applies the fleet's switches first
	sigs := o.sigs
	if sigs == nil {
		own := make(chan os.Signal, 4)
		signal.Notify(own, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(own)
		sigs = own
	}
	log.Info("pgguard listening", "addr", ln.Addr().String(), "version", version, "pool_mode", cfg.Pool.Mode)
	if ready != nil {
		ready(ln.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()

	for {
		select {
		case err := <-served:
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload()
				continue
			}
			timeout := p.Config().ShutdownTimeout.Duration
			log.Info("draining: no new connections; running transactions may finish", "signal", sig.String(), "shutdown_timeout", timeout)
			ctx, cancel := context.WithCancel(context.Background())
			if timeout > 0 {
				ctx, cancel = context.WithTimeout(context.Background(), timeout)
			}
			go func() {
				<-sigs // a second signal exits at once
				log.Warn("second signal: closing every connection now")
				cancel()
			}()
			err := p.Shutdown(ctx)
			cancel()
			if httpSrv != nil {
				httpSrv.Close()
			}
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			log.Info("pgguard stopped")
			return nil
		}
	}
}

// reloader returns the function SIGHUP and the console's RELOAD call: reopen
// the query log file (logrotate), re-read the config and apply it to the
// proxy, the query log, the limiter and the result cache; on a config error
// keep the running one. getenv is the environment config.Load reads (nil:
// os.Getenv).
func reloader(p *proxy.Proxy, ql *querylog.Logger, lim *limiter.Limiter, rc *cache.Cache, path string, getenv func(string) string, log *slog.Logger) func() error {
	if getenv == nil {
		getenv = os.Getenv
	}
	return func() error {
		// Reopen first and whatever the config says: logrotate's SIGHUP must
		// work even while the file has an error.
		if err := ql.Reopen(); err != nil {
			log.Error("query log: reopen failed; writing to the old file", "err", err)
		}
		cfg, err := config.Load(path, getenv)
		if err != nil {
			log.Error("reload failed; keeping the running config", "err", err)
			return err
		}
		restart, err := p.Reload(cfg)
		if err != nil {
			log.Error("reload partly failed", "err", err)
			return err
		}
		if err := ql.Reconfigure(cfg.QueryLog); err != nil {
			log.Error("reload: [querylog] not applied; keeping the running query log settings", "path", cfg.QueryLog.Path, "err", err)
			return fmt.Errorf("querylog.path: %w", err)
		}
		lim.Reconfigure(cfg)
		rc.Reconfigure(cfg)
		applyMemoryLimit(cfg)
		applyMaxProcs(cfg)
		for _, k := range restart {
			log.Warn("config key changed but needs a restart to take effect", "key", k)
		}
		log.Info("config reloaded")
		return nil
	}
}

// envBool reads a boolean environment variable: true/1/on/yes or
// false/0/off/no, unset or empty is false.
func envBool(name string) (bool, error) {
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv(name))); v {
	case "", "false", "0", "off", "no":
		return false, nil
	case "true", "1", "on", "yes":
		return true, nil
	default:
		return false, fmt.Errorf("%s=%q: want true/1/on/yes or false/0/off/no", name, v)
	}
}

// redisLogger routes go-redis's own log lines (dial and pool errors) to the
// main log at DEBUG: the limiter and the cache already report Redis going
// away and coming back in one WARN/INFO line and the pgguard_limiter_redis_up
// and pgguard_cache_redis_up metrics, so the per-attempt detail is only for
// debugging.
type redisLogger struct{ log *slog.Logger }

// Printf implements go-redis's logging interface.
func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.log.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// applyMaxProcs sets how many threads run Go code at once from max_procs
// (0: the runtime's default), unless GOMAXPROCS set it for the process.
func applyMaxProcs(cfg *config.Config) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if cfg.MaxProcs <= 0 {
		runtime.SetDefaultGOMAXPROCS() // one per core, or the container's CPU limit
		return
	}
	runtime.GOMAXPROCS(cfg.MaxProcs)
}

// applyMemoryLimit sets the Go runtime's soft memory limit from
// memory_limit, unless GOMEMLIMIT set it for the process.
func applyMemoryLimit(cfg *config.Config) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := int64(math.MaxInt64) // the runtime's "no limit"
	if cfg.MemoryLimit > 0 {
		limit = int64(cfg.MemoryLimit)
	}
	debug.SetMemoryLimit(limit)
}
