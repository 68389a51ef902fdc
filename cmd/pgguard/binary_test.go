package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The tests of pgguard run, the static binary and the image run the binary
// `make build` produces, built once per test run into buildDir.

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// pgguardBinary runs `make build BIN=...` once and returns the binary.
func pgguardBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if _, err := exec.LookPath("make"); err != nil {
			buildErr = fmt.Errorf("make: %w", err)
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "pgguard-bin-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "pgguard")
		cmd := exec.Command("make", "-C", "../..", "build", "BIN="+buildBin, "GO="+goTool())
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("make build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// goTool is the go command running this test, so make builds with the same
// toolchain.
func goTool() string {
	if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// requireTool skips the test, or fails it when CI is set, without tool.
func requireTool(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI (scripts/deps.sh installs it): %v", tool, err)
		}
		t.Skipf("no %s: %v", tool, err)
	}
	return p
}

// TestStaticBinary: `make build` links statically (file(1) says so and the
// binary has no dynamic section), and `pgguard version` names the version,
// the commit and the Go version.
func TestStaticBinary(t *testing.T) {
	bin := pgguardBinary(t)
	file := requireTool(t, "file")
	out, err := exec.Command(file, bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "statically linked") {
		t.Errorf("file %s: %s", bin, out)
	}
	if ldd, err := exec.Command("ldd", bin).CombinedOutput(); err == nil && !bytes.Contains(ldd, []byte("not a dynamic executable")) {
		t.Errorf("ldd lists shared libraries:\n%s", ldd)
	}
	v, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("pgguard %s (commit ", version)
	if head, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		want += strings.TrimSpace(string(head)) + ", go"
	}
	if !strings.HasPrefix(string(v), want) {
		t.Errorf("pgguard version: %q, want it to start with %q", v, want)
	}
	fi, _ := os.Stat(bin)
	t.Logf("%s: %.1f MiB; %s", filepath.Base(bin), float64(fi.Size())/(1<<20), strings.TrimSpace(string(v)))
}
