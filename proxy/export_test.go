package proxy

// SetPanicHook makes the goroutines of connections call f at "relay" (a
// server's pump), "process" (a client's reader) and "replied" (a pump
// that has just written a request's last reply), for panic isolation and
// race tests; nil removes it.
func SetPanicHook(f func(where string)) {
	if f == nil {
		panicHook.Store(nil)
		return
	}
	panicHook.Store(&f)
}
