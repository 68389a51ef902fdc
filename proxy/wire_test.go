package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/querylog"
)

func TestErrorFields(t *testing.T) {
	msg := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "FATAL", Code: "57P01", Message: "x"}
	b, _ := msg.Encode(nil)
	sev, code := errorFields(b[5:])
	if sev != "FATAL" || code != "57P01" {
		t.Fatalf("got %q %q", sev, code)
	}
	if sev, code := errorFields([]byte{'C', '1'}); sev != "" || code != "" {
		t.Fatal("unterminated field parsed")
	}
}

func TestZeroNumbers(t *testing.T) {
	for in, want := range map[string]string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;": "SELECT abalance FROM pgbench_accounts WHERE aid = 0;",
		"SELECT * FROM t2 WHERE x = $1 LIMIT 10":                  "SELECT * FROM t2 WHERE x = $1 LIMIT 0",
		"SELECT 1.25, 1e5, 'a 42', 00B0":                          "SELECT 1.0, 1e5, 'a 0', 00B0",
	} {
		if got := string(querylog.ZeroNumbers(nil, []byte(in))); got != want {
			t.Errorf("numbersToZero(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzNumbersToZero: for a SELECT, normalizing numbers never changes the
// read-only verdict (nor whether the text parses).
func FuzzNumbersToZero(f *testing.F) {
	for _, s := range []string{"SELECT 1", "SELECT * FROM t WHERE id = 42 FOR UPDATE", "SELECT set_config('x', '1', false)", "SELECT 1e5, t2.x FROM t2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if !startsWithSelect([]byte(sql)) {
			return
		}
		a := classifier.Classify(sql)
		b := classifier.ClassifyBytes(querylog.ZeroNumbers(nil, []byte(sql)))
		if a.Write != b.Write {
			t.Fatalf("%q: verdict %v, normalized %v", sql, a, b)
		}
	})
}

// TestNamedBindRewriteAllocs: translating a named Bind (pgbench -M prepared,
// pgx's default mode: every transaction) to the server's statement name
// allocates nothing once buffers are warm.
func TestNamedBindRewriteAllocs(t *testing.T) {
	c := &client{}
	st := newStmt(42, []byte("SELECT $1\x00\x00\x00"))
	c.setStmt("s1", st)
	b := &backend{}
	b.queue.popped = 1 // prepared by batch 0, answered
	b.stmts.add(st.key, 0)
	bind, _ := (&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("4711")}}).Encode(nil)
	w := rewriter{c: c, b: b, batch: 1}
	allocs := testing.AllocsPerRun(200, func() {
		w.out = w.out[:0]
		w.message(bind)
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per named Bind, want 0", allocs)
	}
	var got pgproto3.Bind
	if err := got.Decode(w.out[5:]); err != nil || got.PreparedStatement != st.name || string(got.Parameters[0]) != "4711" {
		t.Fatalf("rewritten Bind %+v %v, want statement %s", got, err, st.name)
	}
	if n := digits([]byte("4711")); n != 4711 || digits([]byte("x1")) != 0 {
		t.Fatalf("digits: %d", n)
	}
}
