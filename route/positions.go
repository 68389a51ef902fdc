package route

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/internal/redislink"
)

// Positions are the read-your-writes positions: for each scope (a session,
// a user or an application of a database), the newest primary position its
// writes reached, and how many of its commits are still having theirs
// learned. Scopes other than sessions are shared through Redis when a link
// is given and up, so that a write through one instance is waited for by a
// read through another; with Redis down each instance knows its own writes.
type Positions struct {
	// TTL is how long a position is kept after its last write; past it
	// every replica has long replayed it.
	TTL  time.Duration
	Link *redislink.Link // nil: per instance

	mu      sync.Mutex
	local   map[string]*position
	sweptAt time.Time
}

type position struct {
	lsn     LSN
	pending int
	at      time.Time
}

// redisPrefix namespaces the keys in a Redis shared with the limiter and the cache.
const redisPrefix = "pgguard:ryw:"

// maxLSN sets KEYS[1] to max(its value, ARGV[1]) with a TTL of ARGV[2] ms.
var maxLSN = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then cur = new end
redis.call('SET', KEYS[1], string.format('%.0f', cur), 'PX', ARGV[2])
return 1`)

// Shared reports whether scope's position goes through Redis (it is not a
// session's: a session lives on one instance).
func Shared(scope string) bool { return len(scope) > 2 && scope[:2] != "s:" }

// Begin notes a commit of scope whose position is being learned.
func (p *Positions) Begin(scope string) {
	p.mu.Lock()
	e := p.entry(scope)
	e.pending++
	e.at = time.Now()
	p.mu.Unlock()
}

// Learned records scope's commit position (lsn 0: it could not be learned,
// and the scope's reads go to the primary until TTL passes) and ends a
// Begin. Shared scopes are written to Redis within the link's timeout.
func (p *Positions) Learned(scope string, lsn LSN) {
	unknown := lsn == 0
	p.mu.Lock()
	e := p.entry(scope)
	if e.pending > 0 {
		e.pending--
	}
	if unknown {
		lsn = ^LSN(0) >> 1 // no replica reaches it
	}
	e.lsn = max(e.lsn, lsn)
	e.at = time.Now()
	p.mu.Unlock()
	if l := p.Link; l != nil && Shared(scope) && l.Up.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), l.Timeout())
		err := maxLSN.Run(ctx, l.C, []string{redisPrefix + scope}, strconv.FormatUint(uint64(lsn), 10), p.TTL.Milliseconds()).Err()
		l.Failed(ctx, err)
		cancel()
	}
}

// Need returns the newest position of scope's writes and whether one of
// them is still being learned. A shared scope asks Redis too (one GET on
// the read's path) when the link is up.
func (p *Positions) Need(scope string) (lsn LSN, pending bool) {
	p.mu.Lock()
	if e := p.local[scope]; e != nil {
		if e.pending == 0 && time.Since(e.at) > p.TTL {
			delete(p.local, scope)
		} else {
			lsn, pending = e.lsn, e.pending > 0
		}
	}
	p.mu.Unlock()
	if l := p.Link; l != nil && Shared(scope) && l.Up.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), l.Timeout())
		v, err := l.C.Get(ctx, redisPrefix+scope).Uint64()
		switch {
		case err == nil:
			lsn = max(lsn, LSN(v))
		case err != redis.Nil:
			l.Failed(ctx, err)
		}
		cancel()
	}
	return lsn, pending
}

// entry returns scope's position, created if absent (mu held). Old ones
// are swept now and then, so the map holds only recent writers.
func (p *Positions) entry(scope string) *position {
	if p.local == nil {
		p.local = make(map[string]*position)
	}
	now := time.Now()
	if now.Sub(p.sweptAt) > p.TTL {
		p.sweptAt = now
		for k, e := range p.local {
			if e.pending == 0 && now.Sub(e.at) > p.TTL {
				delete(p.local, k)
			}
		}
	}
	e := p.local[scope]
	if e == nil {
		e = &position{}
		p.local[scope] = e
	}
	return e
}
