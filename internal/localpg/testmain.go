package localpg

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

// M is the part of *testing.M that Main uses.
type M interface {
	Run() int
}

// TB is the part of testing.TB that Require uses.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// InCI reports whether the environment variable CI is set to something other
// than "", "0" or "false": there a missing server binary fails the tests
// instead of skipping them.
func InCI() bool {
	switch strings.ToLower(os.Getenv("CI")) {
	case "", "0", "false", "no":
		return false
	}
	return true
}

// Main is the body of a TestMain whose tests share one cluster:
//
//	os.Exit(localpg.Main(m, localpg.Options{User: "app", Password: "secret"}, &pg))
//
// It starts a cluster from opts, stores it in *pg, runs the tests and then
// stops every server this process started (see Cleanup). It returns the exit
// code. When PostgreSQL is not installed it prints why and returns 0, which
// skips the package, or 1 when InCI.
func Main(m M, opts Options, pg **Cluster) int {
	defer Cleanup()
	if err := Available(); err != nil {
		if InCI() {
			fmt.Fprintf(os.Stderr, "FAIL: PostgreSQL is required when CI is set: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "SKIP: tests need a local PostgreSQL installation: %v\n(install it with: make deps)\n", err)
		return 0
	}
	c, err := Start(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: start PostgreSQL: %v\n", err)
		return 1
	}
	*pg = c
	return m.Run()
}

// Require skips the test when err (from Available, PgBouncerAvailable or
// RedisAvailable) says a server is missing, or fails it when InCI.
func Require(t TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatal("required when CI is set: ", err)
		return
	}
	t.Skip("not installed: ", err)
}

// stopper is a server that Cleanup stops.
type stopper interface {
	Stop() error
}

// live holds every server started by this process and not yet stopped.
var live struct {
	mu sync.Mutex
	m  map[stopper]struct{}
}

func register(s stopper) {
	live.mu.Lock()
	defer live.mu.Unlock()
	if live.m == nil {
		live.m = make(map[stopper]struct{})
	}
	live.m[s] = struct{}{}
}

func unregister(s stopper) {
	live.mu.Lock()
	defer live.mu.Unlock()
	delete(live.m, s)
}

// Cleanup stops every server this process started and has not stopped yet,
// and returns the first error. TestMain and main functions defer it so that
// no server outlives them even when a Stop was missed.
func Cleanup() error {
	live.mu.Lock()
	all := make([]stopper, 0, len(live.m))
	for s := range live.m {
		all = append(all, s)
	}
	live.mu.Unlock()
	var first error
	for _, s := range all {
		if err := s.Stop(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
