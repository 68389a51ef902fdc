package localpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Options configures a Cluster. The zero value works.
type Options struct {
	// User is the login role tests connect as; it authenticates with
	// Password over SCRAM-SHA-256. Default "app".
	User string
	// Password is User's password. Default "app".
	Password string
	// Database is created owned by User. Default "app".
	Database string
	// MaxConnections is max_connections. Default 300.
	MaxConnections int
	// Settings are written to postgresql.conf after the defaults, so they
	// win: {"log_statement": "all"}. A value is quoted unless it already is.
	Settings map[string]string
	// StartTimeout bounds each start of the server. Default 60s.
	StartTimeout time.Duration
	// Files are written into the data directory before the server starts,
	// owned by the server's account with mode 0600: a TLS certificate and
	// key that Settings name ({"ssl": "on", "ssl_cert_file": "server.crt"}).
	Files map[string][]byte
}

// withDefaults returns o with the zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.User == "" {
		o.User = "app"
	}
	if o.Password == "" {
		o.Password = "app"
	}
	if o.Database == "" {
		o.Database = "app"
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 300
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 60 * time.Second
	}
	return o
}

// Cluster is a throwaway PostgreSQL server on 127.0.0.1, with its data in a
// temporary directory that Stop removes. The postgres superuser connects
// without a password; Options.User needs its password.
//
// The server process is a direct child of this process rather than started
// by pg_ctl, which would detach it: that way it dies with this process.
type Cluster struct {
	opts   Options // with defaults
	binDir string
	acct   account
	port   int // fixed after Start, so Restart comes back on the same port
	served     // the postmaster and its directory
}

// Start initialises a cluster from the cached template, starts it, and
// creates opts.User and opts.Database. On error nothing is left running.
func Start(opts Options) (*Cluster, error) {
	opts = opts.withDefaults()
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}
	dir, err := newInstanceDir(acct, "pg")
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, binDir: binDir, acct: acct, served: served{dir: dir}}
	register(c)
	if err := c.init(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// init copies the template, configures it, starts the server and creates
// the test role and database.
func (c *Cluster) init() error {
	data := c.dataDir()
	if err := copyTemplate(c.binDir, data, c.acct); err != nil {
		return err
	}
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = conf.WriteString("\ninclude_if_exists 'localpg.conf'\n")
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := c.writeFile(filepath.Join(data, "pg_hba.conf"), hbaConf); err != nil {
		return err
	}
	for name, content := range c.opts.Files {
		if err := c.writeFile(filepath.Join(data, filepath.Base(name)), string(content)); err != nil {
			return err
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return err
		}
		if err := c.writeFile(filepath.Join(data, "localpg.conf"), c.conf()); err != nil {
			return err
		}
		err = c.startLocked()
		if err == nil {
			break
		}
		if attempt == 5 || !portTaken(c.LogFile()) {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartTimeout)
	defer cancel()
	return c.createRole(ctx)
}

// hbaConf lets the postgres superuser in without a password and everyone
// else with SCRAM-SHA-256, over the socket and 127.0.0.1 only.
const hbaConf = `# written by pgguard's internal/localpg
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          postgres                 trust
host    all          postgres  127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
local   all          all                      scram-sha-256
host    all          all       127.0.0.1/32   scram-sha-256
`

// conf returns the settings in localpg.conf, which postgresql.conf includes.
func (c *Cluster) conf() string {
	var b strings.Builder
	set := func(k, v string) {
		if len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
			v = quoteLiteral(v)
		}
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	b.WriteString("# written by pgguard's internal/localpg\n")
	set("listen_addresses", "127.0.0.1")
	set("port", strconv.Itoa(c.port))
	// A socket path longer than sun_path (108 bytes) fails the start.
	sockets := c.dir
	if len(filepath.Join(c.dir, ".s.PGSQL.65535")) >= 108 {
		sockets = ""
	}
	set("unix_socket_directories", sockets)
	set("max_connections", strconv.Itoa(c.opts.MaxConnections))
	set("shared_buffers", "32MB")
	set("huge_pages", "off")
	// Segments in the data directory, not /dev/shm, go away with it even
	// when the server was killed.
	set("dynamic_shared_memory_type", "mmap")
	// Durability is worthless for throwaway data and costs time.
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("password_encryption", "scram-sha-256")
	set("logging_collector", "off")
	set("log_destination", "stderr")
	set("log_line_prefix", "%m [%p] %q%u@%d ")
	keys := make([]string, 0, len(c.opts.Settings))
	for k := range c.opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, c.opts.Settings[k])
	}
	return b.String()
}

