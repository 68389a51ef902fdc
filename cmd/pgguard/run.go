package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/pgguard/pgguard/config"
)

// pgguard run: the sidecar as a wrapper. One process starts the proxy, waits
// until it listens, then starts the app with DATABASE_URL (and the other
// variables of run.rewrite_env) pointed at it. Signals go to the app; when
// the app exits the proxy drains and the wrapper exits with the app's code;
// when the proxy stops, the app is stopped and the wrapper exits non-zero so
// that the platform restarts the machine. If the wrapper itself is killed,
// the kernel sends the app SIGTERM (Pdeathsig).

const runUsage = `usage: pgguard run [-config FILE] -- COMMAND [ARGS...]

Runs pgguard and COMMAND beside it. COMMAND gets DATABASE_URL (and the other
variables named in run.rewrite_env / PGGUARD_RUN_REWRITE_ENV) rewritten to
point at pgguard with the same user, password and database. pgguard's primary
is NEON_DATABASE_URL when set, else COMMAND's own DATABASE_URL. SIGINT and
SIGTERM go to COMMAND; when it exits, pgguard drains and the exit code is
COMMAND's. SIGHUP reloads pgguard's config.
`

// envDatabaseURL is the application's connection URL, rewritten for it and,
// without NEON_DATABASE_URL, pgguard's primary.
const envDatabaseURL = "DATABASE_URL"

// Exit codes of pgguard run besides the app's own (shell conventions).
const (
	exitUsage       = 2
	exitCannotExec  = 126 // the command exists but cannot be executed
	exitNotFound    = 127 // no such command
	exitProxyFailed = 1   // pgguard stopped while the app ran, or could not start
)

// forwarded are the signals pgguard run passes to the app. SIGHUP is not
// among them: it reloads pgguard (an app that does not expect it would die).
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runCommand is `pgguard run [-config FILE] -- COMMAND [ARGS...]`.
func runCommand(path string, argv []string, stdout, stderr io.Writer) int {
	if len(argv) == 0 {
		fmt.Fprint(stderr, runUsage)
		return exitUsage
	}
	getenv, fromDatabaseURL, err := runEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, "pgguard run:", err)
		return 1
	}
	cfg, err := config.Load(path, getenv)
	if err != nil {
		fmt.Fprintln(stderr, blameDatabaseURL(err, fromDatabaseURL))
		if getenv(config.EnvPrimaryURL) == "" {
			fmt.Fprintf(stderr, "pgguard run: set %s, or %s for COMMAND, to the primary's URL\n", config.EnvPrimaryURL, envDatabaseURL)
		}
		return 1
	}
	targets, err := rewriteTargets(cfg, os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, "pgguard run:", err)
		return 1
	}
	log := newLogger(stderr, cfg.LogLevel)
	if fromDatabaseURL {
		log.Info("pgguard run: no NEON_DATABASE_URL; the primary is the app's DATABASE_URL", "primary", config.RedactURL(os.Getenv(envDatabaseURL)))
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, append([]os.Signal{syscall.SIGHUP}, forwarded...)...)
	defer signal.Stop(sigs)
	toProxy := make(chan os.Signal, 4) // what serve sees: reload, drain, exit now
	ready := make(chan net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- serveWith(cfg, log, serveOptions{path: path, getenv: getenv, sigs: toProxy,
			ready: func(a net.Addr) { ready <- a }})
	}()
	drain := func() {
		toProxy <- syscall.SIGTERM
		for {
			select {
			case err := <-served:
				if err != nil {
					log.Error("pgguard run: drain", "err", err)
				}
				return
			case sig := <-sigs: // a second signal: exit at once
				toProxy <- sig
			}
		}
	}

	// Wait until pgguard listens; a signal meanwhile stops everything.
	var addr net.Addr
	for addr == nil {
		select {
		case addr = <-ready:
		case err := <-served:
			fmt.Fprintln(stderr, "pgguard:", err)
			return exitProxyFailed
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				continue
			}
			log.Info("pgguard run: signal before the app started; not starting it", "signal", sig.String())
			drain()
			return 128 + int(sig.(syscall.Signal))
		}
	}

	env, shown := appEnv(os.Environ(), targets, addr)
	app, exited, err := startApp(argv, env, stdout, stderr)
	if err != nil {
		code := exitCannotExec
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = exitNotFound
		}
		fmt.Fprintf(stderr, "pgguard run: %s: %v\n", argv[0], unwrapExec(err))
		log.Error("pgguard run: cannot start the app; draining", "command", argv[0], "exit_code", code)
		drain()
		return code
	}
	log.Info("pgguard run: app started", append([]any{"command", argv[0], "pid", app.Pid}, shown...)...)

	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				toProxy <- sig
				continue
			}
			log.Info("pgguard run: forwarding signal to the app", "signal", sig.String(), "pid", app.Pid)
			app.Signal(sig)
		case code := <-exited:
			log.Info("pgguard run: app exited; draining pgguard", "command", argv[0], "exit_code", code)
			drain()
			return code
		case err := <-served:
			log.Error("pgguard run: pgguard stopped while the app runs; stopping the app", "err", err, "pid", app.Pid)
			stopApp(app, exited, cfg.ShutdownTimeout.Duration, log)
			return exitProxyFailed
		}
	}
}

