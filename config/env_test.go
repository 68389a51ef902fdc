package config

import (
	"strings"
	"testing"
)

func TestEnvDefaultsValidWithDatabaseURL(t *testing.T) {
	t.Chdir(t.TempDir())
	c, err := Load("", envMap(map[string]string{EnvPrimaryURL: testURL}))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Databases["neondb"]
	if len(c.Databases) != 1 || d == nil || d.Primary != testURL {
		t.Fatalf("databases = %v", c.Databases)
	}
	// The client login is derived from the URL's credentials.
	if len(c.Users) != 1 || c.Users[0] != (User{Name: "alice", Password: "s3cret-pw"}) {
		t.Errorf("derived users = %+v", c.Users)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	p := writeConfig(t, `listen = "127.0.0.1:6432"
read_only = true

[pool]
size = 3
max_overflow = 1
`+minimal)
	c, err := Load(p, envMap(map[string]string{
		EnvPrimaryURL:  testURL,
		EnvFallbackURL: "postgres://postgres@127.0.0.1:5432/app",
		EnvPoolSize:    "12",
		EnvMaxOverflow: " 0 ",
		EnvReadOnly:    "OFF",
		EnvListen:      "0.0.0.0:7000",
		EnvHTTPListen:  "0.0.0.0:7001",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool.Size != 12 || c.Pool.MaxOverflow != 0 {
		t.Errorf("pool = %+v", c.Pool)
	}
	if c.ReadOnly {
		t.Error("READ_ONLY_MODE=OFF did not win over read_only = true")
	}
	if c.Listen != "0.0.0.0:7000" || c.HTTPListen != "0.0.0.0:7001" {
		t.Errorf("listen %q http_listen %q", c.Listen, c.HTTPListen)
	}
	// The file's only database is "app"; the URL's "neondb" replaces its primary.
	d := c.Databases["app"]
	if len(c.Databases) != 1 || d.Primary != testURL || d.Fallback != "postgres://postgres@127.0.0.1:5432/app" {
		t.Errorf("databases = %+v", d)
	}
	// [[users]] are configured, so none are derived.
	if len(c.Users) != 1 || c.Users[0].Name != "app" {
		t.Errorf("users = %+v", c.Users)
	}
}

func TestEnvReadOnlyValues(t *testing.T) {
	for v, want := range map[string]bool{
		"true": true, "1": true, "On": true, "YES": true,
		"false": false, "0": false, "off": false, "No": false,
	} {
		c, err := Load(writeConfig(t, minimal), envMap(map[string]string{EnvReadOnly: v}))
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if c.ReadOnly != want {
			t.Errorf("READ_ONLY_MODE=%s: read_only = %v", v, c.ReadOnly)
		}
	}
	_, err := Load(writeConfig(t, minimal), envMap(map[string]string{EnvReadOnly: "maybe"}))
	hasProblem(t, err, "READ_ONLY_MODE:0: read_only: \"maybe\" is not a boolean")
}

func TestEnvBadIntegers(t *testing.T) {
	_, err := Load(writeConfig(t, minimal), envMap(map[string]string{EnvPoolSize: "eight", EnvMaxOverflow: "1.5"}))
	hasProblem(t, err, `DATABASE_POOL_SIZE:0: pool.size: "eight" is not an integer`)
	hasProblem(t, err, `DATABASE_MAX_OVERFLOW:0: pool.max_overflow: "1.5" is not an integer`)
	// A parsable but invalid value is blamed on the variable too.
	_, err = Load(writeConfig(t, minimal), envMap(map[string]string{EnvPoolSize: "0"}))
	hasProblem(t, err, "DATABASE_POOL_SIZE:0: pool.size: 0 is too small")
}

func TestEnvDatabaseTargeting(t *testing.T) {
	t.Run("only entry without primary", func(t *testing.T) {
		p := writeConfig(t, "[databases.app]\npool_size = 2\n")
		c, err := Load(p, envMap(map[string]string{EnvPrimaryURL: testURL}))
		if err != nil {
			t.Fatal(err)
		}
		if d := c.Databases["app"]; len(c.Databases) != 1 || d.Primary != testURL || d.PoolSize != 2 {
			t.Errorf("databases = %v", c.Databases)
		}
	})
	t.Run("entry named like the URL", func(t *testing.T) {
		p := writeConfig(t, `[databases.app]
primary = "postgres://app:pw@127.0.0.1/app"
[databases.neondb]
primary = "postgres://old:pw@127.0.0.1/neondb"
`)
		c, err := Load(p, envMap(map[string]string{EnvPrimaryURL: testURL}))
		if err != nil {
			t.Fatal(err)
		}
		if c.Databases["neondb"].Primary != testURL || c.Databases["app"].Primary != "postgres://app:pw@127.0.0.1/app" {
			t.Errorf("databases = %+v %+v", c.Databases["app"], c.Databases["neondb"])
		}
		// Users derive from both primaries, in name order.
		if len(c.Users) != 2 || c.Users[0].Name != "app" || c.Users[1].Name != "alice" {
			t.Errorf("users = %+v", c.Users)
		}
	})
	t.Run("several entries none matching", func(t *testing.T) {
		p := writeConfig(t, `[databases.a]
primary = "postgres://a:pw@127.0.0.1/a"
[databases.b]
primary = "postgres://b:pw@127.0.0.1/b"
`)
		_, err := Load(p, envMap(map[string]string{EnvPrimaryURL: testURL}))
		hasProblem(t, err, `NEON_DATABASE_URL:0: databases: the URL's database "neondb" is not one of the configured databases (a, b)`)
		_, err = Load(p, envMap(map[string]string{EnvFallbackURL: testURL}))
		hasProblem(t, err, "PGGUARD_FALLBACK_URL:0: databases: cannot tell which database")
	})
	t.Run("no dbname uses the user", func(t *testing.T) {
		t.Chdir(t.TempDir())
		c, err := Load("", envMap(map[string]string{EnvPrimaryURL: "postgres://bob:pw@127.0.0.1"}))
		if err != nil {
			t.Fatal(err)
		}
		if c.Databases["bob"] == nil {
			t.Errorf("databases = %v", c.Databases)
		}
	})
	t.Run("reserved name from env", func(t *testing.T) {
		t.Chdir(t.TempDir())
		_, err := Load("", envMap(map[string]string{EnvPrimaryURL: "postgres://bob:pw@127.0.0.1/pgguard"}))
		hasProblem(t, err, "NEON_DATABASE_URL:0: databases.pgguard: the name \"pgguard\" is reserved")
	})
}

func TestEnvBadURLIsBlamedOnVariableWithoutPassword(t *testing.T) {
	t.Chdir(t.TempDir())
	bad := "postgres://alice:hunter2hunter2@db.example.com:notaport/neondb"
	_, err := Load("", envMap(map[string]string{EnvPrimaryURL: bad}))
	hasProblem(t, err, "NEON_DATABASE_URL:0: databases.neondb.primary: postgres://alice:****@db.example.com:notaport/neondb is not a valid connection URL")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("password leaked: %v", err)
	}
}

func TestDerivedUsers(t *testing.T) {
	p := writeConfig(t, `[databases.a]
primary = "postgres://same:first@127.0.0.1/a"
[databases.b]
primary = "postgres://same:second@127.0.0.1/b"
[databases.c]
primary = "postgres://nopass@127.0.0.1/c"
[databases.d]
primary = "postgres://we%40ird:p%2Fw@127.0.0.1/d"
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := []User{{Name: "same", Password: "first"}, {Name: "we@ird", Password: "p/w"}}
	if len(c.Users) != len(want) || c.Users[0] != want[0] || c.Users[1] != want[1] {
		t.Errorf("users = %+v, want %+v", c.Users, want)
	}

	// No password anywhere: nobody could log in, which is an error.
	p = writeConfig(t, "[databases.c]\nprimary = \"postgres://nopass@127.0.0.1/c\"\n")
	_, err = Load(p, noEnv)
	hasProblem(t, err, p+":0: users: nobody can log in")
}
