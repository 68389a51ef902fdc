package querylog

import (
	"hash/maphash"
	"sync/atomic"
)

const (
	internSlots  = 4096 // power of two
	internMaxLen = 4096 // longer texts are not cached (at most 16 MiB held)
)

var internSeed = maphash.MakeSeed()

// internTable is a direct-mapped, lock-free cache of recent query texts:
// a hit is a hash, an atomic load and a compare.
type internTable struct {
	slots [internSlots]atomic.Pointer[string]
}

func (t *internTable) get(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > internMaxLen {
		return string(b)
	}
	p := &t.slots[maphash.Bytes(internSeed, b)&(internSlots-1)]
	if s := p.Load(); s != nil && *s == string(b) {
		return *s
	}
	s := string(b)
	p.Store(&s)
	return s
}

// Intern returns b as a string, without allocating when the same text was
// seen recently. It is safe for concurrent use and meant for the relay's hot
// path: the proxy interns each Query text instead of copying it. A nil
// Logger just copies.
func (l *Logger) Intern(b []byte) string {
	if l == nil {
		return string(b)
	}
	return l.intern.get(b)
}
