package localpg

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dirPrefix starts the name of every directory this package makes in
// os.TempDir(); the reaper looks at no others.
const dirPrefix = "pgguard-localpg-"

// account is the OS user servers run as. PostgreSQL and PgBouncer refuse to
// run as root, so root runs them as the postgres user.
type account struct {
	cred *syscall.Credential // nil: run as this process's user
}

// serverAccount returns the postgres user when this process is root, else
// this process's own user.
func serverAccount() (account, error) {
	if os.Geteuid() != 0 {
		return account{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return account{}, fmt.Errorf("running as root needs an OS user %q to run servers as: %w", "postgres", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("user postgres: bad uid %q or gid %q", u.Uid, u.Gid)
	}
	return account{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}, nil
}

// chown gives path to the account; a no-op when running as ourselves.
func (a account) chown(path string) error {
	if a.cred == nil {
		return nil
	}
	return os.Lchown(path, int(a.cred.Uid), int(a.cred.Gid))
}

// chownTree gives everything under root to the account.
func (a account) chownTree(root string) error {
	if a.cred == nil {
		return nil
	}
	return filepath.WalkDir(root, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return a.chown(path)
	})
}

// makeTraversable lets other users pass through dir and its parents (o+x, not
// o+r), so that the postgres user reaches directories root made below them.
func (a account) makeTraversable(dir string) error {
	if a.cred == nil {
		return nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let the postgres user traverse %s: %w", dir, err)
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// newInstanceDir makes an empty directory for one server under os.TempDir(),
// owned by acct and stamped with this process as its owner for the reaper.
func newInstanceDir(acct account, kind string) (string, error) {
	reapOnce.Do(reap)
	if err := acct.makeTraversable(os.TempDir()); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(os.TempDir(), dirPrefix+kind+"-")
	if err != nil {
		return "", err
	}
	if err := writeStamp(filepath.Join(dir, "owner"), os.Getpid()); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := acct.chown(dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// A stamp names a process unambiguously: its pid and its start time, so a
// reused pid does not pass for a dead process.
type stamp struct {
	pid   int
	start uint64
}

// alive reports whether the stamped process is still running.
func (s stamp) alive() bool {
	start, err := procStartTime(s.pid)
	return err == nil && start == s.start
}

func writeStamp(path string, pid int) error {
	start, err := procStartTime(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(path, fmt.Appendf(nil, "%d %d\n", pid, start), 0o644)
}

func readStamp(path string) (stamp, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return stamp{}, err
	}
	var s stamp
	if _, err := fmt.Sscanf(string(b), "%d %d", &s.pid, &s.start); err != nil {
		return stamp{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

var reapOnce sync.Once

// reap removes the directories of servers whose owning process is gone and
// kills any server still running in them: the leftovers of a test binary
// that was killed before it could stop its servers.
func reap() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() && strings.HasPrefix(name, dirPrefix) && !strings.HasPrefix(name, templatePrefix) {
			reapDir(filepath.Join(os.TempDir(), name))
		}
	}
}

// reapDir removes dir unless its owner lives, and reports whether it did.
func reapDir(dir string) bool {
	if owner, err := readStamp(filepath.Join(dir, "owner")); err == nil {
		if owner.alive() {
			return false
		}
	} else if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < time.Minute {
		return false // possibly being made right now
	}
	if srv, err := readStamp(filepath.Join(dir, "server")); err == nil && srv.alive() {
		syscall.Kill(-srv.pid, syscall.SIGKILL) // its process group
		syscall.Kill(srv.pid, syscall.SIGKILL)
	}
	return os.RemoveAll(dir) == nil
}

// proc is one server process: a child of this process, leader of its own
// process group, killed by the kernel when this process dies.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // the result of Wait; read only after done is closed
}

// startProc runs name with args as acct in dir, with stdout and stderr
// appended to logPath, and records it as dir's server for the reaper.
func startProc(acct account, dir, logPath, name string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	if err := acct.chown(logPath); err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr(acct.cred)
	p := &proc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go p.run(started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(name), err)
	}
	if err := writeStamp(filepath.Join(dir, "server"), cmd.Process.Pid); err != nil {
		p.stop(syscall.SIGKILL, 0)
		return nil, err
	}
	return p, nil
}

// run starts the process and waits for it. It stays locked to its OS thread
// while the child runs: the kernel sends the parent-death signal when the
// thread that forked the child exits, not only when the whole process does.
func (p *proc) run(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := p.cmd.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	p.err = p.cmd.Wait()
	close(p.done)
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to grace for the process to exit, then kills
// its process group. It returns once the process is gone.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
	}
	if !p.exited() {
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		p.cmd.Process.Kill()
	}
	<-p.done
}

// waitReady polls ready until it returns true, the process exits or timeout
// passes; the errors quote the end of the log.
func (p *proc) waitReady(timeout time.Duration, logPath string, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		if ready() {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited during startup (%v); log %s ends:\n%s", filepath.Base(p.cmd.Path), p.err, logPath, logTail(logPath))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v; log %s ends:\n%s", filepath.Base(p.cmd.Path), timeout, logPath, logTail(logPath))
		}
		time.Sleep(delay)
	}
}

// logTail returns the last lines of the file at path.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	const n = 2048
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// errAddrInUse is reported by a server that lost the race for its port.
var errAddrInUse = errors.New("address already in use")

// portTaken reports whether the log at path says the port was taken, so the
// start can be retried on another one.
func portTaken(path string) bool {
	return strings.Contains(strings.ToLower(logTail(path)), errAddrInUse.Error())
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// childEnv is this process's environment without the variables that change
// how PostgreSQL tools behave, in the C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// served is what every throwaway server has: its process and its directory.
type served struct {
	dir     string
	mu      sync.Mutex // guards proc and removed; held through starts and stops
	proc    *proc      // nil while stopped
	removed bool       // Stop has run: the directory is gone
}

// stopAndRemove stops the process with sig (then SIGKILL after grace) and
// removes the directory; owner leaves the set Cleanup stops. Idempotent and
// safe after a failed start.
func (s *served) stopAndRemove(owner stopper, sig syscall.Signal, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	s.removed = true
	unregister(owner)
	if s.proc != nil {
		s.proc.stop(sig, grace)
		s.proc = nil
	}
	return os.RemoveAll(s.dir)
}