// writeFile writes a file that the server reads.
func (c *Cluster) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return c.acct.chown(path)
}

// startLocked starts the postmaster and waits until it accepts connections,
// as `pg_ctl start -w` would. c.mu is held.
func (c *Cluster) startLocked() error {
	p, err := startProc(c.acct, c.dir, c.LogFile(), filepath.Join(c.binDir, "postgres"), "-D", c.dataDir())
	if err != nil {
		return err
	}
	if err := p.waitReady(c.opts.StartTimeout, c.LogFile(), func() bool { return c.ready(p.pid()) }); err != nil {
		p.stop(syscall.SIGQUIT, 5*time.Second)
		return err
	}
	c.proc = p
	return nil
}

// ready reports whether postmaster.pid says the postmaster pid accepts
// connections: its eighth line reads "ready" (PostgreSQL 10 and later), or
// "standby" for a hot standby.
func (c *Cluster) ready(pid int) bool {
	b, err := os.ReadFile(filepath.Join(c.dataDir(), "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	// A hot standby says "standby" once it accepts connections.
	status := ""
	if len(lines) >= 8 {
		status = strings.TrimSpace(lines[7])
	}
	return lines[0] == strconv.Itoa(pid) && (status == "ready" || status == "standby")
}

// createRole creates Options.User and Options.Database.
func (c *Cluster) createRole(ctx context.Context) error {
	conn, err := c.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	role := quoteIdent(c.opts.User)
	sql := "CREATE ROLE " + role + " LOGIN PASSWORD " + quoteLiteral(c.opts.Password)
	if c.opts.User == "postgres" {
		sql = "ALTER ROLE postgres PASSWORD " + quoteLiteral(c.opts.Password)
	}
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("create role %s: %w", c.opts.User, err)
	}
	switch c.opts.Database {
	case "postgres", "template0", "template1":
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+quoteIdent(c.opts.Database)+" OWNER "+role).ReadAll(); err != nil {
		return fmt.Errorf("create database %s: %w", c.opts.Database, err)
	}
	return nil
}

// quoteLiteral quotes s as an SQL (and postgresql.conf) string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteIdent quotes s as an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// connect opens a superuser connection to database db. (pgconn, not pgx:
// pgguard's binary carries this package for its demo, and pgx's type
// system would add megabytes to it.)
func (c *Cluster) connect(ctx context.Context, db string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(c.SuperURL(db))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 10 * time.Second
	cfg.RuntimeParams["application_name"] = "localpg"
	return pgconn.ConnectConfig(ctx, cfg)
}

// run executes sql on conn: without args in the simple protocol, so sql
// may hold several statements; with args as text parameters ($1, ...;
// nil is NULL) whose types the server infers.
func run(ctx context.Context, conn *pgconn.PgConn, sql string, args []any) ([]*pgconn.Result, error) {
	if len(args) == 0 {
		return conn.Exec(ctx, sql).ReadAll()
	}
	params := make([][]byte, len(args))
	for i, a := range args {
		if a != nil { // nil stays NULL
			params[i] = fmt.Append(nil, a)
		}
	}
	res := conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	return []*pgconn.Result{res}, res.Err
}

// Exec runs sql as the superuser in Options.Database on a connection of its
// own. Without args it uses the simple protocol, so sql may hold several
// statements.
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := c.connect(ctx, c.opts.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = run(ctx, conn, sql, args)
	return err
}

// QueryInt runs sql as the superuser in Options.Database on a connection of
// its own (application_name "localpg") and returns the integer in the first
// column of the first row, as in "SELECT count(*) FROM pg_stat_activity".
func (c *Cluster) QueryInt(ctx context.Context, sql string, args ...any) (int64, error) {
	conn, err := c.connect(ctx, c.opts.Database)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	results, err := run(ctx, conn, sql, args)
	if err != nil {
		return 0, err
	}
	if len(results) == 0 || len(results[0].Rows) == 0 || len(results[0].Rows[0]) == 0 {
		return 0, fmt.Errorf("%s: no rows", sql)
	}
	return strconv.ParseInt(string(results[0].Rows[0][0]), 10, 64)
}

// SeqScans returns how many sequential scans PostgreSQL has counted on the
// table (pg_stat_user_tables.seq_scan): for a table without an index, how
// many times a query read it. Statistics reach the shared counters when a
// backend exits (or after it idles a while), so every other client backend
// is ended first (a pooler in front opens new ones when next asked), and the
// counter is read until it settles: a backend leaves pg_stat_activity a
// moment before its last statistics land.
func (c *Cluster) SeqScans(ctx context.Context, table string) (int64, error) {
	const others = "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
	if err := c.Exec(ctx, "SELECT pg_terminate_backend(pid) "+others); err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, err := c.QueryInt(ctx, "SELECT count(*) "+others)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d client backends still running 10s after pg_terminate_backend", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	read := func() (int64, error) {
		return c.QueryInt(ctx, "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1", table)
	}
	n, err := read()
	for range 20 {
		if err != nil {
			return 0, err
		}
		time.Sleep(25 * time.Millisecond)
		var m int64
		if m, err = read(); err == nil && m == n {
			return n, nil
		}
		n = m
	}
	return 0, fmt.Errorf("statistics of %s still moving after 500 ms", table)
}

