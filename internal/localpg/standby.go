package localpg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// StartStandby starts a streaming replica of c: a base backup taken with
// `pg_basebackup -R` (which writes primary_conninfo and standby.signal),
// started on a port of its own as a hot standby. settings go into its
// localpg.conf, e.g. recovery_min_apply_delay = "500ms" to make it lag.
// The standby has c's roles and databases; Stop removes it.
func (c *Cluster) StartStandby(settings map[string]string) (*Cluster, error) {
	dir, err := newInstanceDir(c.acct, "pg")
	if err != nil {
		return nil, err
	}
	opts := c.opts
	opts.Settings = settings
	s := &Cluster{opts: opts, binDir: c.binDir, acct: c.acct, served: served{dir: dir}}
	register(s)
	if err := s.initStandby(c); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Cluster) initStandby(primary *Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := s.dataDir()
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "pg_basebackup"),
		"-D", data, "-R", "-X", "stream", "-c", "fast",
		"-h", primary.Host(), "-p", strconv.Itoa(primary.Port()), "-U", "postgres")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.acct.cred}
	cmd.Env = append(os.Environ(), "PGPASSWORD=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_basebackup: %v: %s", err, out)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		var err error
		if s.port, err = freePort(); err != nil {
			return err
		}
		if err := s.writeFile(filepath.Join(data, "localpg.conf"), s.conf()); err != nil {
			return err
		}
		err = s.startLocked()
		if err == nil {
			return nil
		}
		if attempt == 5 || !portTaken(s.LogFile()) {
			return err
		}
	}
}

// Stopped reports whether the server is not running (StopImmediate, or a
// Restart under way).
func (c *Cluster) Stopped() bool { return c.Pid() == 0 }
