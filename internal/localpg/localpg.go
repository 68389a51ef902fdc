// Package localpg starts throwaway local servers — PostgreSQL, PgBouncer and
// Redis — for tests, benchmarks and `pgguard demo`.
//
// Every server listens on 127.0.0.1 on a free port, keeps its files in a
// directory of its own under os.TempDir(), and runs as a child of this
// process that the kernel kills when this process dies (so a test binary
// killed by `go test -timeout` leaves nothing running). Directories left
// behind by dead processes are removed, and any server still running in them
// killed, on the next start of any server.
//
// A package's tests share one cluster, started in TestMain:
//
//	var pg *localpg.Cluster
//
//	func TestMain(m *testing.M) {
//		os.Exit(localpg.Main(m, localpg.Options{User: "app", Password: "secret"}, &pg))
//	}
//
// Main skips the package with a message when PostgreSQL is not installed,
// unless the environment variable CI is set, where that is a failure.
package localpg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// BinDir returns the directory holding the PostgreSQL server binaries: $PG_BIN
// when set, else the newest /usr/lib/postgresql/*/bin, else the directory of
// the initdb found on $PATH. It returns "" when there is none.
func BinDir() string {
	dir, _ := findBinDir()
	return dir
}

// Available reports why PostgreSQL servers cannot be started here, or nil
// when they can.
func Available() error {
	dir, err := findBinDir()
	if err != nil {
		return err
	}
	if _, err := serverAccount(); err != nil {
		return err
	}
	_, err = pgVersion(dir)
	return err
}

// PgBouncerAvailable reports why PgBouncer cannot be started here, or nil.
func PgBouncerAvailable() error {
	_, err := pgbouncerBin()
	return err
}

// RedisAvailable reports why redis-server cannot be started here, or nil.
func RedisAvailable() error {
	_, err := redisBin()
	return err
}

// findBinDir is BinDir with the reason when there is none.
func findBinDir() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if err := hasServerBinaries(dir); err != nil {
			return "", fmt.Errorf("PG_BIN=%s: %w", dir, err)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if hasServerBinaries(dir) == nil {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if hasServerBinaries(dir) == nil {
			return dir, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) in $PG_BIN, /usr/lib/postgresql/*/bin or $PATH")
}

// versionOf returns N of /usr/lib/postgresql/N/bin, or 0.
func versionOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// hasServerBinaries reports whether dir holds executable initdb and postgres.
func hasServerBinaries(dir string) error {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(dir, name))
		}
	}
	return nil
}

var versions sync.Map // bin dir → version line of `postgres --version`

// pgVersion returns the output of `postgres --version` in dir, e.g.
// "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)".
func pgVersion(dir string) (string, error) {
	if v, ok := versions.Load(dir); ok {
		return v.(string), nil
	}
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", filepath.Join(dir, "postgres"), err)
	}
	v := strings.TrimSpace(string(out))
	versions.Store(dir, v)
	return v, nil
}

// pgbouncerBin finds pgbouncer: $PGBOUNCER_BIN, $PATH, /usr/sbin/pgbouncer.
func pgbouncerBin() (string, error) {
	return findTool("PGBOUNCER_BIN", "pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
}

// redisBin finds redis-server: $REDIS_SERVER_BIN, $PATH, /usr/bin/redis-server.
func redisBin() (string, error) {
	return findTool("REDIS_SERVER_BIN", "redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
}

// findTool returns $env, the name found on $PATH, or the first existing path.
func findTool(env, name string, paths ...string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", env, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in $%s, $PATH or %s (install it with: make deps)", name, env, strings.Join(paths, ", "))
}
