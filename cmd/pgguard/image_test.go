package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
)

// imageUID is the user the image runs as (Dockerfile USER).
const imageUID = 65532

// podman runs podman on a storage of the test's own (vfs: no overlay mounts
// needed), so it touches nothing of the machine's.
type podman struct {
	t    *testing.T
	bin  string
	args []string
}

func (p podman) run(args ...string) string {
	p.t.Helper()
	cmd := exec.Command(p.bin, append(slices.Clone(p.args), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		p.t.Fatalf("podman %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// testCA makes a CA and a server certificate it signs for 127.0.0.1 and
// localhost; it returns the CA's PEM and the server's certificate and key.
func testCA(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgguard test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// TestImage builds the Dockerfile's final stage around the binary of `make
// build` (target prebuilt; FROM scratch, nothing to pull) with a CA bundle
// holding a test CA, checks the image's settings, mounts it, and runs
// pgguard from the image's root with chroot as the image's user, in front
// of a PostgreSQL that requires TLS with a certificate of that CA, reached
// with sslmode=verify-full. Containers cannot start on these machines; the
// chroot runs what a container would run. It also runs the image's
// HEALTHCHECK command, and shows that without the bundle verify-full fails.
func TestImage(t *testing.T) {
	localpg.Require(t, localpg.Available())
	pm := requireTool(t, "podman")
	requireTool(t, "psql")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the image test mounts an image and uses chroot: it needs root")
		}
		t.Skip("the image test mounts an image and uses chroot: it needs root")
	}
	bin := pgguardBinary(t)
	caPEM, certPEM, keyPEM := testCA(t)

	// PostgreSQL with TLS, and only TLS for the test user.
	pg, err := localpg.Start(localpg.Options{User: "tester", Password: "tester-pw", Database: "app",
		Files:    map[string][]byte{"server.crt": certPEM, "server.key": keyPEM},
		Settings: map[string]string{"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })

	// The build context: bin/pgguard and bin/ca-certificates.crt, the
	// machine's bundle plus the test CA.
	dir := t.TempDir()
	ctx := filepath.Join(dir, "context")
	os.MkdirAll(filepath.Join(ctx, "bin"), 0o755)
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctx, "bin", "pgguard"), exe, 0o755)
	bundle, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	os.WriteFile(filepath.Join(ctx, "bin", "ca-certificates.crt"), append(append(bundle, '\n'), caPEM...), 0o644)

	p := podman{t: t, bin: pm, args: []string{"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}}
	start := time.Now()
	p.run("build", "--quiet", "--format", "docker", "--target", "prebuilt", "-t", "pgguard-test", "-f", "../../Dockerfile", ctx)
	t.Logf("image built in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		exec.Command(pm, append(slices.Clone(p.args), "image", "unmount", "--all")...).Run()
		exec.Command(pm, append(slices.Clone(p.args), "rmi", "-f", "pgguard-test")...).Run()
	})

	var inspect []struct {
		Size   int64
		Config struct {
			User         string
			ExposedPorts map[string]any
			Env          []string
			Entrypoint   []string
		}
		Healthcheck struct{ Test []string }
	}
	if err := json.Unmarshal([]byte(p.run("image", "inspect", "pgguard-test")), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("image inspect: %v", err)
	}
	img := inspect[0]
	_, has6432 := img.Config.ExposedPorts["6432/tcp"]
	_, has9187 := img.Config.ExposedPorts["9187/tcp"]
	if img.Config.User != "65532:65532" || !has6432 || !has9187 || !slices.Equal(img.Config.Entrypoint, []string{"/usr/local/bin/pgguard"}) ||
		!slices.Equal(img.Healthcheck.Test, []string{"CMD", "/usr/local/bin/pgguard", "health"}) {
		t.Errorf("image config: %+v, healthcheck %q", img.Config, img.Healthcheck.Test)
	}
	t.Logf("image size %.1f MiB (binary %.1f MiB)", float64(img.Size)/(1<<20), float64(len(exe))/(1<<20))

	root := strings.TrimSpace(p.run("image", "mount", "pgguard-test"))
	var files []string
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			files = append(files, rel)
		}
		return nil
	})
	if !slices.Equal(files, []string{"etc/ssl/certs/ca-certificates.crt", "usr/local/bin/pgguard"}) {
		t.Errorf("the image holds %q; want only the binary and the CA bundle", files)
	}

	// pgguard as the image runs it: its environment with free ports, the
	// primary over verify-full, chrooted, as user 65532.
	primary := "NEON_DATABASE_URL=postgres://tester:tester-pw@" + pg.Addr() + "/app?sslmode=verify-full"
	chrooted := func(extra []string, args ...string) (*exec.Cmd, *lockedBuffer, string) {
		listen, httpListen := freeOr("127.0.0.1:0"), freeOr("127.0.0.1:0")
		cmd := exec.Command("/usr/local/bin/pgguard", args...)
		cmd.Env = append(slices.Clone(img.Config.Env), "PGGUARD_LISTEN="+listen, "PGGUARD_HTTP_LISTEN="+httpListen, primary)
		cmd.Env = append(cmd.Env, extra...)
		cmd.Dir = "/"
		logs := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: imageUID, Gid: imageUID}}
		return cmd, logs, listen
	}
	serveChrooted := func(extra ...string) (*lockedBuffer, string, []string) {
		cmd, logs, listen := chrooted(extra)
		if err := cmd.Start(); err != nil {
			t.Fatalf("chroot %s /usr/local/bin/pgguard: %v", root, err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			if t.Failed() {
				t.Logf("pgguard in the image root:\n%s", logs)
			}
		})
		guardtest.WaitFor(t, "pgguard from the image to listen", func() bool { return strings.Contains(logs.String(), "pgguard listening") })
		return logs, listen, cmd.Env
	}

	logs, listen, env := serveChrooted()
	// The HEALTHCHECK command, in the same root and environment.
	hc := exec.Command("/usr/local/bin/pgguard", "health")
	hc.Env, hc.Dir = env, "/"
	hc.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: imageUID, Gid: imageUID}}
	if out, err := hc.CombinedOutput(); err != nil || !strings.Contains(string(out), "/readyz: ready") {
		t.Errorf("pgguard health (the image's HEALTHCHECK): %v\n%s", err, out)
	}

	cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, "postgres://tester:tester-pw@"+listen+"/app?sslmode=disable")
	if err != nil {
		t.Fatalf("connect through pgguard from the image: %v", err)
	}
	defer conn.Close(context.Background())
	var ssl bool
	var version string
	if err := conn.QueryRow(cctx, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version); err != nil {
		t.Fatalf("query through pgguard from the image: %v", err)
	}
	if !ssl {
		t.Error("pgguard's connection to PostgreSQL is not TLS")
	}
	out, err := exec.Command("psql", "postgres://tester:tester-pw@"+listen+"/app?sslmode=disable", "-Atc", "SELECT 'psql ok'").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "psql ok" {
		t.Errorf("psql through pgguard from the image: %v %s", err, out)
	}
	t.Logf("through the image's pgguard: upstream TLS %s, verify-full with the bundle's test CA", version)
	if strings.Contains(logs.String(), "tester-pw") {
		t.Error("pgguard's log shows the password")
	}

	// Without the bundle, verify-full refuses PostgreSQL's certificate.
	_, listen2, _ := serveChrooted("SSL_CERT_FILE=/nonexistent", "SSL_CERT_DIR=/nonexistent")
	_, err = pgx.Connect(cctx, "postgres://tester:tester-pw@"+listen2+"/app?sslmode=disable")
	if err == nil || !strings.Contains(err.Error(), "08006") || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA bundle: %v, want 08006 about the certificate", err)
	}
}