// Host returns the address the server listens on: "127.0.0.1".
func (c *Cluster) Host() string { return "127.0.0.1" }

// Port returns the server's TCP port, the same across restarts.
func (c *Cluster) Port() int { return c.port }

// Addr returns "127.0.0.1:PORT".
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host(), strconv.Itoa(c.port)) }

// User returns the test role's name.
func (c *Cluster) User() string { return c.opts.User }

// Password returns the test role's password.
func (c *Cluster) Password() string { return c.opts.Password }

// Database returns the database created for the test role.
func (c *Cluster) Database() string { return c.opts.Database }

// URL returns the postgres:// URL of database db (Options.Database when
// empty) for the test role, password included, with sslmode=disable.
func (c *Cluster) URL(db string) string {
	return c.url(url.UserPassword(c.opts.User, c.opts.Password), db)
}

// SuperURL returns the postgres:// URL of database db (Options.Database
// when empty) for the postgres superuser, who needs no password.
func (c *Cluster) SuperURL(db string) string {
	return c.url(url.User("postgres"), db)
}

func (c *Cluster) url(user *url.Userinfo, db string) string {
	if db == "" {
		db = c.opts.Database
	}
	u := url.URL{Scheme: "postgres", User: user, Host: c.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Dir returns the cluster's directory: the data directory "data", the log
// and the Unix socket.
func (c *Cluster) Dir() string { return c.dir }

// dataDir returns the PostgreSQL data directory.
func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

// LogFile returns the path of the server log.
func (c *Cluster) LogFile() string { return filepath.Join(c.dir, "postgres.log") }

// Pid returns the postmaster's process id, or 0 while it is stopped.
func (c *Cluster) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.exited() {
		return 0
	}
	return c.proc.pid()
}

// errRemoved is returned by operations on a cluster after Stop.
var errRemoved = errors.New("localpg: cluster was stopped and removed")

// StopImmediate shuts the server down at once, as `pg_ctl stop -m
// immediate` does (SIGQUIT): clients are cut off, nothing is checkpointed,
// and the next start runs crash recovery. The data stays for Restart.
func (c *Cluster) StopImmediate() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errRemoved
	}
	if c.proc != nil {
		c.proc.stop(syscall.SIGQUIT, 10*time.Second)
		c.proc = nil
	}
	return nil
}

// Restart starts the server again on the same port with the same data;
// a running server is shut down first (fast mode: SIGINT).
func (c *Cluster) Restart() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errRemoved
	}
	if c.proc != nil {
		c.proc.stop(syscall.SIGINT, 30*time.Second)
		c.proc = nil
	}
	return c.startLocked()
}

// Stop stops the server and removes its directory. It is idempotent and
// safe after a failed Start.
func (c *Cluster) Stop() error {
	// Immediate shutdown: the data is about to go, so a checkpoint is wasted.
	return c.stopAndRemove(c, syscall.SIGQUIT, 10*time.Second)
}
