package proxy

// SetPanicHook makes the goroutines of connections call f at "relay" (a
// server's pump) and "process" (a client's reader), for panic isolation
// tests; nil removes it.
func SetPanicHook(f func(where string)) {
	if f == nil {
		panicHook.Store(nil)
		return
	}
	panicHook.Store(&f)
}
