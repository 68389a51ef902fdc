package proxy

// DeferredSends reports how many sends queued without their goroutine
// waiting, and how many of those needed it woken (later.go).
func DeferredSends() (sends, wakes uint64) { return deferredSends.Load(), deferredWakes.Load() }
