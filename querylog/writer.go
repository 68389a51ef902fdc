package querylog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgguard/pgguard/config"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// queueSize bounds records waiting for the writer (about 2 MiB when
	// full, which only a writer that cannot keep up fills): the writer
	// drains the queue every drainEvery, so this holds 400,000 queries a
	// second.
	queueSize  = 1 << 13
	flushEvery = 100 * time.Millisecond
	bufSize    = 64 << 10
	// errorLogEvery rate-limits write-error warnings on the main log.
	errorLogEvery = time.Minute
)

// Logger is the query log: Log hands records to one writer goroutine over a
// bounded queue. All methods are safe for concurrent use; Log, Intern,
// Enabled and LogParameters are also safe on a nil *Logger.
type Logger struct {
	q         queue
	closed    atomic.Bool
	dropped   atomic.Uint64
	logParams atomic.Bool
	slow      atomic.Int64 // time.Duration; 0 disables slow warnings
	keyBuf    []byte       // shape cache key scratch, owned by the writer goroutine
	line      []byte       // a JSON line being written, owned by the writer goroutine

	stats    *Stats
	observer atomic.Pointer[Observer]
	main     *slog.Logger

	ctl     sync.Mutex // serializes Reopen, Reconfigure and Close
	mu      sync.Mutex // guards path and pending
	path    string
	pending *sink       // output for the writer to switch to (nil: none)
	swap    atomic.Bool // pending is set; checked by the writer before each record

	wake   chan struct{} // tells the writer a swap is pending; capacity 1
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when the writer returns
	err    error         // Close's result, set by the writer before exited

	// Owned by the writer goroutine.
	out       *sink
	lastFlush time.Time
	lastErr   time.Time

	intern internTable
}

// sink is one opened output.
type sink struct {
	f  *os.File // nil for stderr, which is never closed
	bw *bufio.Writer
	h  *slog.JSONHandler
}

// New starts a Logger for cfg. main receives slow-query warnings and write
// errors (nil discards them). Path "" keeps statistics without log lines.
func New(cfg config.QueryLog, main *slog.Logger) (*Logger, error) {
	return newLogger(cfg, main, queueSize)
}

func newLogger(cfg config.QueryLog, main *slog.Logger, maxQueued int) (*Logger, error) {
	out, err := openSink(cfg.Path)
	if err != nil {
		return nil, err
	}
	if main == nil {
		main = slog.New(slog.DiscardHandler)
	}
	l := &Logger{
		q:      queue{max: maxQueued},
		stats:  newStats(cfg.MaxShapes),
		main:   main,
		path:   cfg.Path,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		out:    out,
	}
	l.logParams.Store(cfg.LogParameters)
	l.slow.Store(int64(max(cfg.Slow.Duration, 0)))
	go l.run()
	return l, nil
}

func openSink(path string) (*sink, error) {
	var s sink
	switch path {
	case "":
		return nil, nil
	case "stderr":
		s.bw = bufio.NewWriterSize(os.Stderr, bufSize)
	default:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("querylog.path: %w", err)
		}
		s.f, s.bw = f, bufio.NewWriterSize(f, bufSize)
	}
	s.h = slog.NewJSONHandler(lineWriter{s.bw}, nil)
	return &s, nil
}

// lineWriter keeps each JSON line (one Write from the handler) whole in the
// buffer, so a flush never splits a line: stderr is shared with the main log.
type lineWriter struct{ bw *bufio.Writer }

func (w lineWriter) Write(p []byte) (int, error) {
	if len(p) > w.bw.Available() && w.bw.Buffered() > 0 {
		if err := w.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return w.bw.Write(p)
}

func (s *sink) close() error {
	if s == nil {
		return nil
	}
	err := s.bw.Flush()
	if s.f != nil {
		err = errors.Join(err, s.f.Close())
	}
	return err
}

// Log queues r for the writer and returns at once; when the queue is full
// (or the Logger closed) the record is dropped and counted. It never
// allocates.
func (l *Logger) Log(r Record) {
	if l == nil {
		return
	}
	if l.closed.Load() {
		l.dropped.Add(1)
		return
	}
	if !l.q.put(r) {
		l.dropped.Add(1)
	}
}

// Enabled reports whether Log accepts records (statistics are kept even
// when the log path is ""); false for a nil or closed Logger.
func (l *Logger) Enabled() bool { return l != nil && !l.closed.Load() }

// LogParameters reports whether records should carry Params (log_parameters).
func (l *Logger) LogParameters() bool { return l != nil && l.logParams.Load() }

// Dropped returns how many records were dropped because the queue was full
// (or the Logger closed).
func (l *Logger) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}

