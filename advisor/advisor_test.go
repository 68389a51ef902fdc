package advisor

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/pgguard/pgguard/querylog"
)

// synth builds a seeds-like day in virtual time: page loads that read the
// tenant's branding (and half of them its subdomain), an availability
// worker polling every minute with a per-tenant N+1 loop, a branding update
// now and then, and slow reports. It feeds both a and, as query log lines,
// log.
type synth struct {
	t   time.Time
	rng *rand.Rand
	a   *Analyzer
	log bytes.Buffer
}

func (s *synth) q(at time.Time, app string, client uint32, sql string, args uint64, dur time.Duration, rows int64, tx byte) {
	fp, norm := querylog.Shape(sql)
	r := querylog.Record{Time: at, Database: "app", User: "app", Application: app, Upstream: "primary", Query: sql,
		Duration: dur, Rows: rows, Tag: strings.Fields(sql)[0], Client: client, TxStatus: tx, Args: args}
	s.a.Observe(&r, fp, norm)
	fmt := `{"time":"` + at.Format(time.RFC3339Nano) + `","level":"INFO","msg":"query"`
	line, _ := json.Marshal(map[string]any{"database": "app", "application": app, "upstream": "primary",
		"query": norm, "duration_ms": float64(dur) / 1e6, "wait_ms": 0, "rows": rows, "client": client,
		"tx": map[byte]string{'T': "T"}[tx], "args": fpHex(args)})
	s.log.WriteString(fmt + "," + string(line[1:]) + "\n")
}

func synthDay(a *Analyzer, hours int) *synth {
	s := &synth{rng: rand.New(rand.NewPCG(1, 2)), a: a}
	start := time.Date(2026, 4, 9, 8, 0, 0, 0, time.UTC)
	end := start.Add(time.Duration(hours) * time.Hour)
	type ev struct {
		at time.Time
		f  func(time.Time)
	}
	var evs []ev
	// Web: 100 page loads a minute during the first two thirds.
	busyEnd := start.Add(time.Duration(hours) * time.Hour * 2 / 3)
	for t := start; t.Before(busyEnd); t = t.Add(time.Duration(s.rng.ExpFloat64() * float64(600*time.Millisecond))) {
		client := uint32(100 + s.rng.IntN(8))
		tenant := uint64(1 + s.rng.IntN(20))
		evs = append(evs, ev{t, func(t time.Time) {
			s.q(t, "web", client, "SELECT * FROM tenant_branding WHERE tenant_id = $1", tenant, 2*time.Millisecond, 1, 'I')
			if tenant%2 == 0 {
				s.q(t.Add(3*time.Millisecond), "web", client, "SELECT id, name FROM tenants WHERE subdomain = $1", tenant, time.Millisecond, 1, 'I')
			}
		}})
	}
	// Branding updates every 10 minutes.
	for t := start.Add(5 * time.Minute); t.Before(busyEnd); t = t.Add(10 * time.Minute) {
		evs = append(evs, ev{t, func(t time.Time) {
			s.q(t, "web", 99, "UPDATE tenant_branding SET color = $1 WHERE tenant_id = $2", 7, time.Millisecond, 1, 'I')
		}})
	}
	// The worker: every 60 s, the tenants, then one query per tenant.
	for t := start.Add(time.Second); t.Before(end); t = t.Add(time.Minute) {
		evs = append(evs, ev{t, func(t time.Time) {
			s.q(t, "availability-worker", 7, "SELECT id FROM tenants WHERE active", 1, 2*time.Millisecond, 20, 'I')
			at := t.Add(3 * time.Millisecond)
			for ten := uint64(1); ten <= 20; ten++ {
				s.q(at, "availability-worker", 7, "SELECT status FROM service_status WHERE tenant_id = $1", ten, time.Millisecond, 1, 'I')
				at = at.Add(1500 * time.Microsecond)
			}
		}})
	}
	// Slow reports, three an hour.
	for t := start.Add(7 * time.Minute); t.Before(busyEnd); t = t.Add(20 * time.Minute) {
		evs = append(evs, ev{t, func(t time.Time) {
			s.q(t, "reporting", 50, "SELECT tenant_id, count(*) FROM events GROUP BY tenant_id", 3, 900*time.Millisecond, 20, 'I')
		}})
	}
	// In time order, as the query log delivers them (about).
	for i := range evs {
		for j := i; j > 0 && evs[j].at.Before(evs[j-1].at); j-- {
			evs[j], evs[j-1] = evs[j-1], evs[j]
		}
	}
	for _, e := range evs {
		e.f(e.at)
	}
	return s
}

