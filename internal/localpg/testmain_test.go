package localpg

import (
	"fmt"
	"testing"
)

// fakeTB records what Require did.
type fakeTB struct{ skipped, failed string }

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Skip(args ...any)  { f.skipped = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any) { f.failed = fmt.Sprint(args...) }

func TestRequire(t *testing.T) {
	missing := fmt.Errorf("pgbouncer not found")
	for _, tc := range []struct {
		ci          string
		err         error
		skip, fatal bool
	}{
		{"", nil, false, false},
		{"", missing, true, false},
		{"false", missing, true, false},
		{"true", missing, false, true},
		{"1", missing, false, true},
		{"true", nil, false, false},
	} {
		t.Setenv("CI", tc.ci)
		var f fakeTB
		Require(&f, tc.err)
		if (f.skipped != "") != tc.skip || (f.failed != "") != tc.fatal {
			t.Errorf("CI=%q err=%v: skipped %q, failed %q", tc.ci, tc.err, f.skipped, f.failed)
		}
	}
}

func TestAvailable(t *testing.T) {
	if err := Available(); err != nil {
		t.Fatal(err) // TestMain would have skipped
	}
	if BinDir() == "" {
		t.Fatal("BinDir() is empty")
	}
	t.Setenv("PG_BIN", t.TempDir())
	if err := Available(); err == nil {
		t.Error("Available() with an empty PG_BIN succeeded")
	}
	if BinDir() != "" {
		t.Errorf("BinDir() = %q with an empty PG_BIN", BinDir())
	}
}