// Observer receives every record the writer handles, with its shape, on
// the writer goroutine (the advisor's input). It must return quickly and
// must not keep r.
type Observer func(r *Record, fingerprint uint64, normalized string)

// SetObserver installs o (nil removes it).
func (l *Logger) SetObserver(o Observer) {
	if o == nil {
		l.observer.Store(nil)
		return
	}
	l.observer.Store(&o)
}

// Stats returns the per-shape statistics.
func (l *Logger) Stats() *Stats { return l.stats }

// Handler serves the per-shape statistics; see Stats.Handler.
func (l *Logger) Handler() http.Handler { return l.stats.Handler() }

// Collectors returns pgguard_querylog_dropped_total and
// pgguard_querylog_shapes_evicted_total for the metrics registry.
func (l *Logger) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "pgguard_querylog_dropped_total",
			Help: "Query log records dropped because the writer's queue was full.",
		}, func() float64 { return float64(l.Dropped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "pgguard_querylog_shapes_evicted_total",
			Help: "Query shapes evicted from the statistics to respect querylog.max_shapes.",
		}, func() float64 { return float64(l.stats.Evicted()) }),
	}
}

// Reopen reopens the log file by its path, for logrotate after SIGHUP. The
// writer switches over without losing queued records.
func (l *Logger) Reopen() error {
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if l.closed.Load() {
		return errClosed
	}
	l.mu.Lock()
	path := l.path
	l.mu.Unlock()
	if path == "" || path == "stderr" {
		return nil
	}
	out, err := openSink(path)
	if err != nil {
		return err
	}
	l.setPending(path, out)
	return nil
}

// Reconfigure applies a new [querylog] table live: path, slow,
// log_parameters and max_shapes. When the new path cannot be opened nothing
// changes and the error is returned.
func (l *Logger) Reconfigure(cfg config.QueryLog) error {
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if l.closed.Load() {
		return errClosed
	}
	l.mu.Lock()
	changed := cfg.Path != l.path
	l.mu.Unlock()
	if changed {
		out, err := openSink(cfg.Path)
		if err != nil {
			return err
		}
		l.setPending(cfg.Path, out)
	}
	l.logParams.Store(cfg.LogParameters)
	l.slow.Store(int64(max(cfg.Slow.Duration, 0)))
	l.stats.SetMaxShapes(cfg.MaxShapes)
	return nil
}

// setPending hands out to the writer, replacing (and closing) any output
// it has not picked up yet.
func (l *Logger) setPending(path string, out *sink) {
	l.mu.Lock()
	old := l.pending
	l.path, l.pending = path, out
	l.swap.Store(true)
	l.mu.Unlock()
	old.close()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Close stops accepting records, writes those queued, flushes and closes
// the file. It waits for the writer, so it blocks while the output does.
func (l *Logger) Close() error {
	l.ctl.Lock()
	defer l.ctl.Unlock()
	if !l.closed.Swap(true) {
		close(l.done)
	}
	<-l.exited
	return l.err
}

var errClosed = errors.New("querylog: logger closed")

// queue hands records from Log to the writer: a slice that grows with the
// traffic, up to max records, and that the writer takes whole each pass.
// Unlike a channel sized for the worst case, it holds memory only for what
// the traffic queues, and gives a burst's back.
type queue struct {
	mu    sync.Mutex
	recs  []Record // queued
	spare []Record // the writer's last batch, emptied, for reuse
	max   int
}

// put queues r; false when max records wait already.
func (q *queue) put(r Record) bool {
	q.mu.Lock()
	ok := len(q.recs) < q.max
	if ok {
		q.recs = append(q.recs, r)
	}
	q.mu.Unlock()
	return ok
}

// take returns what is queued, for the writer, which hands it back to done.
func (q *queue) take() []Record {
	q.mu.Lock()
	b := q.recs
	q.recs, q.spare = q.spare, nil
	q.mu.Unlock()
	return b
}

// done takes back a batch written: emptied, it is reused, unless a burst
// made it far larger than the traffic now needs.
func (q *queue) done(b []Record) {
	clear(b)
	if cap(b) > 256 && len(b) < cap(b)/4 {
		b = nil
	}
	q.mu.Lock()
	q.spare = b[:0]
	q.mu.Unlock()
}

// len returns how many records wait.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs)
}

// run is the writer goroutine.
// run drains the queue on a ticker rather than blocking on it: a blocked
// receiver would be woken by every Log, costing the relay a goroutine
// wake-up (and often a thread wake-up) per query.
func (l *Logger) run() {
	defer close(l.exited)
	l.lastFlush = time.Now()
	tick := time.NewTicker(drainEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			batch := l.q.take()
			for i := range batch {
				if l.swap.Load() { // records logged after Reopen returned go to the new file
					l.applyPending()
				}
				l.write(&batch[i])
			}
			l.q.done(batch)
			l.flush()
		case <-l.wake:
			l.applyPending()
		case <-l.done:
			l.applyPending()
			for batch := l.q.take(); len(batch) > 0; batch = l.q.take() {
				for i := range batch {
					l.write(&batch[i])
				}
				l.q.done(batch)
			}
			l.err = l.out.close()
			return
		}
	}
}

