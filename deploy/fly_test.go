package deploy

import (
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"

	"github.com/pgguard/pgguard/config"
)

// flyConfig is the part of a fly.toml these tests read.
type flyConfig struct {
	App         string            `toml:"app"`
	KillSignal  string            `toml:"kill_signal"`
	KillTimeout int               `toml:"kill_timeout"` // seconds
	Env         map[string]string `toml:"env"`
	Processes   map[string]string `toml:"processes"`
	Build       struct {
		Compose *struct {
			File string `toml:"file"`
		} `toml:"compose"`
	} `toml:"build"`
	Checks map[string]struct {
		Type string `toml:"type"`
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"checks"`
	Metrics struct {
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"metrics"`
}

// composeFile is compose.yml as flyctl reads it (internal/containerconfig):
// environment must be a map, the health check's test a command.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Build       any               `yaml:"build"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		DependsOn map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	} `yaml:"services"`
}

const (
	flyWrapper  = "fly/fly.toml"
	flyCompose  = "fly/fly.compose.toml"
	composeYML  = "fly/compose.yml"
	flyPgguard  = "fly/pgguard.toml"
	appDocker   = "fly/Dockerfile.app"
	imageDocker = "../Dockerfile"
	imageBinary = "/usr/local/bin/pgguard"
)

