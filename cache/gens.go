package cache

import (
	"slices"
	"sync"

	"github.com/pgguard/pgguard/cache/analyze"
)

// Targets are the tables a write changes (see analyze.Targets).
type Targets = analyze.Targets

// localGens are this instance's generations, used while the cache is per
// instance (no Redis, SUSPEND_REDIS, or Redis unreachable). Their epoch is
// random per process, so entries stored under Redis's generations never
// match them, nor they Redis's.
type localGens struct {
	mu    sync.Mutex
	epoch uint64
	m     map[string]uint64 // guarded by mu
}

func newLocalGens() *localGens { return &localGens{epoch: newEpoch(), m: map[string]uint64{}} }

// get returns the generations of fields.
func (g *localGens) get(fields []string) []uint64 {
	gens := make([]uint64, len(fields))
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, f := range fields {
		if f == fieldEpoch {
			gens[i] = g.epoch
		} else {
			gens[i] = g.m[f]
		}
	}
	return gens
}

// bump increments the generations of fields.
func (g *localGens) bump(fields []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range fields {
		g.m[f]++
	}
}

// maxPendingFields bounds the invalidations remembered while Redis is
// unreachable; past it, each database's are collapsed into one of all its
// tables.
const maxPendingFields = 10_000

// pending are the generation fields bumped while Redis was unreachable:
// written to Redis before the cache goes fleet-wide again, so that no
// instance answers an entry older than a write committed through this one.
type pending struct {
	mu     sync.Mutex
	fields map[string]string // field → its database ("" for reset); guarded by mu
}

func (p *pending) add(db string, fields []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fields == nil {
		p.fields = map[string]string{}
	}
	for _, f := range fields {
		p.fields[f] = db
	}
	if len(p.fields) > maxPendingFields {
		collapsed := map[string]string{}
		for f, db := range p.fields {
			if f == fieldReset {
				collapsed[f] = ""
			} else {
				collapsed[tableField(db, fieldAll)] = db
			}
		}
		p.fields = collapsed
	}
}

// take returns the fields and forgets them; put them back with add if they
// could not be written.
func (p *pending) take() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fields
	p.fields = nil
	return f
}

func (p *pending) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fields)
}

// Pending accumulates the tables a transaction writes, for Invalidate at its
// commit. The zero value is empty and ready; it is not safe for concurrent
// use (one per client session).
type Pending struct {
	all    bool
	tables []string
}

// Add records t.
func (p *Pending) Add(t Targets) {
	if p.all {
		return
	}
	if t.All {
		p.all, p.tables = true, p.tables[:0]
		return
	}
	for _, tb := range t.Tables {
		if !contains(p.tables, tb) {
			p.tables = append(p.tables, tb)
		}
	}
}

// Targets returns what was added since the last Reset.
func (p *Pending) Targets() Targets {
	if p.all {
		return Targets{All: true}
	}
	return Targets{Tables: p.tables}
}

// Empty reports whether nothing was added since the last Reset.
func (p *Pending) Empty() bool { return !p.all && len(p.tables) == 0 }

// Take returns what was added, as Targets of its own, and resets p.
func (p *Pending) Take() Targets {
	t := p.Targets()
	t.Tables = slices.Clone(t.Tables)
	p.Reset()
	return t
}

// Reset forgets everything added (a rollback, or after Invalidate).
func (p *Pending) Reset() { p.all, p.tables = false, p.tables[:0] }

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
