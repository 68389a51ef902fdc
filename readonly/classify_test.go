package readonly

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// statement is one row of testdata/statements.tsv.
type statement struct {
	line  int
	write bool
	sql   string
}

// loadStatements reads testdata/statements.tsv, the table shared with the
// proxy's integration test: "read" or "write", a tab, then the SQL with \n,
// \t and \\ escapes. Lines starting with # are comments.
func loadStatements(tb testing.TB) []statement {
	tb.Helper()
	f, err := os.Open("testdata/statements.tsv")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []statement
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		kind, esc, ok := strings.Cut(line, "\t")
		if !ok || (kind != "read" && kind != "write") {
			tb.Fatalf("statements.tsv:%d: want read|write, a tab, then SQL", n)
		}
		sql, err := unescape(esc)
		if err != nil {
			tb.Fatalf("statements.tsv:%d: %v", n, err)
		}
		out = append(out, statement{line: n, write: kind == "write", sql: sql})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// unescape undoes the \n, \t and \\ escapes of statements.tsv.
func unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i++; i == len(s) {
			return "", fmt.Errorf("trailing backslash")
		}
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		default:
			return "", fmt.Errorf("unknown escape \\%c", s[i])
		}
	}
	return b.String(), nil
}

func TestStatements(t *testing.T) {
	stmts := loadStatements(t)
	if len(stmts) < 100 {
		t.Fatalf("only %d statements", len(stmts))
	}
	c := New(1024)
	for _, s := range stmts {
		for pass := 0; pass < 2; pass++ { // second pass hits the cache
			v := c.Classify(s.sql)
			if v.Write != s.write {
				t.Errorf("statements.tsv:%d: %q: Write = %v (%q), want %v", s.line, s.sql, v.Write, v.Reason, s.write)
			}
			if v.Write && v.Reason == "" {
				t.Errorf("statements.tsv:%d: %q: write without a reason", s.line, s.sql)
			}
			if !v.Write && v.Reason != "" {
				t.Errorf("statements.tsv:%d: %q: read with reason %q", s.line, s.sql, v.Reason)
			}
			if vb := c.ClassifyBytes([]byte(s.sql)); vb != v {
				t.Errorf("statements.tsv:%d: ClassifyBytes = %+v, Classify = %+v", s.line, vb, v)
			}
		}
	}
}

func TestZeroCache(t *testing.T) {
	c := New(0)
	if v := c.Classify("DELETE FROM t"); !v.Write {
		t.Fatal("uncached classifier passed a DELETE")
	}
	if v := c.ClassifyBytes([]byte("SELECT 1")); v.Write {
		t.Fatalf("uncached classifier refused SELECT 1: %+v", v)
	}
}

func TestLongTextNotCached(t *testing.T) {
	c := New(16)
	long := "SELECT 1" + strings.Repeat(" ", MaxCachedLen)
	if v := c.Classify(long); v.Write {
		t.Fatalf("long SELECT refused: %+v", v)
	}
	if n := c.cache.Len(); n != 0 {
		t.Fatalf("long text cached: %d entries", n)
	}
}

func TestNoPanicOnOddInput(t *testing.T) {
	for _, s := range []string{"\x00", "SELECT 1\x00", "\xff\xfe", "SELECT '\xff'", strings.Repeat("(", 1<<16), strings.Repeat("SELECT 1;", 10000)} {
		v := classify(s)
		if !v.Write && strings.IndexByte(s, 0) >= 0 {
			t.Errorf("%.20q: text with NUL passed", s)
		}
	}
}

// FuzzClassify checks that Classify never panics, that a verdict is stable
// across calls and cache evictions, and that a read always parses.
func FuzzClassify(f *testing.F) {
	for _, s := range loadStatements(f) {
		f.Add(s.sql)
	}
	c := New(64) // small, so that fuzzing also exercises eviction
	f.Fuzz(func(t *testing.T, sql string) {
		v := c.Classify(sql)
		if v2 := c.Classify(sql); v2 != v {
			t.Fatalf("second call: %+v, first: %+v", v2, v)
		}
		if vb := c.ClassifyBytes([]byte(sql)); vb != v {
			t.Fatalf("ClassifyBytes: %+v, Classify: %+v", vb, v)
		}
		if vu := classify(sql); vu != v {
			t.Fatalf("uncached: %+v, cached: %+v", vu, v)
		}
		checkWalk(t, sql)
		if v.Write {
			if v.Reason == "" {
				t.Fatal("write without a reason")
			}
			return
		}
		if v.Reason != "" {
			t.Fatalf("read with reason %q", v.Reason)
		}
		if strings.IndexByte(sql, 0) >= 0 {
			t.Fatal("read with a NUL byte")
		}
		if _, err := pg_query.Parse(sql); err != nil {
			t.Fatalf("read but does not parse: %v", err)
		}
	})
}

func BenchmarkClassifyHit(b *testing.B) {
	c := New(1024)
	c.Classify(pgbenchUpdate)
	b.ReportAllocs()
	for b.Loop() {
		c.Classify(pgbenchUpdate)
	}
}

func BenchmarkClassifyBytesHit(b *testing.B) {
	c := New(1024)
	q := []byte(pgbenchUpdate)
	c.ClassifyBytes(q)
	b.ReportAllocs()
	for b.Loop() {
		c.ClassifyBytes(q)
	}
}

func BenchmarkClassifyHitParallel(b *testing.B) {
	c := New(4096)
	qs := pgbenchScript()
	for _, q := range qs {
		c.Classify(q)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			c.Classify(qs[i%len(qs)])
		}
	})
}

func BenchmarkClassifyMiss(b *testing.B) {
	for _, q := range []string{pgbenchSelect, pgbenchUpdate} {
		b.Run(strings.Fields(q)[0], func(b *testing.B) {
			c := New(0) // every call parses
			b.ReportAllocs()
			for b.Loop() {
				c.Classify(q)
			}
		})
	}
}

// BenchmarkParse is the parser's share of a miss.
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pg_query.Parse(pgbenchUpdate); err != nil {
			b.Fatal(err)
		}
	}
}

// Statements of pgbench's built-in TPC-B-like script.
const (
	pgbenchSelect = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
	pgbenchUpdate = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"
)

// pgbenchScript returns a set of distinct statements for parallel hits.
func pgbenchScript() []string {
	var qs []string
	for i := 0; i < 256; i++ {
		qs = append(qs, fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", i))
	}
	return qs
}

func TestClassifyConcurrent(t *testing.T) {
	stmts := loadStatements(t)
	c := New(64) // smaller than the table: hits, misses and evictions race
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3*len(stmts); i++ {
				s := stmts[(i*(g+1))%len(stmts)]
				v := c.Classify(s.sql)
				if g%2 == 1 {
					v = c.ClassifyBytes([]byte(s.sql))
				}
				if v.Write != s.write {
					t.Errorf("statements.tsv:%d: Write = %v", s.line, v.Write)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestCacheHitDoesNotAllocate(t *testing.T) {
	c := New(100)
	q := "SELECT 1"
	qb := []byte(pgbenchUpdate) // longer than the 32-byte stack buffer of string(b)
	c.Classify(q)
	c.ClassifyBytes(qb)
	if n := testing.AllocsPerRun(100, func() { c.Classify(q) }); n != 0 {
		t.Errorf("Classify hit: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { c.ClassifyBytes(qb) }); n != 0 {
		t.Errorf("ClassifyBytes hit: %v allocs", n)
	}
}