func readFly(t *testing.T, path string) flyConfig {
	t.Helper()
	var c flyConfig
	if _, err := toml.DecodeFile(path, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

// portOf is the port of a host:port listen address.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return port
}

// shutdownTimeout is pgguard's shutdown_timeout under deploy/fly/pgguard.toml.
func shutdownTimeout(t *testing.T) time.Duration {
	t.Helper()
	cfg, err := config.Load(flyPgguard, func(k string) string {
		if k == config.EnvPrimaryURL {
			return "postgres://app:pw@ep-x.eu-central-1.aws.neon.tech/neondb?sslmode=verify-full"
		}
		return ""
	})
	if err != nil {
		t.Fatalf("%s is not a valid pgguard config: %v", flyPgguard, err)
	}
	return cfg.ShutdownTimeout.Duration
}

// checkFlyCommon: a drain fits in kill_timeout, and Fly checks /readyz and
// scrapes /metrics on pgguard's HTTP port.
func checkFlyCommon(t *testing.T, path string, c flyConfig, httpPort string) {
	t.Helper()
	if c.KillSignal != "SIGTERM" && c.KillSignal != "SIGINT" {
		t.Errorf("%s: kill_signal %q; pgguard drains on SIGTERM or SIGINT", path, c.KillSignal)
	}
	if st := shutdownTimeout(t); time.Duration(c.KillTimeout)*time.Second <= st {
		t.Errorf("%s: kill_timeout = %d s is not above pgguard's shutdown_timeout %s", path, c.KillTimeout, st)
	}
	if strconv.Itoa(c.Metrics.Port) != httpPort || c.Metrics.Path != "/metrics" {
		t.Errorf("%s: [metrics] port %d path %q; want pgguard's %s and /metrics", path, c.Metrics.Port, c.Metrics.Path, httpPort)
	}
	ready := false
	for _, ch := range c.Checks {
		ready = ready || ch.Type == "http" && ch.Path == "/readyz" && strconv.Itoa(ch.Port) == httpPort
	}
	if !ready {
		t.Errorf("%s: no http check of /readyz on port %s", path, httpPort)
	}
}

// TestFlyWrapper checks fly.toml, pgguard.toml and Dockerfile.app of the
// wrapper shape.
func TestFlyWrapper(t *testing.T) {
	c := readFly(t, flyWrapper)
	httpListen := c.Env[config.EnvHTTPListen]
	if httpListen == "" {
		t.Fatalf("%s: [env] lacks %s, so Fly could not reach /metrics", flyWrapper, config.EnvHTTPListen)
	}
	if host, _, _ := net.SplitHostPort(httpListen); host != "::" && host != "0.0.0.0" {
		t.Errorf("%s: %s = %q listens where Fly's checks and scraper cannot reach", flyWrapper, config.EnvHTTPListen, httpListen)
	}
	checkFlyCommon(t, flyWrapper, c, portOf(t, httpListen))
	if _, ok := c.Env[config.EnvPrimaryURL]; ok {
		t.Errorf("%s: NEON_DATABASE_URL belongs in fly secrets, not [env]", flyWrapper)
	}
	if len(c.Processes) == 0 {
		t.Fatalf("%s: no [processes]", flyWrapper)
	}
	for name, cmd := range c.Processes {
		if !strings.HasPrefix(cmd, "pgguard run -- ") {
			t.Errorf("%s: process %s runs %q, not under `pgguard run -- `", flyWrapper, name, cmd)
		}
	}
	// The worker names itself as pgguard.toml's worker rule expects.
	cfg, _ := config.Load(flyPgguard, func(k string) string {
		if k == config.EnvPrimaryURL {
			return "postgres://app:pw@ep-x.eu-central-1.aws.neon.tech/neondb"
		}
		return ""
	})
	for _, l := range cfg.Limits {
		if l.Worker && !strings.Contains(c.Processes["worker"], "PGAPPNAME="+l.ApplicationName+" ") {
			t.Errorf("%s: the worker process does not set PGAPPNAME=%s, which the worker rule %q matches", flyWrapper, l.ApplicationName, l.Name)
		}
	}
	if c.Env["PGGUARD_CONFIG"] != "/etc/pgguard/pgguard.toml" {
		t.Errorf("%s: PGGUARD_CONFIG = %q", flyWrapper, c.Env["PGGUARD_CONFIG"])
	}

	app := read(t, appDocker)
	copyFrom := regexp.MustCompile(`(?m)^COPY --from=(\S+) ` + regexp.QuoteMeta(imageBinary) + ` ` + regexp.QuoteMeta(imageBinary) + `$`)
	m := copyFrom.FindStringSubmatch(app)
	if m == nil || !regexp.MustCompile(`(?m)^FROM \S+ AS `+regexp.QuoteMeta(m[1])+`$`).MatchString(app) {
		t.Errorf("%s: no COPY --from=<pgguard stage> %s", appDocker, imageBinary)
	}
	if !strings.Contains(app, "COPY deploy/fly/pgguard.toml /etc/pgguard/pgguard.toml") {
		t.Errorf("%s does not install pgguard.toml where PGGUARD_CONFIG points", appDocker)
	}
}

// TestFlyCompose checks the multi-container shape as flyctl reads it.
func TestFlyCompose(t *testing.T) {
	c := readFly(t, flyCompose)
	if c.Build.Compose == nil || "fly/"+c.Build.Compose.File != composeYML {
		t.Fatalf("%s: [build.compose] does not name compose.yml", flyCompose)
	}
	var f composeFile
	if err := yaml.Unmarshal([]byte(read(t, composeYML)), &f); err != nil {
		t.Fatalf("%s (as flyctl reads it): %v", composeYML, err)
	}
	pg, ok := f.Services["pgguard"]
	if !ok || pg.Image == "" || pg.Build != nil {
		t.Fatalf("%s: no pgguard service running an image", composeYML)
	}
	if pg.Healthcheck == nil || !slices.Equal(pg.Healthcheck.Test, []string{"CMD", imageBinary, "health"}) {
		t.Errorf("%s: pgguard's healthcheck is not `pgguard health` (GET /readyz)", composeYML)
	}
	if !strings.Contains(read(t, imageDocker), `CMD ["`+imageBinary+`", "health"]`) {
		t.Errorf("the image's HEALTHCHECK is not the compose file's")
	}
	httpListen := pg.Environment[config.EnvHTTPListen]
	if httpListen == "" {
		t.Fatalf("%s: pgguard's environment lacks %s", composeYML, config.EnvHTTPListen)
	}
	checkFlyCommon(t, flyCompose, c, portOf(t, httpListen))
	built := 0
	for name, s := range f.Services {
		if s.Build != nil {
			built++
			if d, ok := s.DependsOn["pgguard"]; !ok || d.Condition != "service_healthy" {
				t.Errorf("%s: %s does not wait for pgguard to be healthy", composeYML, name)
			}
		}
	}
	if built != 1 {
		t.Errorf("%s: %d services with build; fly deploy needs exactly one", composeYML, built)
	}
	if _, ok := pg.Environment[config.EnvPrimaryURL]; ok {
		t.Errorf("%s: NEON_DATABASE_URL belongs in fly secrets", composeYML)
	}
}

// TestImageDockerfile: the final stage is FROM scratch, runs as a non-root
// user, exposes both ports and puts the binary where the Fly files copy it.
func TestImageDockerfile(t *testing.T) {
	d := read(t, imageDocker)
	for _, want := range []string{"FROM scratch AS runtime", "USER 65532:65532", "EXPOSE 6432 9187",
		"HEALTHCHECK ", `ENTRYPOINT ["` + imageBinary + `"]`, "FROM runtime AS prebuilt",
		"COPY bin/pgguard " + imageBinary, "COPY --from=build /src/bin/pgguard " + imageBinary,
		"/etc/ssl/certs/ca-certificates.crt"} {
		if !strings.Contains(d, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if _, err := os.Stat("../.dockerignore"); err != nil {
		t.Errorf(".dockerignore: %v", err)
	}
}
