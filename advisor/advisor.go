// Package advisor tells the SRE what to change, from the traffic pgguard
// relays: which read shapes to cache (with the [[cache]] rule to paste),
// which N+1 loops the applications run, which applications keep the Neon
// compute awake on a schedule (with a [[limits]] rule), which shapes are
// slow, and how the pool is sized against what the traffic needed.
//
// Its input is the query log's records (querylog.Observer live, the JSON
// lines offline for `pgguard advise`), kept in a bounded ring of compact
// entries (48 bytes each); nothing is added to a query's path beyond the
// fields the proxy fills in every record. Advise replays the ring through
// models of the result cache, the limiter's token bucket and the budget's
// awake-time model, so each finding carries the savings it predicts.
// Findings never change behavior: applying one is an SRE's config change.
package advisor

import (
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgguard/pgguard/querylog"
)

// DefaultMaxRecords is the ring's size when Options.MaxRecords is 0: about
// 10 MiB, two days of the seeds' traffic (195,000 queries a day).
const DefaultMaxRecords = 200_000

const (
	maxShapes = 10_000 // shapes named; later ones are counted as "other"
	maxApps   = 1024
	maxDBs    = 256
)

// Entry is one finished query as the advisor reads it: a query log record
// with its shape.
type Entry struct {
	Time        time.Time
	Database    string
	Application string
	// Fingerprint and Query are the shape (querylog's fingerprint and
	// normalized text).
	Fingerprint uint64
	Query       string
	Duration    time.Duration
	Wait        time.Duration
	Rows        int64
	Tag         string
	Failed      bool
	// Hit: the result cache answered it. Primary: the primary ran it
	// (false for the fallback and for hits).
	Hit, Primary bool
	Client       uint32
	TxStatus     byte
	Args         uint64
}

// rec is an Entry in the ring.
type rec struct {
	t      int64  // start, Unix ns
	dur    uint32 // µs, saturating
	wait   uint32 // µs, saturating
	args   uint64
	rows   uint32
	shape  uint32 // index in Analyzer.shapes; 0 is "other shapes"
	client uint32
	app    uint16
	db     uint16
	flags  uint8
}

const (
	fInTx     = 1 << iota // TxStatus 'T' or 'E' after it
	fHit                  // answered by the result cache
	fFailed               // ended in an error
	fRollback             // tag ROLLBACK
	fPrimary              // ran on the primary
)

func (r *rec) start() time.Time { return time.Unix(0, r.t) }
func (r *rec) end() int64       { return r.t + int64(r.dur)*1e3 }
func (r *rec) has(f uint8) bool { return r.flags&f != 0 }

// Options size an Analyzer.
type Options struct {
	// MaxRecords bounds the ring (DefaultMaxRecords when 0); the findings
	// cover the queries it holds.
	MaxRecords int
}

// Analyzer keeps the recent queries and computes Advice from them. Observe
// is called by the query log's writer goroutine (or by ReadLog); Advise by
// any goroutine. Safe for concurrent use.
type Analyzer struct {
	mu       sync.Mutex
	ring     []rec
	capacity int  // the ring's bound
	next     int  // where the next record goes
	full     bool // the ring wrapped: records were overwritten
	seen     int64
	shapeIx  map[uint64]uint32
	shapes   []*shape // append-only; entries immutable but for their lazy analysis
	appIx    map[string]uint16
	apps     []string // append-only
	dbIx     map[string]uint16
	dbs      []string // append-only
}

// New returns an empty Analyzer.
func New(o Options) *Analyzer {
	n := o.MaxRecords
	if n <= 0 {
		n = DefaultMaxRecords
	}
	a := &Analyzer{
		ring:    make([]rec, 0, min(n, 4096)),
		shapeIx: map[uint64]uint32{},
		appIx:   map[string]uint16{},
		dbIx:    map[string]uint16{},
	}
	a.shapes = []*shape{{query: "(other shapes)", other: true}}
	a.apps = []string{"(other)"}
	a.dbs = []string{"(other)"}
	a.capacity = n
	return a
}

