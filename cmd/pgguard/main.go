// Command pgguard runs the PostgreSQL pooling proxy. It only wires: flags,
// config, signals; the work is in the packages.
//
//	pgguard [-config FILE]         run the proxy
//	pgguard check [-config FILE]   validate a config and print it, passwords masked
//	pgguard version                print the version
//	pgguard demo                   throwaway local PostgreSQL with pgguard in front
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgguard/pgguard/admin"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("pgguard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (default: $PGGUARD_CONFIG, else ./pgguard.toml if present, else built-in defaults and the environment)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "pgguard", version)
		return 0
	case "check":
		cfg, err := config.Load(*path, os.Getenv)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprint(stdout, cfg.Masked())
		return 0
	case "demo":
		return demo(stdout, stderr)
	case "", "run":
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
		fmt.Fprintf(stderr, "pgguard: unknown command %q (commands: run, check, version, demo)\n", cmd)
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
	m := metrics.New()
	p, err := proxy.New(cfg, log, m)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var httpSrv *http.Server
	if cfg.HTTPListen != "" {
		hln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("http_listen: %w", err)
		}
		h := &admin.HTTP{Proxy: p, Metrics: m}
		httpSrv = &http.Server{Handler: h.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go httpSrv.Serve(hln)
		log.Info("http listening", "addr", hln.Addr().String())
	}
	p.Console = admin.NewConsole(p, reloader(p, path, log)).Serve
	log.Info("pgguard listening", "addr", ln.Addr().String(), "version", version, "pool_mode", cfg.Pool.Mode)
	if ready != nil {
		ready(ln.Addr())
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()

	for {
		select {
		case err := <-served:
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reloader(p, path, log)()
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

// reloader returns the function SIGHUP and the console's RELOAD call: re-read
// the config; on error keep the running one.
func reloader(p *proxy.Proxy, path string, log *slog.Logger) func() error {
	return func() error {
		cfg, err := config.Load(path, os.Getenv)
		if err != nil {
			log.Error("reload failed; keeping the running config", "err", err)
			return err
		}
		restart, err := p.Reload(cfg)
		if err != nil {
			log.Error("reload partly failed", "err", err)
			return err
		}
		for _, k := range restart {
			log.Warn("config key changed but needs a restart to take effect", "key", k)
		}
		log.Info("config reloaded")
		return nil
	}
}
