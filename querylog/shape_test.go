package querylog

import (
	"fmt"
	"strings"
	"testing"
)

func TestShape(t *testing.T) {
	fp1, n1 := Shape("SELECT * FROM users WHERE id = 1 AND name = 'bob'")
	fp2, n2 := Shape("SELECT * FROM users WHERE id = 2 AND name = 'alice'")
	fp3, _ := Shape("SELECT * FROM users WHERE email = 'x'")
	if fp1 != fp2 || n1 != n2 || n1 != "SELECT * FROM users WHERE id = $1 AND name = $2" {
		t.Fatalf("same shape: %x %q / %x %q", fp1, n1, fp2, n2)
	}
	if fp1 == fp3 {
		t.Fatal("different shapes share a fingerprint")
	}
	// Extended-protocol text keeps its $n; an IN list of any length is one shape.
	fpIn1, _ := Shape("SELECT * FROM t WHERE id IN ($1, $2)")
	fpIn2, _ := Shape("SELECT * FROM t WHERE id IN (1, 2, 3)")
	if fpIn1 != fpIn2 {
		t.Error("IN lists of different lengths are different shapes")
	}
	if _, n := Shape("ALTER ROLE app PASSWORD 'hunter2'"); strings.Contains(n, "hunter2") {
		t.Errorf("password in normalized text: %q", n)
	}
}

// TestShapeKeepsPositions: numbers the normalized text keeps (positions
// in ORDER BY and GROUP BY, type modifiers) are shown as written, although
// the cache shares one parse among texts that differ only in numbers.
func TestShapeKeepsPositions(t *testing.T) {
	for _, c := range []struct{ query, want string }{
		{"SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT 5", "SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT $1"},
		{"SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 1 DESC LIMIT 7", "SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 1 DESC LIMIT $1"},
		{"SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT 9", "SELECT a, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT $1"},
		{"SELECT 12::varchar(20)", "SELECT $1::varchar(20)"},
		{"SELECT 13::varchar(30)", "SELECT $1::varchar(30)"},
	} {
		if _, n := Shape(c.query); n != c.want {
			t.Errorf("%s: %q, want %q", c.query, n, c.want)
		}
	}
	// Numbers the normalized text drops still share one entry.
	z := func(q string) []byte { return ZeroNumbers(nil, []byte(q)) }
	shapes.shape(z("SELECT * FROM t WHERE id = 41"), "SELECT * FROM t WHERE id = 41")
	shapes.mu.Lock()
	e := shapes.m[string(z("SELECT * FROM t WHERE id = 42"))]
	shapes.mu.Unlock()
	if e == nil || e.info.exact {
		t.Errorf("a point read is not shared across ids: %+v", e)
	}
}

func TestShapeFallback(t *testing.T) {
	q1 := "SELEC * FROM t1 WHERE a = 'it''s secret' AND b = 42 AND c = $tag$x$tag$ AND d = $1"
	q2 := "SELEC  *\n FROM t1 WHERE a = 'other' AND b = 7.5e3 AND c = $tag$y$tag$ AND d = $2"
	fp1, n1 := Shape(q1)
	fp2, n2 := Shape(q2)
	want := "SELEC * FROM t1 WHERE a = ? AND b = ? AND c = ? AND d = ?"
	if n1 != want || n2 != want || fp1 != fp2 {
		t.Fatalf("fallback: %x %q / %x %q", fp1, n1, fp2, n2)
	}
	if info := shapes.shape([]byte(q1), q1); !info.fallback || len(info.hex) != 16 {
		t.Fatalf("info %+v", info)
	}
	if _, n := Shape("SELEC 'unterminated"); n != "SELEC ?" {
		t.Fatalf("unterminated: %q", n)
	}
}

func TestShapeCacheBounds(t *testing.T) {
	c := newShapeCache(10, 1<<20)
	for i := range 100 {
		q := fmt.Sprintf("SELECT c%d FROM t", i)
		c.shape([]byte(q), q)
	}
	if len(c.m) != 10 {
		t.Fatalf("cache holds %d entries, want 10", len(c.m))
	}
	if c.m["SELECT c99 FROM t"] == nil || c.m["SELECT c89 FROM t"] != nil {
		t.Fatal("not LRU")
	}
	c = newShapeCache(1000, 4096)
	for i := range 100 {
		q := fmt.Sprintf("SELECT c%d FROM t WHERE x = '%s'", i, strings.Repeat("y", 500))
		c.shape([]byte(q), q)
	}
	if c.bytes > 4096 || len(c.m) == 0 {
		t.Fatalf("cache holds %d bytes in %d entries, bound 4096", c.bytes, len(c.m))
	}
}

func BenchmarkShapeCached(b *testing.B) {
	q := "SELECT id, name, email FROM users WHERE org_id = 42 AND deleted_at IS NULL ORDER BY name LIMIT 50"
	Shape(q)
	b.ReportAllocs()
	for b.Loop() {
		Shape(q)
	}
}

func BenchmarkShapeUncached(b *testing.B) {
	q := "SELECT id, name, email FROM users WHERE org_id = 42 AND deleted_at IS NULL ORDER BY name LIMIT 50"
	b.ReportAllocs()
	for b.Loop() {
		parseShape(q)
	}
}
