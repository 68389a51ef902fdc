package proxy

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/querylog"
)

// serverStream is a typical reply: RowDescription, DataRows, CommandComplete,
// a ParameterStatus, an ErrorResponse and ReadyForQuery.
func serverStream(t testing.TB) []byte {
	var b []byte
	var err error
	enc := func(m pgproto3.BackendMessage) {
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	enc(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a"), DataTypeOID: 23, DataTypeSize: 4}}})
	enc(&pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 300)}})
	enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
	enc(&pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"})
	enc(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
	enc(&pgproto3.ReadyForQuery{TxStatus: 'T'})
	return b
}

type seen struct {
	typ  byte
	body string
	end  int
}

func scanAll(data []byte, chunk int) []seen {
	var f frameReader
	var out []seen
	for off := 0; off < len(data); off += chunk {
		part := data[off:min(off+chunk, len(data))]
		base := off
		f.scan(part, func(typ byte, body []byte, end int) {
			out = append(out, seen{typ, string(body), base + end})
		})
	}
	return out
}

// TestFrameReaderChunking feeds the same stream in every chunk size from 1
// byte up: the inspected frames, their bodies and end offsets never change.
func TestFrameReaderChunking(t *testing.T) {
	data := serverStream(t)
	want := scanAll(data, len(data))
	if len(want) != 4 || want[0].typ != 'C' || want[1].typ != 'S' || want[2].typ != 'E' || want[3].typ != 'Z' {
		t.Fatalf("whole-buffer scan found %v", want)
	}
	if want[3].end != len(data) || want[3].body != "T" {
		t.Fatalf("ReadyForQuery at %d body %q", want[3].end, want[3].body)
	}
	for chunk := 1; chunk < len(data); chunk++ {
		got := scanAll(data, chunk)
		if len(got) != len(want) {
			t.Fatalf("chunk %d: %d frames, want %d", chunk, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("chunk %d frame %d: %+v, want %+v", chunk, i, got[i], want[i])
			}
		}
	}
}

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

func BenchmarkFrameReaderScan(b *testing.B) {
	data := serverStream(b)
	var f frameReader
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		f.scan(data, func(typ byte, body []byte, end int) { n++ })
	}
	if n == 0 {
		b.Fatal("nothing scanned")
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
	b := &backend{syncsDone: 1} // prepared by batch 0, answered
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
