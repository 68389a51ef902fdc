package cache

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// reply builds the server's answer to a SELECT of rows one-column rows.
func reply(t testing.TB, rows ...string) []byte {
	t.Helper()
	msgs := []pgproto3.BackendMessage{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("name"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
	}}}
	for _, r := range rows {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte(r)}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte(fmt.Sprintf("SELECT %d", len(rows)))})
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func encodeMsg(t testing.TB, b []byte, m pgproto3.BackendMessage) []byte {
	t.Helper()
	b, err := m.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValidReply(t *testing.T) {
	good := reply(t, "a", "b")
	if !ValidReply(good, true) || !ValidReply(reply(t), true) {
		t.Fatal("a whole reply is invalid")
	}
	cc := encodeMsg(t, nil, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 0")})
	undescribed := good[bytes.IndexByte(good, 'D'):] // Bind/Execute without Describe
	if !ValidReply(undescribed, false) || !ValidReply(cc, false) {
		t.Fatal("a whole reply to an execution without Describe is invalid")
	}
	if ValidReply(good, false) {
		t.Error("a RowDescription nobody asked for is valid")
	}
	for name, b := range map[string][]byte{
		"empty":                  nil,
		"cut in the last header": good[:len(good)-3],
		"cut in a body":          good[:len(good)-1],
		"trailing byte":          append(append([]byte{}, good...), 'C'),
		"no RowDescription":      cc,
		"no CommandComplete":     good[:len(good)-len(cc)],
		"ReadyForQuery":          encodeMsg(t, append([]byte{}, good...), &pgproto3.ReadyForQuery{TxStatus: 'I'}),
		"ErrorResponse":          encodeMsg(t, reply(t, "a")[:len(reply(t, "a"))-len(cc)], &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "x"}),
		"PortalSuspended":        encodeMsg(t, reply(t, "a")[:len(reply(t, "a"))-len(cc)], &pgproto3.PortalSuspended{}),
		"two CommandCompletes":   append(append([]byte{}, good...), cc...),
		"length below 4":         {'T', 0, 0, 0, 3},
		"huge length":            {'T', 0x7f, 0xff, 0xff, 0xff, 0},
	} {
		if ValidReply(b, true) {
			t.Errorf("%s: valid", name)
		}
	}
}

func testEntry(t testing.TB) *entry {
	return &entry{
		digest:  [32]byte{1, 2, 3},
		expires: time.UnixMilli(1_800_000_000_123),
		fields:  []string{fieldEpoch, fieldReset, tableField("app", fieldAll), tableField("app", "tenant_branding")},
		gens:    []uint64{99, 0, 3, 1 << 40},
		reply:   reply(t, "acme", "globex"),
	}
}

func TestEntryRoundTrip(t *testing.T) {
	e := testEntry(t)
	got, ok := decodeEntry(e.encode(), e.digest)
	if !ok {
		t.Fatal("decode failed")
	}
	if got.digest != e.digest || !got.expires.Equal(e.expires) || !bytes.Equal(got.reply, e.reply) ||
		fmt.Sprint(got.fields) != fmt.Sprint(e.fields) || fmt.Sprint(got.gens) != fmt.Sprint(e.gens) {
		t.Errorf("round trip:\n%+v\n%+v", got, e)
	}
}

// Whatever Redis returns that is not exactly an entry for this key is a
// miss: garbage, a cut value, a flipped bit, another key's entry, another
// format version.
func TestEntryRejectsGarbage(t *testing.T) {
	e := testEntry(t)
	b := e.encode()
	if _, ok := decodeEntry(b, [32]byte{9}); ok {
		t.Error("another key's entry accepted")
	}
	for i := range b {
		for _, bit := range []byte{1, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			if _, ok := decodeEntry(c, e.digest); ok {
				t.Fatalf("bit %#x of byte %d flipped: accepted", bit, i)
			}
		}
	}
	for n := range len(b) {
		if _, ok := decodeEntry(b[:n], e.digest); ok {
			t.Fatalf("cut at %d: accepted", n)
		}
	}
	for _, g := range [][]byte{nil, []byte("garbage"), []byte("PGGC"), bytes.Repeat([]byte{0}, 200)} {
		if _, ok := decodeEntry(g, e.digest); ok {
			t.Errorf("%q accepted", g)
		}
	}
	// A well-formed entry whose reply is not a cacheable reply (checksum
	// and all): refused too.
	bad := testEntry(t)
	bad.reply = bad.reply[:len(bad.reply)-1]
	if _, ok := decodeEntry(bad.encode(), bad.digest); ok {
		t.Error("entry with a cut reply accepted")
	}
}

func TestEntryFresh(t *testing.T) {
	e := testEntry(t)
	now := e.expires.Add(-time.Second)
	if !e.fresh(now, e.fields, e.gens) {
		t.Fatal("not fresh")
	}
	moved := append([]uint64{}, e.gens...)
	moved[3]++
	if e.fresh(now, e.fields, moved) {
		t.Error("fresh after its table's generation moved")
	}
	if e.fresh(e.expires, e.fields, e.gens) {
		t.Error("fresh at its expiry")
	}
	if e.fresh(now, e.fields[:3], e.gens[:3]) {
		t.Error("fresh for other fields")
	}
}

func TestLRU(t *testing.T) {
	now := time.Unix(1000, 0)
	mk := func(i byte, n int) *entry {
		return &entry{digest: [32]byte{i}, expires: now.Add(time.Minute), reply: make([]byte, n)}
	}
	one := mk(0, 1000).size()
	l := newLRU(3 * one)
	for i := range byte(3) {
		l.put(mk(i, 1000))
	}
	l.get([32]byte{0}, now) // 0 is now the most recent; 1 the least
	l.put(mk(3, 1000))
	if l.get([32]byte{1}, now) != nil {
		t.Error("least recently used not evicted")
	}
	for _, i := range []byte{0, 2, 3} {
		if l.get([32]byte{i}, now) == nil {
			t.Errorf("entry %d evicted", i)
		}
	}
	if n, b, _ := l.stats(); n != 3 || b != 3*one {
		t.Errorf("stats %d entries %d bytes", n, b)
	}
	if l.get([32]byte{0}, now.Add(time.Minute)) != nil {
		t.Error("expired entry returned")
	}
	l.put(mk(4, 4*one)) // larger than the bound: not kept
	if l.get([32]byte{4}, now) != nil {
		t.Error("oversize entry kept")
	}
	l.resize(one)
	if n, b, _ := l.stats(); n != 1 || b != one {
		t.Errorf("after resize: %d entries %d bytes", n, b)
	}
	l.clear()
	if n, b, _ := l.stats(); n != 0 || b != 0 {
		t.Errorf("after clear: %d entries %d bytes", n, b)
	}
	l.resize(0)
	l.put(mk(5, 1))
	if l.get([32]byte{5}, now) != nil {
		t.Error("a zero-size LRU kept an entry")
	}
}
