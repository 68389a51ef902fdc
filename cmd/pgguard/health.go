package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/pgguard/pgguard/config"
)

// versionLine is what `pgguard version` prints, e.g.
// "pgguard 0.1.0-dev (commit 8e90b98c1a2b, go1.26.8)".
func versionLine() string {
	c := commit
	if c == "" {
		c = stampedCommit()
	}
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("pgguard %s (commit %s, %s)", version, c, runtime.Version())
}

// stampedCommit is the VCS revision Go stamped into the binary (12 hex
// digits, "-dirty" when the tree had changes), or "".
func stampedCommit() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	return rev
}

// health is `pgguard health`: GET /readyz on http_listen (of the config
// file and the environment, as the server reads them), exit 0 on 200 and 1
// otherwise. It is the image's HEALTHCHECK, which has no curl.
func health(path string, stdout, stderr io.Writer) int {
	addr := os.Getenv(config.EnvHTTPListen)
	if cfg, err := config.Load(path, os.Getenv); err == nil {
		addr = cfg.HTTPListen
	} else if addr == "" {
		addr = config.Default().HTTPListen
	}
	if addr == "" {
		fmt.Fprintln(stderr, "pgguard health: http_listen is empty, so there is no /readyz to ask")
		return 1
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "pgguard health: http_listen %q: %v\n", addr, err)
		return 1
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "pgguard health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "pgguard health: %s: %s %s\n", url, resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", url, strings.TrimSpace(string(body)))
	return 0
}
