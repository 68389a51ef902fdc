package localpg

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PgBouncerOptions configures a PgBouncer in front of a Cluster.
type PgBouncerOptions struct {
	// Cluster is the server PgBouncer connects to. Required.
	Cluster *Cluster
	// Database is the database clients ask for, served by the cluster's
	// database of the same name. Default Cluster.Database(). Any other
	// database name is passed through to the cluster as well.
	Database string
	// User and Password are the one client, who is also the user PgBouncer
	// logs in to the cluster as. Default the cluster's test role.
	User, Password string
	// PoolMode is pool_mode: "session", "transaction" or "statement".
	// Default "transaction".
	PoolMode string
	// PoolSize is default_pool_size. Default 20.
	PoolSize int
	// MaxClientConn is max_client_conn. Default 1000.
	MaxClientConn int
	// AuthType is auth_type for clients: "scram-sha-256" or "trust".
	// Default "scram-sha-256".
	AuthType string
	// Settings are extra [pgbouncer] settings, written last.
	Settings map[string]string
	// StartTimeout bounds the start. Default 30s.
	StartTimeout time.Duration
}

// PgBouncer is a PgBouncer process on 127.0.0.1, for comparison benchmarks
// and for tests of pgguard behind or beside another pooler.
type PgBouncer struct {
	opts   PgBouncerOptions // with defaults
	bin    string           // the pgbouncer executable
	port   int
	served // the pgbouncer process and its directory
}

// StartPgBouncer writes a configuration into a temporary directory and
// starts PgBouncer with it. On error nothing is left running.
func StartPgBouncer(opts PgBouncerOptions) (*PgBouncer, error) {
	if opts.Cluster == nil {
		return nil, errors.New("localpg: PgBouncerOptions.Cluster is required")
	}
	c := opts.Cluster
	if opts.Database == "" {
		opts.Database = c.Database()
	}
	if opts.User == "" {
		opts.User, opts.Password = c.User(), c.Password()
	}
	if opts.PoolMode == "" {
		opts.PoolMode = "transaction"
	}
	if opts.PoolSize == 0 {
		opts.PoolSize = 20
	}
	if opts.MaxClientConn == 0 {
		opts.MaxClientConn = 1000
	}
	if opts.AuthType == "" {
		opts.AuthType = "scram-sha-256"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	bin, err := pgbouncerBin()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}
	dir, err := newInstanceDir(acct, "pgbouncer")
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{opts: opts, bin: bin, served: served{dir: dir}}
	register(b)
	if err := b.start(acct, bin); err != nil {
		b.Stop()
		return nil, err
	}
	return b, nil
}

// start writes the files and starts PgBouncer, retrying on another port
// when the chosen one was taken meanwhile.
func (b *PgBouncer) start(acct account, bin string) error {
	userlist := filepath.Join(b.dir, "userlist.txt")
	line := authFileQuote(b.opts.User) + " " + authFileQuote(b.opts.Password) + "\n"
	if err := os.WriteFile(userlist, []byte(line), 0o600); err != nil {
		return err
	}
	if err := acct.chown(userlist); err != nil {
		return err
	}
	ini := filepath.Join(b.dir, "pgbouncer.ini")
	b.mu.Lock()
	defer b.mu.Unlock()
	for attempt := 1; ; attempt++ {
		var err error
		if b.port, err = freePort(); err != nil {
			return err
		}
		if err := os.WriteFile(ini, []byte(b.ini(userlist)), 0o600); err != nil {
			return err
		}
		if err := acct.chown(ini); err != nil {
			return err
		}
		p, err := startProc(acct, b.dir, b.LogFile(), bin, ini)
		if err != nil {
			return err
		}
		raiseFileLimit(p.pid())
		err = p.waitReady(b.opts.StartTimeout, b.LogFile(), func() bool { return accepts(b.Addr()) })
		if err == nil {
			b.proc = p
			return nil
		}
		p.stop(syscall.SIGKILL, 0)
		if attempt == 5 || !portTaken(b.LogFile()) {
			return err
		}
	}
}

// ini returns pgbouncer.ini.
func (b *PgBouncer) ini(userlist string) string {
	c := b.opts.Cluster
	var s strings.Builder
	s.WriteString("; written by pgguard's internal/localpg\n[databases]\n")
	fmt.Fprintf(&s, "%s = host=%s port=%d dbname=%s\n", b.opts.Database, c.Host(), c.Port(), b.opts.Database)
	fmt.Fprintf(&s, "* = host=%s port=%d\n", c.Host(), c.Port())
	s.WriteString("\n[pgbouncer]\n")
	set := func(k string, v any) { fmt.Fprintf(&s, "%s = %v\n", k, v) }
	set("listen_addr", "127.0.0.1")
	set("listen_port", b.port)
	set("unix_socket_dir", "") // TCP on loopback only
	set("auth_type", b.opts.AuthType)
	set("auth_file", userlist)
	set("admin_users", b.opts.User)
	set("stats_users", b.opts.User)
	set("pool_mode", b.opts.PoolMode)
	set("default_pool_size", b.opts.PoolSize)
	set("max_client_conn", b.opts.MaxClientConn)
	set("ignore_startup_parameters", "extra_float_digits")
	keys := make([]string, 0, len(b.opts.Settings))
	for k := range b.opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, b.opts.Settings[k])
	}
	return s.String()
}

// authFileQuote quotes s for PgBouncer's auth_file: in double quotes, with
// each double quote doubled.
func authFileQuote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// accepts reports whether something accepts TCP connections at addr.
func accepts(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// Port returns PgBouncer's TCP port.
func (b *PgBouncer) Port() int { return b.port }

// Addr returns "127.0.0.1:PORT".
func (b *PgBouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// URL returns the postgres:// URL of database db through PgBouncer
// (PgBouncerOptions.Database when empty), password included, with
// sslmode=disable. Database "pgbouncer" is PgBouncer's admin console.
func (b *PgBouncer) URL(db string) string {
	if db == "" {
		db = b.opts.Database
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(b.opts.User, b.opts.Password), Host: b.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Pid returns PgBouncer's process id, or 0 once it has exited.
func (b *PgBouncer) Pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc == nil || b.proc.exited() {
		return 0
	}
	return b.proc.pid()
}

// Version returns the first line of `pgbouncer --version` ("PgBouncer
// 1.25.2"), or the binary's path if it does not answer.
func (b *PgBouncer) Version() string {
	out, err := exec.Command(b.bin, "--version").Output()
	if err != nil {
		return b.bin
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// Dir returns the directory with pgbouncer.ini, the auth file and the log.
func (b *PgBouncer) Dir() string { return b.dir }

// LogFile returns the path of PgBouncer's log.
func (b *PgBouncer) LogFile() string { return filepath.Join(b.dir, "pgbouncer.log") }

// Stop shuts PgBouncer down (SIGTERM: immediate) and removes its directory.
// It is idempotent and safe after a failed start.
func (b *PgBouncer) Stop() error { return b.stopAndRemove(b, syscall.SIGTERM, 5*time.Second) }
