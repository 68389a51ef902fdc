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

func TestShapeFallback(t *testing.T) {
	q1 := "SELEC * FROM t1 WHERE a = 'it''s secret' AND b = 42 AND c = $tag$x$tag$ AND d = $1"
	q2 := "SELEC  *\n FROM t1 WHERE a = 'other' AND b = 7.5e3 AND c = $tag$y$tag$ AND d = $2"
	fp1, n1 := Shape(q1)
	fp2, n2 := Shape(q2)
	want := "SELEC * FROM t1 WHERE a = ? AND b = ? AND c = ? AND d = ?"
	if n1 != want || n2 != want || fp1 != fp2 {
		t.Fatalf("fallback: %x %q / %x %q", fp1, n1, fp2, n2)
	}
	if info := shapes.get(q1); !info.fallback || len(info.hex) != 16 {
		t.Fatalf("info %+v", info)
	}
	if _, n := Shape("SELEC 'unterminated"); n != "SELEC ?" {
		t.Fatalf("unterminated: %q", n)
	}
}

func TestShapeCacheBounds(t *testing.T) {
	c := newShapeCache(10, 1<<20)
	for i := range 100 {
		c.get(fmt.Sprintf("SELECT c%d FROM t", i))
	}
	if len(c.m) != 10 {
		t.Fatalf("cache holds %d entries, want 10", len(c.m))
	}
	if c.m["SELECT c99 FROM t"] == nil || c.m["SELECT c89 FROM t"] != nil {
		t.Fatal("not LRU")
	}
	c = newShapeCache(1000, 4096)
	for i := range 100 {
		c.get(fmt.Sprintf("SELECT c%d FROM t WHERE x = '%s'", i, strings.Repeat("y", 500)))
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
