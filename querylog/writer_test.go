package querylog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a test reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// jsonLines parses one JSON object per line.
func jsonLines(t *testing.T, data string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func newTestLogger(t *testing.T, cfg config.QueryLog, main *slog.Logger) *Logger {
	t.Helper()
	l, err := New(cfg, main)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// mix logs a known workload and returns how many records it sent.
//   - 100 point selects, literals 1000..1099, 1..100 ms, one row each
//   - 10 updates with a secret e-mail, 5 of them failing with 40001
//   - 3 slow sleeps of 1.5 s
//   - 1 extended-protocol insert with parameters
func mix(l *Logger, start time.Time) int {
	base := Record{Time: start, Database: "app", User: "u", Application: "web", ClientAddr: "10.0.0.1:5555", Upstream: "primary"}
	n := 0
	for i := range 100 {
		r := base
		r.Query = fmt.Sprintf("SELECT * FROM users WHERE id = %d", 1000+i)
		r.Duration = time.Duration(i+1) * time.Millisecond
		r.Rows, r.Tag = 1, "SELECT 1"
		l.Log(r)
		n++
	}
	for i := range 10 {
		r := base
		r.Query = fmt.Sprintf("UPDATE accounts SET balance = balance - %d WHERE email = 'alice%d@example.com'", 987654321+i, i)
		r.Duration = 3 * time.Millisecond
		if i%2 == 0 {
			r.SQLState, r.Error = "40001", "could not serialize access due to concurrent update"
		} else {
			r.Rows, r.Tag = 1, "UPDATE 1"
		}
		l.Log(r)
		n++
	}
	for range 3 {
		r := base
		r.Query = "SELECT pg_sleep(1.23456789)"
		r.Duration = 1500 * time.Millisecond
		r.Wait = 20 * time.Millisecond
		r.Rows, r.Tag = 1, "SELECT 1"
		l.Log(r)
		n++
	}
	r := base
	r.Query = "INSERT INTO events (kind, payload, blob) VALUES ($1, $2, $3)"
	r.Params = [][]byte{[]byte("signup-secret-42"), nil, {0xff, 0x00}}
	r.Duration = 2 * time.Millisecond
	r.Rows, r.Tag, r.Extended = 1, "INSERT 0 1", true
	l.Log(r)
	return n + 1
}

var secrets = []string{"1000", "1099", "987654321", "alice", "example.com", "1.23456789", "signup-secret-42"}

func TestLogMix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.log")
	var mainBuf syncBuffer
	main := slog.New(slog.NewJSONHandler(&mainBuf, nil))
	l := newTestLogger(t, config.QueryLog{Path: path, Slow: config.D(500 * time.Millisecond), MaxShapes: 100}, main)

	start := time.Date(2026, 4, 9, 12, 0, 0, 0, time.UTC)
	n := mix(l, start)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data := readFile(t, path)
	lines := jsonLines(t, data)
	if len(lines) != n {
		t.Fatalf("got %d lines, want %d", len(lines), n)
	}
	for _, s := range secrets {
		if strings.Contains(data, s) {
			t.Errorf("log contains literal %q without log_parameters", s)
		}
	}

	byQuery := map[string][]map[string]any{}
	for _, m := range lines {
		q, _ := m["query"].(string)
		byQuery[q] = append(byQuery[q], m)
		if m["msg"] != "query" || m["database"] != "app" || m["user"] != "u" || m["upstream"] != "primary" {
			t.Fatalf("bad line %v", m)
		}
		if m["time"] != "2026-04-09T12:00:00Z" {
			t.Fatalf("time %v, want the record's start", m["time"])
		}
		if _, ok := m["raw"]; ok {
			t.Fatalf("raw without log_parameters: %v", m)
		}
	}
	sel := byQuery["SELECT * FROM users WHERE id = $1"]
	upd := byQuery["UPDATE accounts SET balance = balance - $1 WHERE email = $2"]
	slp := byQuery["SELECT pg_sleep($1)"]
	ins := byQuery["INSERT INTO events (kind, payload, blob) VALUES ($1, $2, $3)"]
	if len(sel) != 100 || len(upd) != 10 || len(slp) != 3 || len(ins) != 1 {
		t.Fatalf("lines per shape: %d %d %d %d; queries: %v", len(sel), len(upd), len(slp), len(ins), slices.Collect(mapKeys(byQuery)))
	}
	if sel[4]["duration_ms"] != 5.0 || sel[4]["rows"] != 1.0 || sel[4]["tag"] != "SELECT 1" || sel[4]["level"] != "INFO" {
		t.Errorf("select line: %v", sel[4])
	}
	if upd[0]["sqlstate"] != "40001" || upd[0]["error"] == nil {
		t.Errorf("error line: %v", upd[0])
	}
	if slp[0]["level"] != "WARN" || slp[0]["slow"] != true || slp[0]["wait_ms"] != 20.0 {
		t.Errorf("slow line: %v", slp[0])
	}
	if ins[0]["extended"] != true {
		t.Errorf("extended line: %v", ins[0])
	}
	if fp := sel[0]["fingerprint"].(string); len(fp) != 16 || fp != sel[99]["fingerprint"] {
		t.Errorf("fingerprints %v %v", sel[0]["fingerprint"], sel[99]["fingerprint"])
	}

	// Slow queries on the main log: WARN, normalized text only.
	warns := jsonLines(t, mainBuf.String())
	if len(warns) != 3 {
		t.Fatalf("main log has %d lines, want 3 slow warnings:\n%s", len(warns), mainBuf.String())
	}
	for _, w := range warns {
		if w["level"] != "WARN" || w["msg"] != "slow query" || w["query"] != "SELECT pg_sleep($1)" || w["duration_ms"] != 1500.0 {
			t.Errorf("slow warning: %v", w)
		}
	}
	if strings.Contains(mainBuf.String(), "1.23456789") {
		t.Error("main log contains a literal")
	}

	// Per-shape statistics.
	snap := l.Stats().Snapshot("calls", 0)
	if len(snap) != 4 {
		t.Fatalf("%d shapes, want 4: %+v", len(snap), snap)
	}
	s := snap[0]
	if s.Query != "SELECT * FROM users WHERE id = $1" || s.Calls != 100 || s.Rows != 100 || s.Errors != 0 {
		t.Errorf("select stats: %+v", s)
	}
	if s.TotalMS != 5050 || s.MeanMS != 50.5 || s.MaxMS != 100 {
		t.Errorf("select times: %+v", s)
	}
	durs := make([]float64, 100)
	for i := range durs {
		durs[i] = float64(i + 1)
	}
	checkQuantile(t, "p50", s.P50MS, durs, 0.50)
	checkQuantile(t, "p95", s.P95MS, durs, 0.95)
	checkQuantile(t, "p99", s.P99MS, durs, 0.99)
	if u := snap[1]; u.Calls != 10 || u.Errors != 5 || u.Rows != 5 {
		t.Errorf("update stats: %+v", u)
	}
	if top := l.Stats().Snapshot("total", 1); len(top) != 1 || top[0].Query != s.Query {
		t.Errorf("top by total: %+v", top)
	}
	if top := l.Stats().Snapshot("mean", 1); len(top) != 1 || top[0].Query != "SELECT pg_sleep($1)" || top[0].TotalMS != 4500 {
		t.Errorf("top by mean: %+v", top)
	}
	if !s.FirstSeen.Equal(start) || !s.LastSeen.Equal(start) {
		t.Errorf("seen: %v %v", s.FirstSeen, s.LastSeen)
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkQuantile compares a sketch quantile with the exact value at the same
// rank (q*(n-1), DDSketch's definition), within the sketch's 1% accuracy.
func checkQuantile(t *testing.T, name string, got float64, sorted []float64, q float64) {
	t.Helper()
	want := sorted[int(q*float64(len(sorted)-1))]
	if math.Abs(got-want) > sketchAccuracy*want+1e-9 {
		t.Errorf("%s = %v, want %v within 1%%", name, got, want)
	}
}

func TestLogParameters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.log")
	var mainBuf syncBuffer
	l := newTestLogger(t, config.QueryLog{Path: path, Slow: config.D(time.Second), LogParameters: true}, slog.New(slog.NewJSONHandler(&mainBuf, nil)))
	if !l.LogParameters() {
		t.Fatal("LogParameters() = false")
	}
	n := mix(l, time.Now())
	l.Close()
	data := readFile(t, path)
	lines := jsonLines(t, data)
	if len(lines) != n {
		t.Fatalf("%d lines, want %d", len(lines), n)
	}
	for _, s := range secrets {
		if !strings.Contains(data, s) {
			t.Errorf("log lacks %q with log_parameters", s)
		}
	}
	last := lines[len(lines)-1]
	if got, _ := json.Marshal(last["params"]); string(got) != `["signup-secret-42",null,"\\xff00"]` {
		t.Errorf("params = %s", got)
	}
	if last["raw"] != "INSERT INTO events (kind, payload, blob) VALUES ($1, $2, $3)" || last["query"] != last["raw"] {
		t.Errorf("raw/query: %v", last)
	}
	if !strings.Contains(mainBuf.String(), `"raw":"SELECT pg_sleep(1.23456789)"`) {
		t.Errorf("slow warning lacks raw text with log_parameters: %s", mainBuf.String())
	}
}

func TestErrorLiteralsMasked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.log")
	l := newTestLogger(t, config.QueryLog{Path: path}, nil)
	l.Log(Record{Query: "SELECT 'abc'::int", SQLState: "22P02", Error: `invalid input syntax for type integer: "abc"`})
	l.Log(Record{Query: "SELECT * FROM nope", SQLState: "42P01", Error: `relation "nope" does not exist`})
	l.Close()
	lines := jsonLines(t, readFile(t, path))
	if lines[0]["error"] != `invalid input syntax for type integer: "?"` || lines[1]["error"] != `relation "nope" does not exist` {
		t.Errorf("errors: %v / %v", lines[0]["error"], lines[1]["error"])
	}
}

func TestNoPathKeepsStats(t *testing.T) {
	l := newTestLogger(t, config.QueryLog{Path: "", MaxShapes: 10}, nil)
	if !l.Enabled() {
		t.Fatal("Enabled() = false")
	}
	for i := range 50 {
		l.Log(Record{Query: fmt.Sprintf("SELECT c%d FROM t WHERE x = %d", i, i), Duration: time.Millisecond})
	}
	l.Close()
	if n, ev := l.Stats().Len(), l.Stats().Evicted(); n != 10 || ev != 40 {
		t.Fatalf("Len %d Evicted %d, want 10 and 40", n, ev)
	}
	if l.Enabled() {
		t.Fatal("Enabled() after Close")
	}
	l.Log(Record{Query: "SELECT 1"})
	if l.Dropped() != 1 {
		t.Fatalf("Log after Close: Dropped = %d, want 1", l.Dropped())
	}
}

func TestNilLogger(t *testing.T) {
	var l *Logger
	l.Log(Record{Query: "SELECT 1"})
	if l.Enabled() || l.LogParameters() || l.Intern([]byte("x")) != "x" {
		t.Fatal("nil Logger misbehaves")
	}
}

// TestDropWhenBlocked blocks the writer on a FIFO nobody reads: Log must
// keep returning at once, and every record is either written or counted.
func TestDropWhenBlocked(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	l, err := newLogger(config.QueryLog{Path: fifo}, nil, 16)
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{Query: "SELECT 1", Error: strings.Repeat("x", 4000), SQLState: "XX000"} // ~4 KB lines fill the pipe fast
	sent := 0
	logN := func(n int) {
		done := make(chan struct{})
		go func() {
			for range n {
				l.Log(rec)
			}
			close(done)
		}()
		select {
		case <-done:
			sent += n
		case <-time.After(10 * time.Second):
			t.Fatal("Log blocked")
		}
	}

	logN(20000)
	// Top the queue up until it stays full: a writer that is merely slow
	// would empty it within the pause, a blocked one cannot.
	for i := 0; ; i++ {
		before := l.Dropped()
		logN(l.q.len() + 1)
		if l.Dropped() > before {
			time.Sleep(50 * time.Millisecond)
			if l.q.len() == l.q.max {
				break
			}
		}
		if i == 100 {
			t.Fatal("the writer never blocked")
		}
	}
	before := l.Dropped()
	logN(1000)
	if d := l.Dropped() - before; d != 1000 {
		t.Fatalf("blocked writer: %d of 1000 dropped", d)
	}
	t.Logf("sent %d, dropped %d", sent, l.Dropped())

	read := make(chan int)
	go func() {
		b, _ := io.ReadAll(rd)
		read <- bytes.Count(b, []byte{'\n'})
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := <-read
	if uint64(lines)+l.Dropped() != uint64(sent) {
		t.Fatalf("written %d + dropped %d != sent %d", lines, l.Dropped(), sent)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.log")
	l := newTestLogger(t, config.QueryLog{Path: path}, nil)
	for range 5 {
		l.Log(Record{Query: "SELECT 1"})
	}
	// Flushed as soon as the queue drains, without Close.
	waitFor(t, "5 lines", func() bool { b, _ := os.ReadFile(path); return bytes.Count(b, []byte{'\n'}) == 5 })
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		l.Log(Record{Query: "SELECT 2"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(jsonLines(t, readFile(t, path+".1"))); n != 5 {
		t.Errorf("rotated file has %d lines, want 5", n)
	}
	if n := len(jsonLines(t, readFile(t, path))); n != 4 {
		t.Errorf("reopened file has %d lines, want 4", n)
	}
}

func TestCloseFlushes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.log")
	l := newTestLogger(t, config.QueryLog{Path: path}, nil)
	for i := range 3000 {
		l.Log(Record{Query: "SELECT $1", Rows: int64(i)})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(jsonLines(t, readFile(t, path))); n != 3000 || l.Dropped() != 0 {
		t.Fatalf("%d lines, %d dropped; want 3000 and 0", n, l.Dropped())
	}
	if err := l.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestReconfigure(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	var mainBuf syncBuffer
	l := newTestLogger(t, config.QueryLog{Path: a, Slow: config.D(time.Second), MaxShapes: 100}, slog.New(slog.NewJSONHandler(&mainBuf, nil)))
	for i := range 20 {
		l.Log(Record{Query: fmt.Sprintf("SELECT c%d FROM t", i), Duration: 600 * time.Millisecond})
	}
	waitFor(t, "20 lines", func() bool { b, _ := os.ReadFile(a); return bytes.Count(b, []byte{'\n'}) == 20 })
	if mainBuf.String() != "" {
		t.Fatalf("slow warning under the 1s threshold: %s", mainBuf.String())
	}

	if err := l.Reconfigure(config.QueryLog{Path: filepath.Join(dir, "missing", "x.log")}); err == nil {
		t.Fatal("Reconfigure to an unopenable path succeeded")
	}
	if err := l.Reconfigure(config.QueryLog{Path: b, Slow: config.D(500 * time.Millisecond), LogParameters: true, MaxShapes: 5}); err != nil {
		t.Fatal(err)
	}
	if n := l.Stats().Len(); n != 5 {
		t.Fatalf("max_shapes 5: Len %d", n)
	}
	l.Log(Record{Query: "SELECT 42", Duration: 600 * time.Millisecond})
	l.Close()
	if n := len(jsonLines(t, readFile(t, a))); n != 20 {
		t.Errorf("a.log has %d lines, want 20", n)
	}
	lines := jsonLines(t, readFile(t, b))
	if len(lines) != 1 || lines[0]["raw"] != "SELECT 42" {
		t.Errorf("b.log: %v", lines)
	}
	if !strings.Contains(mainBuf.String(), "slow query") {
		t.Error("no slow warning after lowering slow")
	}
}

// BenchmarkLog measures the caller's cost of Log for a record whose strings
// already exist: "queued" lets the writer drain between batches (timer
// stopped), so every record is enqueued; "full" logs flat out, so most hit
// a full queue and are dropped.
func BenchmarkLog(b *testing.B) {
	r := Record{Time: time.Now(), Database: "app", User: "u", Application: "web", Upstream: "primary",
		Query: "SELECT * FROM users WHERE id = $1", Duration: time.Millisecond, Rows: 1, Tag: "SELECT 1"}
	newL := func(b *testing.B) *Logger {
		l, err := New(config.QueryLog{MaxShapes: 100}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close() })
		return l
	}
	b.Run("queued", func(b *testing.B) {
		l := newL(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if i%1024 == 0 {
				b.StopTimer()
				for l.q.len() > 0 {
					time.Sleep(50 * time.Microsecond)
				}
				b.StartTimer()
			}
			l.Log(r)
		}
		b.StopTimer()
		if l.Dropped() != 0 {
			b.Fatalf("%d dropped", l.Dropped())
		}
	})
	b.Run("full", func(b *testing.B) {
		l := newL(b)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			l.Log(r)
			n++
		}
		b.ReportMetric(float64(l.Dropped())/float64(n), "dropped/op")
	})
}

// BenchmarkWrite measures the writer goroutine's cost per record (cached
// shape, statistics, one JSON line into a discarded buffer): its inverse is
// the sustained rate the queue drains at.
func BenchmarkWrite(b *testing.B) {
	l := &Logger{stats: newStats(100), main: slog.New(slog.DiscardHandler)}
	bw := bufio.NewWriterSize(io.Discard, bufSize)
	l.out = &sink{bw: bw, h: slog.NewJSONHandler(bw, nil)}
	r := Record{Time: time.Now(), Database: "app", User: "u", Application: "web", ClientAddr: "10.0.0.1:5555", Upstream: "primary",
		Query: "SELECT * FROM users WHERE id = $1", Duration: time.Millisecond, Rows: 1, Tag: "SELECT 1"}
	b.ReportAllocs()
	for b.Loop() {
		l.write(&r)
	}
}

// chunkWriter records each Write it receives.
type chunkWriter struct{ chunks []string }

func (c *chunkWriter) Write(p []byte) (int, error) {
	c.chunks = append(c.chunks, string(p))
	return len(p), nil
}

func TestLineWriterFlushesWholeLines(t *testing.T) {
	var out chunkWriter
	bw := bufio.NewWriterSize(&out, 100)
	h := slog.NewJSONHandler(lineWriter{bw}, nil)
	for i := range 50 {
		rec := slog.NewRecord(time.Time{}, slog.LevelInfo, strings.Repeat("m", i*7), 0)
		h.Handle(t.Context(), rec)
	}
	bw.Flush()
	for _, c := range out.chunks {
		if !strings.HasSuffix(c, "\n") {
			t.Fatalf("a flush split a line: %q", c)
		}
	}
	if n := strings.Count(strings.Join(out.chunks, ""), "\n"); n != 50 {
		t.Fatalf("%d lines, want 50", n)
	}
}

func TestAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.log")
	l := newTestLogger(t, config.QueryLog{Path: path}, nil)
	l.Close()
	if err := l.Reopen(); err == nil {
		t.Error("Reopen after Close succeeded")
	}
	if err := l.Reconfigure(config.QueryLog{Path: path + ".2"}); err == nil {
		t.Error("Reconfigure after Close succeeded")
	}
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Error("Reconfigure after Close opened a file")
	}
}

func TestLogDoesNotAllocate(t *testing.T) {
	l := newTestLogger(t, config.QueryLog{}, nil)
	r := Record{Time: time.Now(), Database: "app", Query: "SELECT 1", Params: [][]byte{[]byte("x")}}
	if n := testing.AllocsPerRun(1000, func() { l.Log(r) }); n != 0 {
		t.Fatalf("Log allocates %v times", n)
	}
	var nilL *Logger
	if n := testing.AllocsPerRun(100, func() { nilL.Log(r) }); n != 0 {
		t.Fatalf("nil Log allocates %v times", n)
	}
}