// Observe adds a query log record; it matches querylog.Observer.
func (a *Analyzer) Observe(r *querylog.Record, fingerprint uint64, normalized string) {
	a.Add(Entry{
		Time: r.Time, Database: r.Database, Application: r.Application,
		Fingerprint: fingerprint, Query: normalized,
		Duration: r.Duration, Wait: r.Wait, Rows: r.Rows, Tag: r.Tag,
		Failed: r.SQLState != "" || r.Error != "",
		Hit:    r.Cache == "hit", Primary: r.Cache == "" && r.Upstream == "primary",
		Client: r.Client, TxStatus: r.TxStatus, Args: r.Args,
	})
}

// Add records one query.
func (a *Analyzer) Add(e Entry) {
	r := rec{
		t: e.Time.UnixNano(), dur: micros(e.Duration), wait: micros(e.Wait), args: e.Args,
		rows: uint32(min(max(e.Rows, 0), 1<<32-1)), client: e.Client,
	}
	if e.TxStatus == 'T' || e.TxStatus == 'E' {
		r.flags |= fInTx
	}
	if e.Hit {
		r.flags |= fHit
	}
	if e.Failed {
		r.flags |= fFailed
	}
	if e.Primary {
		r.flags |= fPrimary
	}
	if e.Tag == "ROLLBACK" {
		r.flags |= fRollback
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	r.shape = a.shapeLocked(e.Fingerprint, e.Query)
	r.app = intern(&a.appIx, &a.apps, e.Application, maxApps)
	r.db = intern(&a.dbIx, &a.dbs, e.Database, maxDBs)
	a.seen++
	if len(a.ring) < a.capacity {
		if len(a.ring) == cap(a.ring) {
			// Grow by doubling but never past the bound (append's own
			// growth would overshoot it, memory a sidecar cannot spare).
			grown := make([]rec, len(a.ring), min(2*cap(a.ring), a.capacity))
			copy(grown, a.ring)
			a.ring = grown
		}
		a.ring = append(a.ring, r)
		return
	}
	a.ring[a.next] = r
	a.next = (a.next + 1) % len(a.ring)
	a.full = true
}

func micros(d time.Duration) uint32 {
	return uint32(min(max(d/time.Microsecond, 0), 1<<32-1))
}

func (a *Analyzer) shapeLocked(fp uint64, query string) uint32 {
	if i, ok := a.shapeIx[fp]; ok {
		return i
	}
	if len(a.shapes) >= maxShapes {
		return 0
	}
	i := uint32(len(a.shapes))
	a.shapes = append(a.shapes, &shape{fp: fp, query: strings.Clone(query)})
	a.shapeIx[fp] = i
	return i
}

func intern(ix *map[string]uint16, names *[]string, s string, limit int) uint16 {
	if i, ok := (*ix)[s]; ok {
		return i
	}
	if len(*names) >= limit {
		return 0
	}
	i := uint16(len(*names))
	*names = append(*names, strings.Clone(s))
	(*ix)[s] = i
	return i
}

// Len returns how many queries the ring holds, and how many were observed in all.
func (a *Analyzer) Len() (held int, seen int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ring), a.seen
}

// snapshot copies the ring in time order, with the name tables as of now.
func (a *Analyzer) snapshot() (recs []rec, shapes []*shape, apps, dbs []string, truncated bool) {
	a.mu.Lock()
	recs = make([]rec, 0, len(a.ring))
	recs = append(recs, a.ring[a.next:]...)
	recs = append(recs, a.ring[:a.next]...)
	shapes, apps, dbs, truncated = a.shapes, a.apps, a.dbs, a.full
	a.mu.Unlock()
	// Records from different connections arrive about in order; the
	// models need it exact.
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].t < recs[j].t })
	return recs, shapes, apps, dbs, truncated
}
