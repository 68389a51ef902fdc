package config

import (
	"fmt"
	"testing"
)

func TestScanKeys(t *testing.T) {
	text := `top = 1 # [not.a.table]
"quoted key" = 'x'
a . "b.c" = 2
s = """
[fake]
fake = 1
"""
l = '''
'''
arr = [
  1,
  "]", # comment
]

[t]
inline = { x = 1, y = { z = "}" } }

[[arr2]]
k = 1
[[arr2]]
k = 2
[arr2.sub]
q = 3

[u]
list = [ { n = 1 }, { n = 2 } ]
`
	want := map[string]int{
		"top":           1,
		`"quoted key"`:  2,
		`a."b.c"`:       3,
		"s":             4,
		"l":             8,
		"arr":           10,
		"t":             15,
		"t.inline":      16,
		"t.inline.x":    16,
		"t.inline.y.z":  16,
		"arr2[0]":       18,
		"arr2[0].k":     19,
		"arr2[1]":       20,
		"arr2[1].k":     21,
		"arr2[1].sub":   22,
		"arr2[1].sub.q": 23,
		"u.list[0].n":   26,
		"u.list[1].n":   26,
	}
	got := map[string]int{}
	for _, k := range scanKeys(text) {
		got[k.path] = k.line
	}
	for k, line := range want {
		if got[k] != line {
			t.Errorf("%s: line %d, want %d", k, got[k], line)
		}
	}
	for _, bogus := range []string{"fake", "s.fake"} {
		if _, ok := got[bogus]; ok {
			t.Errorf("key %q inside a string was scanned", bogus)
		}
	}
}

// TestScanKeysNeverPanics feeds every prefix of awkward text to the scanner.
func TestScanKeysNeverPanics(t *testing.T) {
	text := "a = \"x\\\"\n[[b]]\nc = { d = [ { e = '''\n''' } ] }\n[\"q\\\"\" . r]\ns = \"\"\"\\\"\"\"\"\"\n"
	for i := range len(text) + 1 {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("panic on %q: %v", text[:i], r)
				}
			}()
			scanKeys(text[:i])
		}()
	}
}

func TestParentKey(t *testing.T) {
	for k, want := range map[string]string{
		"users[1].name":           "users[1]",
		"users[1]":                "users",
		"users":                   "",
		`databases."a.b".primary`: `databases."a.b"`,
		`databases."a.b"`:         "databases",
		`databases."x\"y"`:        "databases",
	} {
		got, _ := parentKey(k)
		if got != want {
			t.Errorf("parentKey(%q) = %q, want %q", k, got, want)
		}
	}
}

func TestOriginWhere(t *testing.T) {
	o := newOrigin("f.toml")
	o.lines["databases.app"] = 3
	o.lines["databases.app.primary"] = 4
	o.env["databases.app.primary"] = EnvPrimaryURL
	for key, want := range map[string]string{
		"databases.app.primary":  "NEON_DATABASE_URL:0",
		"databases.app.fallback": "f.toml:3",
		"pool.size":              "f.toml:0",
	} {
		file, line := o.where(key)
		if got := fmt.Sprintf("%s:%d", file, line); got != want {
			t.Errorf("where(%q) = %s, want %s", key, got, want)
		}
	}
	if file, line := (*origin)(nil).where("x"); file != "defaults" || line != 0 {
		t.Errorf("nil origin: %s:%d", file, line)
	}
}

// FuzzScanKeys checks the scanner neither panics nor hangs on any input.
func FuzzScanKeys(f *testing.F) {
	f.Add("a = 1\n[b]\nc.d = { e = [ { f = '''x''' } ] }\n")
	f.Add("[[x]]\n\"q\" = \"\"\"\n\\\"\"\"\n")
	f.Fuzz(func(t *testing.T, text string) {
		for _, k := range scanKeys(text) {
			if k.line < 1 {
				t.Fatalf("line %d for %q", k.line, k.path)
			}
		}
	})
}
