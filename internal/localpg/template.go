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
	"strings"
	"sync"
	"syscall"
	"time"
)

// initdb takes seconds, so it runs once per PostgreSQL installation: its
// output is kept as a template under os.TempDir() and each cluster starts
// from a copy. A lock file guards building the template against concurrent
// test binaries; a "complete" marker tells a finished one from a crashed
// attempt.
const (
	templatePrefix = dirPrefix + "template-"
	// templateRecipe names the initdb flags below; change it when they
	// change so that old templates are not reused.
	templateRecipe = "r1"
)

// templateMu serialises building templates within this process.
var templateMu sync.Mutex

// templateData returns the data directory of the template for binDir,
// building it when needed.
func templateData(binDir string, acct account) (string, error) {
	version, err := pgVersion(binDir)
	if err != nil {
		return "", err
	}
	root := filepath.Join(os.TempDir(), templatePrefix+templateKey(binDir, version, acct))
	data := filepath.Join(root, "data")
	complete := filepath.Join(root, "complete")
	if _, err := os.Stat(complete); err == nil {
		return data, nil
	}

	templateMu.Lock()
	defer templateMu.Unlock()
	if err := acct.makeTraversable(os.TempDir()); err != nil {
		return "", err
	}
	unlock, err := lockFile(root+".lock", 5*time.Minute)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(complete); err == nil {
		return data, nil // another process built it while we waited
	}
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	if err := acct.chown(root); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"--pgdata="+data, "--username=postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	cmd.Dir = root
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: acct.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(root)
		return "", fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if err := os.WriteFile(complete, []byte(version+"\n"), 0o644); err != nil {
		return "", err
	}
	return data, nil
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
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
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
// permissions and giving everything to acct.
func copyTree(src, dst string, acct account) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
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
