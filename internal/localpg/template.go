package localpg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// initdb takes seconds, so it runs once per PostgreSQL installation: its
// output is kept as a template under os.TempDir() and each cluster starts
// from a copy. A lock file guards building the template against concurrent
// test binaries; a "complete" marker tells a finished one from a crashed
// attempt and holds the entry count that every copy is checked against.
const (
	templatePrefix = dirPrefix + "template-"
	// templateRecipe names the initdb flags below; change it when they
	// change so that old templates are not reused.
	templateRecipe = "r2"
)

// templateMu serialises building templates within this process.
var templateMu sync.Mutex

// A template is a data directory made by initdb, to be copied.
type template struct {
	root    string // holds data/ and, once built, the "complete" marker
	entries int    // files and directories under data/ when it was built
}

func (t template) data() string     { return filepath.Join(t.root, "data") }
func (t template) marker() string   { return filepath.Join(t.root, "complete") }
func (t template) lockPath() string { return t.root + ".lock" }

// load reads the marker, which holds the version and the entry count.
func (t *template) load() bool {
	b, err := os.ReadFile(t.marker())
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 {
		return false
	}
	t.entries, err = strconv.Atoi(lines[1])
	return err == nil && t.entries > 0
}

// discard makes the next loadTemplate build the template again.
func (t template) discard() {
	if unlock, err := lockFile(t.lockPath(), time.Minute); err == nil {
		os.Remove(t.marker())
		unlock()
	}
}

// loadTemplate returns the template for binDir, building it when needed.
func loadTemplate(binDir string, acct account) (template, error) {
	version, err := pgVersion(binDir)
	if err != nil {
		return template{}, err
	}
	t := template{root: filepath.Join(os.TempDir(), templatePrefix+templateKey(binDir, version, acct))}
	if t.load() {
		return t, nil
	}

	templateMu.Lock()
	defer templateMu.Unlock()
	if err := acct.makeTraversable(os.TempDir()); err != nil {
		return template{}, err
	}
	unlock, err := lockFile(t.lockPath(), 5*time.Minute)
	if err != nil {
		return template{}, err
	}
	defer unlock()
	if t.load() {
		return t, nil // another process built it while we waited
	}
	if err := os.RemoveAll(t.root); err != nil {
		return template{}, err
	}
	if err := os.Mkdir(t.root, 0o755); err != nil {
		return template{}, err
	}
	if err := acct.chown(t.root); err != nil {
		return template{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"--pgdata="+t.data(), "--username=postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.Dir = t.root
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: acct.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(t.root)
		return template{}, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	t.entries = 0
	if err := filepath.WalkDir(t.data(), func(_ string, _ fs.DirEntry, err error) error {
		t.entries++
		return err
	}); err != nil {
		return template{}, err
	}
	if err := os.WriteFile(t.marker(), fmt.Appendf(nil, "%s\n%d\n", version, t.entries), 0o644); err != nil {
		return template{}, err
	}
	return t, nil
}

// copyTemplate copies the template for binDir to dst. A template that lost
// files (tmp cleaners delete old files one by one) is built again.
func copyTemplate(binDir, dst string, acct account) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var t template
		if t, err = loadTemplate(binDir, acct); err != nil {
			return err
		}
		var n int
		if n, err = copyTree(t.data(), dst, acct); err == nil && n == t.entries {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("template %s has %d entries, not %d", t.data(), n, t.entries)
		}
		os.RemoveAll(dst)
		t.discard()
	}
	return fmt.Errorf("copy template: %w", err)
}

// templateKey names a template after the PostgreSQL version, with a hash of
// everything that makes templates differ.
func templateKey(binDir, version string, acct account) string {
	h := fnv.New64a()
	uid := os.Geteuid()
	if acct.cred != nil {
		uid = int(acct.cred.Uid)
	}
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d", binDir, version, templateRecipe, uid)
	v := "pg"
	if f := strings.Fields(version); len(f) >= 3 {
		v = f[2] // "postgres (PostgreSQL) 15.20 ..."
	}
	return fmt.Sprintf("%s-%x", v, h.Sum64())
}

// lockFile takes an exclusive flock on path, waiting up to timeout, and
// returns the function that releases it.
func lockFile(path string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644) // flock needs no write access
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// copyTree copies the directory src to dst, which must not exist, keeping
// permissions and giving everything to acct. It returns how many entries
// it copied.
func copyTree(src, dst string, acct account) (int, error) {
	n := 0
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			err = os.Mkdir(target, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			var link string
			if link, err = os.Readlink(path); err == nil {
				err = os.Symlink(link, target)
			}
		case d.Type().IsRegular():
			err = copyFile(path, target, info.Mode().Perm())
		default:
			return nil // sockets, pipes: nothing a data directory needs
		}
		if err != nil {
			return err
		}
		return acct.chown(target)
	})
	return n, err
}

// copyFile copies one regular file; on Linux io.Copy uses copy_file_range.
func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