func TestSeedsDay(t *testing.T) {
	a := New(Options{})
	s := synthDay(a, 3)
	adv := a.Advise(DefaultSettings())
	cols, rows := adv.Rows()
	_ = cols
	for _, r := range rows {
		t.Logf("%s | %s | %s\n%s", r[0], r[1], r[2], r[3])
	}
	if len(adv.CacheCandidates) == 0 || !strings.Contains(adv.CacheCandidates[0].Query, "tenant_branding") {
		t.Fatalf("top cache candidate is not the branding query: %+v", adv.CacheCandidates)
	}
	// Offline: the same findings from the log lines.
	b := New(Options{})
	n, err := b.ReadLog(&s.log)
	if err != nil || n == 0 {
		t.Fatal(n, err)
	}
	adv2 := b.Advise(DefaultSettings())
	if adv2.TOML != adv.TOML {
		t.Fatalf("offline TOML differs:\n%s\nlive:\n%s", adv2.TOML, adv.TOML)
	}
}

// BenchmarkObserve is the advisor's cost per query on the query log's
// writer goroutine.
func BenchmarkObserve(b *testing.B) {
	a := New(Options{})
	fp, norm := querylog.Shape("SELECT * FROM tenant_branding WHERE tenant_id = $1")
	r := querylog.Record{Time: time.Now(), Database: "app", Application: "web", Upstream: "primary", Duration: time.Millisecond, Rows: 1, Tag: "SELECT", Client: 7, TxStatus: 'I'}
	b.ReportAllocs()
	for i := range b.N {
		r.Args = uint64(i % 50)
		a.Observe(&r, fp, norm)
	}
}

// BenchmarkAdvise computes the findings over a full ring (200,000 queries
// of the seeds' workload).
func BenchmarkAdvise(b *testing.B) {
	a := New(Options{})
	synthDay(a, 28)
	if n, _ := a.Len(); n < DefaultMaxRecords {
		b.Fatalf("%d records, want a full ring", n)
	}
	b.ResetTimer()
	for range b.N {
		a.Advise(DefaultSettings())
	}
}

// TestLoopsNotPageLoads: a connection serving page loads back to back
// repeats its shapes, but not in lockstep: no loop. A two-statement body
// run once per row of a parent is one, with that parent.
func TestLoopsNotPageLoads(t *testing.T) {
	a := New(Options{})
	s := &synth{rng: rand.New(rand.NewPCG(3, 4)), a: a}
	at := time.Date(2026, 4, 9, 8, 0, 0, 0, time.UTC)
	for i := range 300 {
		tenant := uint64(1 + s.rng.IntN(20))
		s.q(at, "web", 1, "SELECT * FROM tenant_branding WHERE tenant_id = $1", tenant, time.Millisecond, 1, 'I')
		at = at.Add(2 * time.Millisecond)
		for _, sql := range []string{"SELECT id, name FROM tenants WHERE subdomain = $1", "SELECT key, value FROM tenant_settings WHERE tenant_id = $1"} {
			if s.rng.IntN(2) == 0 {
				s.q(at, "web", 1, sql, tenant+uint64(i), time.Millisecond, 1, 'I')
				at = at.Add(2 * time.Millisecond)
			}
		}
	}
	at = at.Add(time.Second)
	s.q(at, "worker", 2, "SELECT id FROM tenants WHERE active", 1, time.Millisecond, 12, 'I')
	for id := uint64(1); id <= 12; id++ {
		at = at.Add(2 * time.Millisecond)
		s.q(at, "worker", 2, "SELECT status FROM service_status WHERE tenant_id = $1", id, time.Millisecond, 1, 'I')
		at = at.Add(2 * time.Millisecond)
		s.q(at, "worker", 2, "UPDATE service_status SET checked_at = now() WHERE tenant_id = $1", id, time.Millisecond, 1, 'I')
	}
	loops := a.Advise(DefaultSettings()).Loops
	if len(loops) != 2 {
		t.Fatalf("loops: %+v, want the worker's two statements", loops)
	}
	for _, l := range loops {
		if l.Application != "worker" || l.MaxCount != 12 || l.Parent == nil || l.Parent.Query != "SELECT id FROM tenants WHERE active" || l.Parent.MeanRows != 12 {
			t.Errorf("loop %+v (parent %+v)", l, l.Parent)
		}
	}
}

// TestRingBounded: the ring never holds (or allocates) more than its bound,
// and an advisor turned off says so instead of reporting no findings.
func TestRingBounded(t *testing.T) {
	a := New(Options{MaxRecords: 5000})
	for i := range 12000 {
		a.Add(Entry{Time: time.Unix(int64(i), 0), Fingerprint: 1, Query: "SELECT 1", Primary: true})
	}
	if len(a.ring) != 5000 || cap(a.ring) != 5000 {
		t.Fatalf("ring len %d cap %d, want 5000", len(a.ring), cap(a.ring))
	}
	var off *Analyzer
	adv := off.Advise(Settings{})
	if _, rows := adv.Rows(); adv.Off == "" || len(rows) != 1 || !strings.Contains(rows[0][2], "querylog.advisor_records") {
		t.Fatalf("a nil advisor's advice: %+v", adv)
	}
}
