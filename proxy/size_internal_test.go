package proxy

import (
	"runtime"
	"testing"
	"unsafe"
)

// TestClientSizeClass guards what every idle session costs: a client is
// allocated in the runtime's 704-byte size class (its fields, plus the
// 8-byte header the runtime adds to objects over 512 bytes that hold
// pointers). The next class is 768 bytes: 64 more per session. A field
// added must pay for itself, or go in a struct allocated only when used
// (as clientCache is).
func TestClientSizeClass(t *testing.T) {
	const n = 4096
	keep := make([]*client, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keep {
		keep[i] = new(client)
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("client: %d bytes of fields, %d allocated per client", unsafe.Sizeof(client{}), per)
	if per > 704 {
		t.Errorf("a client takes %d bytes (%d of fields), over the 704-byte size class", per, unsafe.Sizeof(client{}))
	}
	runtime.KeepAlive(keep)
}
