package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=require":     "postgres://u:****@h:5432/db?sslmode=require",
		"postgresql://u@h/db":                               "postgresql://u@h/db",
		"postgres://h/db":                                   "postgres://h/db",
		"postgres://u:p@ss/w@rd@h/db":                       "postgres://u:****@h/db",
		"postgres://u:secret@h:bad/db":                      "postgres://u:****@h:bad/db",
		"postgres://u@h/db?password=secret&sslmode=require": "postgres://u@h/db?password=****&sslmode=require",
		"postgres://u@h/db?sslpassword=secret":              "postgres://u@h/db?sslpassword=****",
		"redis://:secret@cache:6379/0":                      "redis://:****@cache:6379/0",
		"host=h user=u password=secret dbname=d":            "host=h user=u password=**** dbname=d",
		"host=h password='sec ret' dbname=d":                "host=h password=**** dbname=d",
		"":                                                  "",
		"not a url":                                         "not a url",
		"postgres://":                                       "postgres://",
		"postgres://@":                                      "postgres://@",
		"postgres://u:@h/db":                                "postgres://u:****@h/db",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMaskedHidesPasswords(t *testing.T) {
	p := writeConfig(t, `[databases.app]
primary = "postgres://app:url-secret-1@127.0.0.1:5432/app"
fallback = "postgres://app:url-secret-2@127.0.0.1:5433/app"

[[users]]
name = "app"
password = "user-secret-3"

[limiter]
redis_url = "redis://:url-secret-4@127.0.0.1:6379/0"
`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	before := c.clone()
	out := c.Masked()
	for _, secret := range []string{"url-secret-1", "url-secret-2", "user-secret-3", "url-secret-4"} {
		if strings.Contains(out, secret) {
			t.Errorf("Masked() contains %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		`"postgres://app:****@127.0.0.1:5432/app"`,
		`password = "****"`,
		`redis_url = "redis://:****@127.0.0.1:6379/0"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Masked() lacks %s:\n%s", want, out)
		}
	}
	// c is untouched.
	if changed, _ := Diff(before, c); len(changed) != 0 {
		t.Errorf("Masked changed %v", changed)
	}
	if c.Users[0].Password != "user-secret-3" || !strings.Contains(c.Databases["app"].Primary, "url-secret-1") {
		t.Error("Masked mutated the Config")
	}
	// The output is TOML that decodes back into a Config.
	var back Config
	if _, err := toml.Decode(out, &back); err != nil {
		t.Fatalf("Masked output does not decode: %v\n%s", err, out)
	}
	if back.Pool.WaitTimeout != c.Pool.WaitTimeout || back.Databases["app"] == nil {
		t.Errorf("round trip lost values: %+v", back)
	}
}

func TestMaskedDerivedUser(t *testing.T) {
	t.Chdir(t.TempDir())
	c, err := Load("", envMap(map[string]string{EnvPrimaryURL: testURL}))
	if err != nil {
		t.Fatal(err)
	}
	if out := c.Masked(); strings.Contains(out, "s3cret-pw") {
		t.Errorf("Masked() leaks the derived password:\n%s", out)
	}
}
