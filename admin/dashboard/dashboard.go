// Package dashboard is pgguard's live page: GET / on http_listen, one HTML
// page with its script and style embedded in the binary, which fetches
// GET /dashboard/state every 2 seconds and draws pools, kill switches, query
// shapes, applications and pollers, the Neon budget, leaked sessions and the
// last hour's charts. A sampler goroutine keeps that hour in a ring buffer,
// one point per Options.Interval, also served as JSON (GET /dashboard/history).
//
// Everything is read through the status APIs of the proxy, the query log and
// the limiter, and from pgguard's own metrics; nothing here is on a query's
// path. Authorization is the mounting server's job (package admin).
package dashboard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/pgguard/pgguard/cache"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// Options are a Dashboard's sources and sampling.
type Options struct {
	// Proxy and Metrics are reported on (required).
	Proxy   *proxy.Proxy
	Metrics *metrics.Metrics
	// QueryLog, when set, adds query shapes and their trends.
	QueryLog *querylog.Logger
	// Limiter, when set, adds applications, pollers, rules and the budget.
	Limiter *limiter.Limiter
	// Cache, when set with [[cache]] rules, adds the result cache's rules.
	Cache *cache.Cache
	// Fleet, when set with a Redis, adds the Fleet panel.
	Fleet *fleet.Fleet
	// Interval is the history's resolution (default 5 s); Window how much
	// history is kept (default 1 h).
	Interval, Window time.Duration
}

// Dashboard serves the live page and keeps its history. Create it with New;
// Close stops the sampler.
type Dashboard struct {
	o    Options
	s    *sampler
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// New starts sampling o's sources.
func New(o Options) *Dashboard {
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.Window <= 0 {
		o.Window = time.Hour
	}
	d := &Dashboard{
		o:    o,
		s:    newSampler(max(1, int(o.Window/o.Interval))),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	d.s.sample(d, time.Now()) // the baseline: the first point comes one interval later
	go d.run()
	return d
}

func (d *Dashboard) run() {
	defer close(d.done)
	t := time.NewTicker(d.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			d.s.sample(d, now)
		}
	}
}

// Close stops the sampler and waits for it.
func (d *Dashboard) Close() {
	d.once.Do(func() { close(d.stop) })
	<-d.done
}

// Page serves the HTML page, for GET /.
func (d *Dashboard) Page() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", csp)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		serveAsset(w, r, loadedAssets().page)
	})
}

// Assets serves the page's script and style under /dashboard/assets/.
// They are the same for everyone and hold no data.
func (d *Dashboard) Assets() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := loadedAssets().files[path.Base(r.URL.Path)]
		if a == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		serveAsset(w, r, a)
	})
}

// State serves everything the page shows, for GET /dashboard/state:
// the State document, whose history holds the points after ?since= (Unix
// milliseconds; all of them without it). switches lists the kill switches.
func (d *Dashboard) State(switches func() []Switch) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		since, ok := sinceParam(w, r)
		if !ok {
			return
		}
		var sw []Switch
		if switches != nil {
			sw = switches()
		}
		writeJSON(w, r, start, d.state(start, sw, since))
	})
}

// History serves the ring buffer as JSON for scripts, for
// GET /dashboard/history?since=MS: aggregate figures only, no query text,
// address or application name.
func (d *Dashboard) History() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		since, ok := sinceParam(w, r)
		if !ok {
			return
		}
		writeJSON(w, r, start, d.history(since))
	})
}

func sinceParam(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		http.Error(w, "since: want Unix milliseconds", http.StatusBadRequest)
		return 0, false
	}
	return n, true
}

// writeJSON encodes v, gzipped when the client accepts it, with the time
// spent since start (building and encoding) in a Server-Timing header.
func writeJSON(w http.ResponseWriter, r *http.Request, start time.Time, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body := buf.Bytes()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if acceptsGzip(r) && len(body) > 1024 {
		body = gzipped(body)
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Vary", "Accept-Encoding")
	h.Set("Server-Timing", fmt.Sprintf("build;dur=%.3f", float64(time.Since(start))/float64(time.Millisecond)))
	w.Write(body)
}

func acceptsGzip(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept-Encoding"), "gzip")
}

// gzipWriters reuses compressors: each holds about a megabyte of state.
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return zw
}}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	zw.Write(b)
	zw.Close()
	gzipWriters.Put(zw)
	return buf.Bytes()
}

// csp lets the page load only its own script and style and talk only to
// its own server; no page may frame it (its toggles).
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

//go:embed assets
var assetFS embed.FS

// asset is an embedded file, with its gzipped form and ETag computed once.
type asset struct {
	typ, etag string
	raw, gz   []byte
}

// loadedAssets returns the page and its files, read and gzipped on the
// first request: a pgguard nobody opens the dashboard of never pays for it.
var loadedAssets = sync.OnceValue(func() assetSet {
	return assetSet{
		page:  loadAsset("index.html"),
		files: map[string]*asset{"app.js": loadAsset("app.js"), "app.css": loadAsset("app.css")},
	}
})

// assetSet is the page and the files it loads, by name.
type assetSet struct {
	page  *asset
	files map[string]*asset
}

func loadAsset(name string) *asset {
	raw, err := assetFS.ReadFile("assets/" + name)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(raw)
	typ := map[string]string{".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}[path.Ext(name)]
	return &asset{typ: typ, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, raw: raw, gz: gzipped(raw)}
}

// serveAsset writes a, revalidated by ETag on every load (no-cache) so a
// new binary's page is never mixed with an old script.
func serveAsset(w http.ResponseWriter, r *http.Request, a *asset) {
	h := w.Header()
	h.Set("Content-Type", a.typ)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	h.Set("Vary", "Accept-Encoding")
	if r.Header.Get("If-None-Match") == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.raw
	if acceptsGzip(r) {
		body = a.gz
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}
