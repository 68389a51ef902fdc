package proxy

import (
	"slices"
	"testing"
)

func TestListenOps(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want []listenOp // nil: not a LISTEN text
	}{
		{"LISTEN a", []listenOp{{channel: "a"}}},
		{"  listen \"Mixed Case\";", []listenOp{{channel: "Mixed Case"}}},
		{"LISTEN a; UNLISTEN b; UNLISTEN *", []listenOp{{channel: "a"}, {unlisten: true, channel: "b"}, {unlisten: true}}},
		{"unlisten *", []listenOp{{unlisten: true}}},
		{"LISTEN a; SELECT 1", nil}, // mixed: the server runs it
		{"SELECT 'LISTEN a'", nil},
		{"LISTEN", nil}, // a syntax error: the server reports it
		{"LISTENER", nil},
		{"-- c\nLISTEN a", nil}, // a comment first: left to the server
	} {
		ops, ok := listenOps([]byte(tc.sql + "\x00"))
		if ok != (tc.want != nil) || !slices.Equal(ops, tc.want) {
			t.Errorf("%q: %v %v, want %v", tc.sql, ops, ok, tc.want)
		}
	}
}

// BenchmarkListenScanOther is what the LISTEN check costs a Query and a
// Parse that are not one: the hot path's share of the listener.
func BenchmarkListenScanOther(b *testing.B) {
	c := &client{}
	q := appendQuery(nil, "SELECT id, name FROM users WHERE tenant_id = $1 AND active ORDER BY name LIMIT 50")
	p := []byte{'P', 0, 0, 0, 0}
	p = append(p, "stmt_1\x00SELECT id, name FROM users WHERE tenant_id = $1 AND active ORDER BY name LIMIT 50\x00\x00\x00"...)
	p = endMsg(p, 1)
	b.ReportAllocs()
	for b.Loop() {
		if c.mayListen(q[0], q[5:]) || c.mayListen(p[0], p[5:]) {
			b.Fatal("a SELECT is not a LISTEN")
		}
	}
}
