package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateInvalidValuesNameKeyAndLine(t *testing.T) {
	p := writeConfig(t, `listen = "localhost"
http_listen = "127.0.0.1:99999"
auth_method = "trust"
max_message_size = 10
log_level = "verbose"
tls_cert = "cert.pem"

[databases.pgguard]
primary = "postgres://a:pw@127.0.0.1/x"

[databases.nop]
fallback = "postgres://a:topsecret@h:bad/x"

[[users]]
name = "app"
password = "pw"

[[users]]
name = "app"

[admin]
users = ["root"]

[pool]
mode = "statement"
size = 0
max_overflow = -1
max_client_conn = 0
wait_timeout = "-5s"

[querylog]
max_shapes = 0

[failover]
failure_threshold = 0

[[limits]]
name = "x"
action = "drop"
client_addr = "10.0.0.0/33"
queries_per_minute = -1
max_connections = -2

[[limits]]
name = "x"

[limiter]
redis_url = "http://:redispw@h"

[budget]
on_exhausted = "panic"
alert_at = 1.5
compute_units = 0
monthly_cu_hours = -1
`)
	_, err := Load(p, noEnv)
	for _, want := range []string{
		":1: listen: \"localhost\" is not host:port",
		":2: http_listen: \"127.0.0.1:99999\" has port \"99999\"",
		":3: auth_method: \"trust\" is not accepted; want \"scram-sha-256\", \"md5\" or \"plain\"",
		":4: max_message_size: 10 is too small; want 1024 or more",
		":5: log_level: \"verbose\" is not accepted",
		":0: tls_key: is empty but the other of tls_cert/tls_key is set",
		":8: databases.pgguard: the name \"pgguard\" is reserved",
		":11: databases.nop.primary: is missing",
		":12: databases.nop.fallback: postgres://a:****@h:bad/x is not a valid connection URL",
		":19: users[1].name: \"app\" is already users[0]",
		":18: users[1].password: is missing",
		":22: admin.users: \"root\" is not a [[users]] name",
		":25: pool.mode: \"statement\" is not accepted; want \"transaction\" or \"session\"",
		":26: pool.size: 0 is too small; want 1 or more",
		":27: pool.max_overflow: -1 is too small; want 0 or more",
		":28: pool.max_client_conn: 0 is too small",
		":29: pool.wait_timeout: -5s is negative",
		":32: querylog.max_shapes: 0 is too small",
		":35: failover.failure_threshold: 0 is too small",
		":39: limits[0].action: \"drop\" is not accepted; want \"delay\" or \"reject\"",
		":40: limits[0].client_addr: \"10.0.0.0/33\" is neither an IP address nor a CIDR prefix",
		":41: limits[0].queries_per_minute: -1 is not accepted",
		":42: limits[0].max_connections: -2 is too small",
		":45: limits[1].name: \"x\" is already limits[0]",
		":44: limits[1]: the rule limits nothing",
		":48: limiter.redis_url: http://:****@h is not a Redis URL",
		":51: budget.on_exhausted: \"panic\" is not accepted",
		":52: budget.alert_at: 1.5 is not accepted",
		":53: budget.compute_units: 0 is not accepted",
		":54: budget.monthly_cu_hours: -1 is not accepted",
	} {
		hasProblem(t, err, p+want)
	}
	for _, secret := range []string{"topsecret", "redispw"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("password %q leaked:\n%v", secret, err)
		}
	}
}

func TestValidateProblemRendering(t *testing.T) {
	c := Default()
	c.Pool.Size = 0
	err := c.Validate()
	// A Config not built by Load is blamed on "defaults".
	hasProblem(t, err, "defaults:0: pool.size: 0 is too small; want 1 or more")
	hasProblem(t, err, "defaults:0: databases: no database is configured")
	e := &Error{Problems: []Problem{{File: "f", Line: 3, Key: "k", Reason: "r"}, {File: "f", Line: 1, Reason: "syntax"}}}
	if got := e.Error(); got != "f:3: k: r\nf:1: syntax" {
		t.Errorf("Error() = %q", got)
	}
}

func TestValidatePasswordsAgainstAuthMethod(t *testing.T) {
	const scram = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$" +
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	const md5 = "md5" + "0123456789abcdef0123456789abcdef"
	valid := func(method, password string) error {
		c := Default()
		c.Databases["app"] = &Database{Primary: "postgres://app@127.0.0.1/app"}
		c.AuthMethod = method
		c.Users = []User{{Name: "app", Password: password}}
		return c.Validate()
	}
	for _, ok := range []struct{ method, password string }{
		{"scram-sha-256", "plain"}, {"scram-sha-256", scram},
		{"md5", "plain"}, {"md5", md5},
		{"plain", "plain"}, {"plain", scram}, {"plain", md5},
	} {
		if err := valid(ok.method, ok.password); err != nil {
			t.Errorf("%s with %.20s: %v", ok.method, ok.password, err)
		}
	}
	hasProblem(t, valid("md5", scram), "defaults:0: users[0].password: a SCRAM-SHA-256 verifier cannot check md5 logins")
	hasProblem(t, valid("scram-sha-256", md5), "defaults:0: users[0].password: an md5 hash cannot check SCRAM-SHA-256 logins")
	hasProblem(t, valid("scram-sha-256", "SCRAM-SHA-256$garbage"), "defaults:0: users[0].password: looks like a SCRAM-SHA-256 verifier but is malformed")
}

