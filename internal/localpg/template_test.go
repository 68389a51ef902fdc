package localpg

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDamagedTemplateIsRebuilt(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	binDir := BinDir()
	acct, err := serverAccount()
	if err != nil {
		t.Fatal(err)
	}
	version, err := pgVersion(binDir)
	if err != nil {
		t.Fatal(err)
	}
	// A template that lost files since it was built.
	tmpl := template{root: filepath.Join(os.TempDir(), templatePrefix+templateKey(binDir, version, acct))}
	if err := os.MkdirAll(tmpl.data(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmpl.data(), "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmpl.marker(), []byte(version+"\n900\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "data")
	if err := copyTemplate(binDir, dst, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "global", "pg_control")); err != nil {
		t.Fatalf("copy of the rebuilt template: %v", err)
	}
	var rebuilt template
	rebuilt.root = tmpl.root
	if !rebuilt.load() || rebuilt.entries < 100 {
		t.Fatalf("rebuilt template marker: %d entries", rebuilt.entries)
	}
}
