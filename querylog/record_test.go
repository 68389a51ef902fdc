package querylog

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

func TestParamValues(t *testing.T) {
	got := fmt.Sprint(paramValues([][]byte{[]byte("a"), nil, {0xff, 0xad}, {}}))
	if got != `[a <nil> \xffad ]` {
		t.Fatalf("paramValues = %s", got)
	}
}

func TestSafeError(t *testing.T) {
	for _, c := range []struct{ state, in, want string }{
		{"22P02", `invalid input syntax for type integer: "abc"`, `invalid input syntax for type integer: "?"`},
		{"22003", `value "99999999999" is out of range for type integer`, `value "?" is out of range for type integer`},
		{"42601", `syntax error at or near "'secret'"`, `syntax error at or near "?"`},
		{"42P01", `relation "users" does not exist`, `relation "users" does not exist`},
		{"22012", `division by zero`, `division by zero`},
	} {
		if got := safeError(c.state, c.in); got != c.want {
			t.Errorf("safeError(%s, %q) = %q, want %q", c.state, c.in, got, c.want)
		}
	}
}

func TestIntern(t *testing.T) {
	var l Logger
	b := []byte("SELECT * FROM users WHERE id = $1")
	s1 := l.Intern(b)
	b2 := append([]byte(nil), b...)
	s2 := l.Intern(b2)
	if s1 != string(b) || unsafe.StringData(s1) != unsafe.StringData(s2) {
		t.Fatal("second Intern of the same text did not return the cached string")
	}
	b2[0] = 'X' // the caller reuses its buffer: the interned string must not change
	if s2 != string(b) || l.Intern(b2) != string(b2) {
		t.Fatal("interned string aliases the caller's buffer")
	}
	if n := testing.AllocsPerRun(100, func() { l.Intern(b) }); n != 0 {
		t.Fatalf("Intern hit allocates %v times", n)
	}
	long := []byte(strings.Repeat("x", internMaxLen+1))
	if l.Intern(long) != string(long) || l.Intern(nil) != "" {
		t.Fatal("long or empty text")
	}

	// Concurrent use with colliding and distinct texts returns the right text.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 20000 {
				q := []byte(fmt.Sprintf("SELECT %d", (i*7+g)%10000))
				if s := l.Intern(q); s != string(q) {
					t.Errorf("Intern(%q) = %q", q, s)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkIntern(b *testing.B) {
	var l Logger
	q := []byte("SELECT id, name, email FROM users WHERE org_id = $1 AND deleted_at IS NULL ORDER BY name LIMIT 50")
	l.Intern(q)
	b.ReportAllocs()
	for b.Loop() {
		l.Intern(q)
	}
}