// drainEvery is how often the writer empties the queue: at 10k queries a
// second that is a few hundred records a pass, far below the queue's size.
const drainEvery = 20 * time.Millisecond

func (l *Logger) applyPending() {
	l.mu.Lock()
	out, swap := l.pending, l.swap.Load()
	l.pending = nil
	l.swap.Store(false)
	l.mu.Unlock()
	if !swap {
		return
	}
	if err := l.out.close(); err != nil {
		l.writeError(err)
	}
	l.out = out
}

func (l *Logger) flush() {
	l.lastFlush = time.Now()
	if l.out == nil || l.out.bw.Buffered() == 0 {
		return
	}
	if err := l.out.bw.Flush(); err != nil {
		l.writeError(err)
		// A bufio.Writer stays failed after an error; drop what it holds and go on.
		if l.out.f != nil {
			l.out.bw.Reset(l.out.f)
		} else {
			l.out.bw.Reset(os.Stderr)
		}
	}
}

func (l *Logger) writeError(err error) {
	if now := time.Now(); now.Sub(l.lastErr) >= errorLogEvery {
		l.lastErr = now
		l.main.Warn("query log write failed; lines are lost until it recovers", "err", err)
	}
}

// write handles one record on the writer goroutine: shape, statistics, log
// line and slow-query warning.
func (l *Logger) write(r *Record) {
	l.keyBuf = ZeroNumbers(l.keyBuf[:0], []byte(r.Query))
	info := shapes.shape(l.keyBuf, r.Query)
	l.stats.add(&info, r)
	if o := l.observer.Load(); o != nil {
		(*o)(r, info.fp, info.norm)
	}
	slow := time.Duration(l.slow.Load())
	isSlow := slow > 0 && r.Duration > slow
	params := l.logParams.Load()
	if l.out == nil && !isSlow {
		return
	}
	errMsg := r.Error
	if errMsg != "" && !params {
		errMsg = safeError(r.SQLState, errMsg)
	}
	if l.out != nil && !params {
		l.line = appendLine(l.line[:0], r, &info, isSlow, errMsg)
		lineWriter{l.out.bw}.Write(l.line) // errors surface at flush
		if !isSlow {
			return
		}
	}
	level := slog.LevelInfo
	if isSlow {
		level = slog.LevelWarn
	}
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("database", r.Database),
		slog.String("user", r.User))
	attrs = appendNonEmpty(attrs, "application", r.Application)
	attrs = appendNonEmpty(attrs, "client_addr", r.ClientAddr)
	if r.Client != 0 {
		attrs = append(attrs, slog.Uint64("client", uint64(r.Client)))
	}
	attrs = appendNonEmpty(attrs, "upstream", r.Upstream)
	attrs = append(attrs,
		slog.String("fingerprint", info.hex),
		slog.String("query", info.norm),
		slog.Float64("duration_ms", ms(r.Duration)),
		slog.Float64("wait_ms", ms(r.Wait)),
		slog.Int64("rows", r.Rows))
	attrs = appendNonEmpty(attrs, "tag", r.Tag)
	attrs = appendNonEmpty(attrs, "sqlstate", r.SQLState)
	attrs = appendNonEmpty(attrs, "error", errMsg)
	if r.Extended {
		attrs = append(attrs, slog.Bool("extended", true))
	}
	attrs = appendNonEmpty(attrs, "cache", r.Cache)
	attrs = appendNonEmpty(attrs, "tx", r.txString())
	attrs = appendNonEmpty(attrs, "args", r.argsString())
	if isSlow {
		attrs = append(attrs, slog.Bool("slow", true))
	}
	if params {
		attrs = append(attrs, slog.String("raw", r.Query))
		if r.Params != nil {
			attrs = append(attrs, slog.Any("params", paramValues(r.Params)))
		}
		if l.out != nil {
			rec := slog.NewRecord(r.Time, level, "query", 0)
			rec.AddAttrs(attrs...)
			l.out.h.Handle(context.Background(), rec) // errors surface at flush
		}
	}
	if isSlow {
		l.main.LogAttrs(context.Background(), slog.LevelWarn, "slow query", attrs...)
	}
}

func appendNonEmpty(attrs []slog.Attr, key, v string) []slog.Attr {
	if v == "" {
		return attrs
	}
	return append(attrs, slog.String(key, v))
}

var _ io.Closer = (*Logger)(nil)