func TestValidateTLSFiles(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.Databases["app"] = &Database{Primary: "postgres://app:pw@127.0.0.1/app"}
	c.Users = []User{{Name: "app", Password: "pw"}}
	c.TLSCert = filepath.Join(dir, "missing.pem")
	c.TLSKey = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(c.TLSKey, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	hasProblem(t, err, `defaults:0: tls_cert: cannot read "`+c.TLSCert+`"`)
	if err := os.WriteFile(c.TLSCert, []byte("not a cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	hasProblem(t, c.Validate(), "defaults:0: tls_cert: ")
}

func TestValidateFailoverAndBudgetRelations(t *testing.T) {
	c := Default()
	c.Databases["app"] = &Database{Primary: "postgres://app:pw@127.0.0.1/app"}
	c.Users = []User{{Name: "app", Password: "pw"}}
	c.Failover.ProbeInterval = D(time.Minute)
	c.Failover.ProbeMaxInterval = D(time.Second)
	c.Budget.OnExhausted = "fallback"
	err := c.Validate()
	hasProblem(t, err, "defaults:0: failover.probe_max_interval: 1s is below probe_interval")
	hasProblem(t, err, "defaults:0: budget.on_exhausted: \"fallback\" needs a database with a fallback URL")
	c.Failover.ProbeMaxInterval = D(time.Hour)
	c.Databases["app"].Fallback = "postgres://postgres@127.0.0.1/app"
	if err := c.Validate(); err != nil {
		t.Errorf("fixed config: %v", err)
	}
}

func TestValidateHTTPListenMayBeEmpty(t *testing.T) {
	p := writeConfig(t, "http_listen = \"\"\n"+minimal)
	if _, err := Load(p, noEnv); err != nil {
		t.Error(err)
	}
	p = writeConfig(t, "listen = \":6432\"\nhttp_listen = \":6432\"\n"+minimal)
	_, err := Load(p, noEnv)
	hasProblem(t, err, p+":2: http_listen: is the same address as listen")
}

func TestValidateAdminHTTPAuth(t *testing.T) {
	if c, err := Load(writeConfig(t, minimal), noEnv); err != nil || c.Admin.HTTPAuth != "auto" {
		t.Fatalf("default admin.http_auth: %v %v", c, err)
	}
	p := writeConfig(t, minimal+"\n[admin]\nhttp_auth = \"always\"\n")
	if c, err := Load(p, noEnv); err != nil || c.Admin.HTTPAuth != "always" {
		t.Fatalf("http_auth = always: %v", err)
	}
	p = writeConfig(t, minimal+"\n[admin]\nhttp_auth = \"never\"\n")
	_, err := Load(p, noEnv)
	hasProblem(t, err, p+":9: admin.http_auth: \"never\" is not accepted")
}

func TestValidateServerTCPSettings(t *testing.T) {
	check := func(f func(p *Pool)) error {
		c := Default()
		c.Databases["app"] = &Database{Primary: "postgres://app@127.0.0.1/app"}
		c.Users = []User{{Name: "app", Password: "pw"}}
		f(&c.Pool)
		return c.Validate()
	}
	if err := check(func(p *Pool) {}); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if err := check(func(p *Pool) {
		p.ServerTCPKeepaliveIdle, p.ServerTCPKeepaliveInterval, p.ServerTCPKeepaliveCount, p.ServerTCPUserTimeout = D(0), D(0), 0, D(0)
	}); err != nil {
		t.Fatalf("all off: %v", err)
	}
	hasProblem(t, check(func(p *Pool) { p.ServerTCPKeepaliveIdle = D(500 * time.Millisecond) }),
		"defaults:0: pool.server_tcp_keepalive_idle: 500ms is not accepted; want 0 (keepalive off) or 1s to 32767s")
	hasProblem(t, check(func(p *Pool) { p.ServerTCPKeepaliveInterval = D(10 * time.Hour) }),
		"defaults:0: pool.server_tcp_keepalive_interval: 10h0m0s is not accepted; want 0 (the OS default) or 1s to 32767s")
	hasProblem(t, check(func(p *Pool) { p.ServerTCPKeepaliveCount = 128 }),
		"defaults:0: pool.server_tcp_keepalive_count: 128 is not accepted; want 0 (the OS default) to 127")
	hasProblem(t, check(func(p *Pool) { p.ServerTCPUserTimeout = D(-time.Second) }),
		"defaults:0: pool.server_tcp_user_timeout: -1s is not accepted")
}

// A rule that only gives its clients a queue priority does something (the
// README's example for the web application).
func TestValidatePriorityOnlyLimit(t *testing.T) {
	p := writeConfig(t, minimal+"\n[[limits]]\nname = \"web\"\napplication_name = \"web\"\npriority = 10\n")
	if _, err := Load(p, noEnv); err != nil {
		t.Error(err)
	}
}
