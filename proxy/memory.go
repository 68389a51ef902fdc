package proxy

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memRelease hands memory back to the OS after a burst of logins. Each login
// leaves garbage (SCRAM state, buffers, the login goroutine's stack) that the
// GC frees into pages the runtime keeps while its heap goal allows, so the
// memory of a burst would stay resident for a fleet that then sits idle.
// Likewise the stacks of clients that park, and what the clients of a load
// that ends leave behind. When logins, parks and departures have stopped
// for releaseQuiet and the burst allocated at least releaseMin, the janitor
// runs debug.FreeOSMemory: one GC, then the free pages go back. Owned by
// the janitor.
type memRelease struct {
	conns     uint64    // connections accepted, clients parked and clients gone, at the last tick
	last      time.Time // when that count last changed
	burst     bool      // it changed since the last decision
	allocated uint64    // heap bytes allocated when the burst began
	sample    []metrics.Sample
}

const (
	releaseQuiet = time.Second
	releaseMin   = 4 << 20
)

// tick releases memory if a burst just ended; conns counts connections
// accepted, clients parked and clients gone so far.
func (r *memRelease) tick(now time.Time, conns uint64) {
	if r.due(now, conns, r.heapAllocated) {
		debug.FreeOSMemory()
	}
}

// due reports whether a burst of connections just ended having allocated at
// least releaseMin; allocated returns the heap bytes allocated so far.
func (r *memRelease) due(now time.Time, conns uint64, allocated func() uint64) bool {
	if conns != r.conns {
		if !r.burst {
			r.burst, r.allocated = true, allocated()
		}
		r.conns, r.last = conns, now
		return false
	}
	if !r.burst || now.Sub(r.last) < releaseQuiet {
		return false
	}
	r.burst = false
	return allocated()-r.allocated >= releaseMin
}

// heapAllocated returns the bytes allocated on the heap since the start.
func (r *memRelease) heapAllocated() uint64 {
	if r.sample == nil {
		r.sample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	}
	metrics.Read(r.sample)
	return r.sample[0].Value.Uint64()
}