// runEnv returns the environment config.Load reads for pgguard run: the
// process's, with DATABASE_URL standing in for NEON_DATABASE_URL when that
// is unset (fromDatabaseURL). A DATABASE_URL that is not a usable URL is an
// error naming it.
func runEnv(getenv func(string) string) (env func(string) string, fromDatabaseURL bool, err error) {
	if getenv(config.EnvPrimaryURL) != "" || getenv(envDatabaseURL) == "" {
		return getenv, false, nil
	}
	raw := getenv(envDatabaseURL)
	if _, err := parseAppURL(envDatabaseURL, raw); err != nil {
		return nil, false, err
	}
	return func(k string) string {
		if k == config.EnvPrimaryURL {
			return raw
		}
		return getenv(k)
	}, true, nil
}

// blameDatabaseURL rewrites config problems that NEON_DATABASE_URL caused
// to name DATABASE_URL when that is where the value came from.
func blameDatabaseURL(err error, fromDatabaseURL bool) error {
	var cerr *config.Error
	if !fromDatabaseURL || !errors.As(err, &cerr) {
		return err
	}
	out := &config.Error{Problems: append([]config.Problem(nil), cerr.Problems...)}
	for i, p := range out.Problems {
		if p.File == config.EnvPrimaryURL {
			out.Problems[i].File = envDatabaseURL + " (as " + config.EnvPrimaryURL + ")"
		}
	}
	return out
}

// startApp starts argv with env, standard input passed through, on a
// goroutine whose OS thread lives as long as the app: the app's Pdeathsig
// (SIGTERM when this process dies) is tied to the thread that started it.
// exited receives the app's exit code (128+N when signal N killed it).
func startApp(argv, env []string, stdout, stderr io.Writer) (*os.Process, <-chan int, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, nil, err
	}
	started := make(chan error, 1)
	exited := make(chan int, 1)
	var proc *os.Process
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(path, argv[1:]...)
		cmd.Args[0] = argv[0]
		cmd.Env = env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		proc = cmd.Process
		started <- nil
		cmd.Wait()
		exited <- exitCode(cmd.ProcessState)
	}()
	if err := <-started; err != nil {
		return nil, nil, err
	}
	return proc, exited, nil
}

// exitCode is the code a shell would report for st.
func exitCode(st *os.ProcessState) int {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// stopApp sends the app SIGTERM, and SIGKILL after grace (10s when 0).
func stopApp(app *os.Process, exited <-chan int, grace time.Duration, log *slog.Logger) {
	if grace <= 0 {
		grace = 10 * time.Second
	}
	app.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case code := <-exited:
		log.Info("pgguard run: app stopped", "exit_code", code)
	case <-t.C:
		log.Warn("pgguard run: app still running after SIGTERM; killing it", "waited", grace)
		app.Kill()
		<-exited
	}
}

// unwrapExec drops the path exec.Error repeats.
func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		if errors.Is(ee.Err, exec.ErrNotFound) {
			return errors.New("command not found")
		}
		return ee.Err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
