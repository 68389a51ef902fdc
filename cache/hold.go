package cache

import (
	"context"
	"sync"
	"sync/atomic"
)

// holds are the generation fields of writes whose outcome is unknown: a
// statement that was running when its server connection was lost may yet
// commit on the server. While a field is held no reply that depends on it
// is stored, so that no answer read before that commit can be served after
// it.
type holds struct {
	n      atomic.Int64 // fields held: Put's fast path reads only this
	mu     sync.Mutex
	fields map[string]int // field → holders; guarded by mu
}

func (h *holds) add(fields []string, delta int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fields == nil {
		h.fields = map[string]int{}
	}
	for _, f := range fields {
		h.fields[f] += delta
		if h.fields[f] <= 0 {
			delete(h.fields, f)
		}
	}
	h.n.Store(int64(len(h.fields)))
}

// any reports whether one of fields is held.
func (h *holds) any(fields []string) bool {
	if h.n.Load() == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range fields {
		if h.fields[f] > 0 {
			return true
		}
	}
	return false
}

// Hold is Invalidate for writes whose outcome is unknown (a statement
// running when its connection was lost, which may still commit on the
// server): their tables are invalidated now, no reply reading them is
// stored until release is called, and release invalidates them again.
// The caller releases once the statement can no longer commit (its
// backend cancelled or gone), within a bounded time.
func (c *Cache) Hold(ctx context.Context, db string, t Targets) (release func()) {
	if c == nil || t.Empty() || !c.Enabled() {
		return func() {}
	}
	fields := c.targetFields(db, t)
	c.held.add(fields, 1)
	c.Invalidate(ctx, db, t)
	var once sync.Once
	return func() {
		once.Do(func() {
			c.Invalidate(context.WithoutCancel(ctx), db, t)
			c.held.add(fields, -1)
		})
	}
}
