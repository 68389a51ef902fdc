package config

import (
	"slices"
	"strings"
	"testing"
)

func TestReplicasFromFileAndEnv(t *testing.T) {
	p := writeConfig(t, `[databases.app]
primary = "postgres://app:pw@127.0.0.1:5432/app"
replicas = ["postgres://app:pw@127.0.0.1:5433/app"]
replica_reads = "read_only"

[[routes]]
name = "reports"
application_name = "reporting"
to = "replica"

[replica]
ryw_scope = "user"

[[users]]
name = "app"
password = "pw"
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.Databases["app"]
	if !slices.Equal(d.Replicas, []string{"postgres://app:pw@127.0.0.1:5433/app"}) || d.ReplicaReads != "read_only" ||
		len(c.Routes) != 1 || c.Routes[0].To != "replica" || c.Replica.RYWScope != "user" || c.Replica.PoolSize != 2 {
		t.Errorf("loaded %+v, routes %+v, replica %+v", d, c.Routes, c.Replica)
	}
	if m := c.Masked(); strings.Contains(m, ":pw@127.0.0.1:5433") {
		t.Errorf("a replica's password is not masked:\n%s", m)
	}

	// NEON_READ_REPLICA_URL: comma-separated, for the NEON_DATABASE_URL entry.
	c, err = Load(p, envMap(map[string]string{EnvPrimaryURL: "postgres://app:pw@ep-x.neon.tech/app",
		EnvReplicaURL: " postgres://app:pw@ep-r1.neon.tech/app, postgres://app:pw@ep-r2.neon.tech/app"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Databases["app"].Replicas; !slices.Equal(got, []string{"postgres://app:pw@ep-r1.neon.tech/app", "postgres://app:pw@ep-r2.neon.tech/app"}) {
		t.Errorf("replicas from %s = %q", EnvReplicaURL, got)
	}
	if o := c.Origin("databases.app.replicas"); o != EnvReplicaURL {
		t.Errorf("origin %q", o)
	}
	changed, restart := Diff(&Config{Databases: map[string]*Database{"app": {Replicas: []string{"a"}}}}, &Config{Databases: map[string]*Database{"app": {Replicas: []string{"b"}}}})
	if !slices.Contains(changed, "databases.app.replicas") || !slices.Contains(restart, "databases.app.replicas") {
		t.Errorf("diff of replicas: changed %v, restart %v", changed, restart)
	}
}

func TestReplicasValidateNamesTheKey(t *testing.T) {
	p := writeConfig(t, `[databases.app]
primary = "postgres://app:pw@127.0.0.1:5432/app"
replicas = ["mysql://nope"]
replica_reads = "sometimes"

[databases.other]
primary = "postgres://app:pw@127.0.0.1:5432/other"
replica_reads = "read_only"

[[routes]]
name = "r"
client_addr = "10.0.0.0/33"
to = "secondary"

[[routes]]
name = "r"
database = "nope"
to = "primary"

[replica]
pool_size = 0
ryw_scope = "tenant"
ryw_wait = "-1s"
max_lag_bytes = -1
max_lag = "-2s"

[[users]]
name = "app"
password = "pw"
`)
	_, err := Load(p, noEnv) // Load validates
	var keys []string
	for _, pr := range problemsOf(t, err) {
		keys = append(keys, pr.Key)
		if pr.Line == 0 {
			t.Errorf("%s: no line", pr)
		}
	}
	for _, want := range []string{"databases.app.replicas[0]", "databases.app.replica_reads", "databases.other.replica_reads",
		"routes[0].to", "routes[0].client_addr", "routes[1].name", "routes[1].database",
		"replica.pool_size", "replica.ryw_scope", "replica.ryw_wait", "replica.max_lag_bytes", "replica.max_lag"} {
		if !slices.Contains(keys, want) {
			t.Errorf("no problem for %s in %q", want, keys)
		}
	}
}
