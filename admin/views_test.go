package admin

import (
	"strings"
	"testing"
	"time"
)

func TestOneLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"SELECT 1", 10, "SELECT 1"},
		{"SELECT a,\n\tb\n  FROM t", 50, "SELECT a, b FROM t"},
		{"SELECT ééé FROM t", 10, "SELECT éé…"},
		{"  ", 5, ""},
	} {
		if got := oneLine(c.in, c.n); got != c.want {
			t.Errorf("oneLine(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
	if got := []rune(oneLine(strings.Repeat("x ", 1000), maxQueryText)); len(got) != maxQueryText {
		t.Errorf("long text cut to %d runes, want %d", len(got), maxQueryText)
	}
}

func TestRoundDur(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		1234567 * time.Microsecond / 10:       123 * time.Millisecond,
		61*time.Second + 400*time.Millisecond: 61 * time.Second,
		5*time.Hour + 29*time.Second:          5 * time.Hour,
	} {
		if got := roundDur(in); got != want {
			t.Errorf("roundDur(%s) = %s, want %s", in, got, want)
		}
	}
}
