package localpg

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeLeftover makes an instance directory as a dead test binary leaves it:
// owned by a process that is gone, with server as its running server.
func fakeLeftover(t *testing.T, server *exec.Cmd) string {
	t.Helper()
	dir, err := os.MkdirTemp(os.TempDir(), dirPrefix+"test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Our pid with another start time: a process that has since died.
	if err := os.WriteFile(filepath.Join(dir, "owner"), fmt.Appendf(nil, "%d %d\n", os.Getpid(), start+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if server != nil {
		if err := writeStamp(filepath.Join(dir, "server"), server.Process.Pid); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestReapKillsLeftoverServer(t *testing.T) {
	server := exec.Command("sleep", "60")
	server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer server.Process.Kill()
	dir := fakeLeftover(t, server)
	if !reapDir(dir) {
		t.Fatal("reapDir kept a dead owner's directory")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", dir, err)
	}
	done := make(chan error, 1)
	go func() { done <- server.Wait() }()
	select {
	case err := <-done:
		if ws, ok := server.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("server ended with %v, want SIGKILL", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("leftover server still runs")
	}
}

func TestReapKeepsLiveOwners(t *testing.T) {
	if reapDir(pg.Dir()) {
		t.Fatal("reapDir removed the directory of a running cluster")
	}
	if _, err := pg.QueryInt(testContext(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// A directory without an owner may be in the making: kept for a minute.
	dir, err := os.MkdirTemp(os.TempDir(), dirPrefix+"test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if reapDir(dir) {
		t.Error("reapDir removed a new directory without an owner")
	}
	old := time.Now().Add(-2 * time.Minute)
	os.Chtimes(dir, old, old)
	if !reapDir(dir) {
		t.Error("reapDir kept an old directory without an owner")
	}
}

// TestOrphanedClusterDies kills a test binary that runs a cluster, as
// `go test -timeout` does, and checks that the server dies with it and that
// its directory is reaped.
func TestOrphanedClusterDies(t *testing.T) {
	if os.Getenv("LOCALPG_ORPHAN_HELPER") != "" {
		fmt.Printf("cluster %d %s\n", pg.Pid(), pg.Dir())
		time.Sleep(time.Minute)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOrphanedClusterDies$")
	cmd.Env = append(os.Environ(), "LOCALPG_ORPHAN_HELPER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var pid int
	var dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "cluster %d %s", &pid, &dir); err == nil {
			break
		}
	}
	if pid == 0 || !strings.Contains(dir, dirPrefix) {
		t.Fatalf("helper did not report its cluster (%v)", sc.Err())
	}
	server, err := procStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for (stamp{pid, server}).alive() {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d outlived its killed parent", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !reapDir(dir) {
		t.Fatalf("reapDir kept %s", dir)
	}
}
