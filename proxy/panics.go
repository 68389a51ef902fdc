package proxy

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
)

// Panic isolation, as net/http does per connection: a panic in one
// connection's goroutine closes that connection (and the server or client
// linked to it), is logged with its stack and counted in
// pgguard_panics_total, and the process serves on.

// panicHook, when set (tests only), is called at the points named by where
// ("relay", "process", "replied": a request's last reply written, its
// server not yet settled) and may panic, or pause to widen a race.
var panicHook atomic.Pointer[func(where string)]

// testPanic calls panicHook, if set.
func testPanic(where string) {
	if h := panicHook.Load(); h != nil {
		(*h)(where)
	}
}

// recoverPanic is deferred at the top of every per-connection goroutine;
// side is "client" or "server", cleanup closes what the goroutine served.
func (p *Proxy) recoverPanic(side string, cleanup func()) {
	v := recover()
	if v == nil {
		return
	}
	p.metrics.Panics.WithLabelValues(side).Inc()
	p.log.Error("internal error: a connection's goroutine panicked; closing that connection, others go on",
		"side", side, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	func() {
		defer func() {
			if v := recover(); v != nil {
				p.log.Error("internal error: cleanup after a panic panicked too", "panic", fmt.Sprint(v))
			}
		}()
		cleanup()
	}()
}

// internalError is what a client hears when pgguard closes its connection
// after a panic.
func internalError() *Error {
	return fatalf(codeInternalError, "pgguard hit an internal error and closed this connection; other sessions go on, and the error is logged (pgguard_panics_total)")
}
