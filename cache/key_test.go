package cache

import (
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
)

const brandingSQL = "SELECT * FROM tenant_branding WHERE tenant_id = $1"

// testCache is a per-instance cache with the given rules.
func testCache(t *testing.T, rules ...config.CacheRule) *Cache {
	t.Helper()
	cfg := config.Default()
	for i := range rules {
		if rules[i].TTL.Duration == 0 {
			rules[i].TTL = config.D(time.Minute)
		}
	}
	cfg.Cache = rules
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var branding = config.CacheRule{Name: "branding", Query: brandingSQL}

func sess() *Session {
	return &Session{Database: "app", User: "app", Application: "web",
		Settings: []Setting{{"search_path", "public"}, {"TimeZone", "UTC"}}}
}

func bind(params ...[]byte) *Statement {
	return &Statement{Text: []byte(brandingSQL), Extended: true, Described: true, ParamTypes: []uint32{0}, Params: params}
}

func mustKey(t *testing.T, c *Cache, s *Session, st *Statement) *Key {
	t.Helper()
	k, ok := c.Key(s, st)
	if !ok {
		t.Fatalf("no key for %q", st.Text)
	}
	return k
}

// Everything the reply depends on changes the key; nothing else does.
func TestKeyComposition(t *testing.T) {
	c := testCache(t, branding)
	base := mustKey(t, c, sess(), bind([]byte("42"))).digest

	same := map[string]func() (*Session, *Statement){
		"settings in another order": func() (*Session, *Statement) {
			s := sess()
			s.Settings = []Setting{{"timezone", "UTC"}, {"search_path", "public"}}
			return s, bind([]byte("42"))
		},
		"another application_name": func() (*Session, *Statement) {
			s := sess()
			s.Application = "worker"
			s.Settings = append(s.Settings, Setting{"application_name", "worker"})
			return s, bind([]byte("42"))
		},
		"no param format codes vs one 0": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ParamFormats = []int16{0}
			return sess(), st
		},
		"no result format codes vs one 0": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ResultFormats = []int16{0}
			return sess(), st
		},
	}
	for name, f := range same {
		s, st := f()
		if k := mustKey(t, c, s, st); k.digest != base {
			t.Errorf("%s: key changed", name)
		}
	}

	differ := map[string]func() (*Session, *Statement){
		"another search_path": func() (*Session, *Statement) {
			s := sess()
			s.Settings[0].Value = "tenant_7, public"
			return s, bind([]byte("42"))
		},
		"a role": func() (*Session, *Statement) {
			s := sess()
			s.Settings = append(s.Settings, Setting{"role", "reporting"})
			return s, bind([]byte("42"))
		},
		"another TimeZone": func() (*Session, *Statement) {
			s := sess()
			s.Settings[1].Value = "Europe/Paris"
			return s, bind([]byte("42"))
		},
		"another user":     func() (*Session, *Statement) { s := sess(); s.User = "other"; return s, bind([]byte("42")) },
		"another database": func() (*Session, *Statement) { s := sess(); s.Database = "other"; return s, bind([]byte("42")) },
		"another value":    func() (*Session, *Statement) { return sess(), bind([]byte("43")) },
		"NULL":             func() (*Session, *Statement) { return sess(), bind(nil) },
		"empty value":      func() (*Session, *Statement) { return sess(), bind([]byte{}) },
		"binary parameter": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ParamFormats = []int16{1}
			return sess(), st
		},
		"binary results": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ResultFormats = []int16{1}
			return sess(), st
		},
		"per-column results": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ResultFormats = []int16{0, 1}
			return sess(), st
		},
		"int8 parameter type": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.ParamTypes = []uint32{20}
			return sess(), st
		},
		"not described": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.Described = false
			return sess(), st
		},
		"no parameter types": func() (*Session, *Statement) { st := bind([]byte("42")); st.ParamTypes = nil; return sess(), st },
		"simple protocol": func() (*Session, *Statement) {
			return sess(), &Statement{Text: []byte(brandingSQL)}
		},
		"another spelling": func() (*Session, *Statement) {
			st := bind([]byte("42"))
			st.Text = []byte("select * from tenant_branding where tenant_id = $1")
			return sess(), st
		},
	}
	seen := map[[32]byte]string{base: "base"}
	for name, f := range differ {
		s, st := f()
		k := mustKey(t, c, s, st)
		if other, dup := seen[k.digest]; dup {
			t.Errorf("%s: same key as %s", name, other)
		}
		seen[k.digest] = name
	}
}

// In the simple protocol the literals are the parameters: the key is the
// text, so each tenant has its own entry and the same text shares one.
func TestKeySimpleProtocolLiterals(t *testing.T) {
	c := testCache(t, branding)
	q := func(sql string) [32]byte {
		return mustKey(t, c, sess(), &Statement{Text: []byte(sql)}).digest
	}
	a := q("SELECT * FROM tenant_branding WHERE tenant_id = 42")
	if a != q("SELECT * FROM tenant_branding WHERE tenant_id = 42") {
		t.Error("the same text gave two keys")
	}
	if a == q("SELECT * FROM tenant_branding WHERE tenant_id = 43") {
		t.Error("two literals gave one key")
	}
	// pg_query's fingerprint ignores column aliases, which change the
	// RowDescription: the text keeps them apart.
	c2 := testCache(t, config.CacheRule{Name: "alias", Query: "SELECT name AS x FROM tenants"})
	k1 := mustKey(t, c2, sess(), &Statement{Text: []byte("SELECT name AS x FROM tenants")})
	k2 := mustKey(t, c2, sess(), &Statement{Text: []byte("SELECT name AS y FROM tenants")})
	if k1.digest == k2.digest {
		t.Error("aliases x and y share a key")
	}
}

func TestKeyRefusals(t *testing.T) {
	c := testCache(t, branding)
	for name, st := range map[string]*Statement{
		"'now' as a parameter":   bind([]byte(" Now")),
		"two format codes":       func() *Statement { s := bind([]byte("1")); s.ParamFormats = []int16{0, 0}; return s }(),
		"format code 2":          func() *Statement { s := bind([]byte("1")); s.ParamFormats = []int16{2}; return s }(),
		"another shape":          {Text: []byte("SELECT * FROM tenants WHERE id = $1")},
		"a write":                {Text: []byte("UPDATE tenant_branding SET x = 1 WHERE tenant_id = 1")},
		"two statements":         {Text: []byte(brandingSQL + "; SELECT 1")},
		"same shape, FOR UPDATE": {Text: []byte(brandingSQL + " FOR UPDATE")},
	} {
		if _, ok := c.Key(sess(), st); ok {
			t.Errorf("%s: cacheable", name)
		}
	}
	// 'now' in binary format is not text.
	st := bind([]byte("now"))
	st.ParamFormats = []int16{1}
	if _, ok := c.Key(sess(), st); !ok {
		t.Error("binary parameter \"now\" refused")
	}
}

func TestMatchKeys(t *testing.T) {
	c := testCache(t,
		config.CacheRule{Name: "web-only", Query: brandingSQL, ApplicationName: "web", Database: "app"},
		config.CacheRule{Name: "fallback", Fingerprint: "0a42922fab0bd73f", User: "app"}, // SELECT * FROM t WHERE id = $1
	)
	text := []byte(brandingSQL)
	if r, ok := c.Match(sess(), text); !ok || r.Name() != "web-only" {
		t.Errorf("web: %v %v", r, ok)
	}
	s := sess()
	s.Application = "worker"
	if _, ok := c.Match(s, text); ok {
		t.Error("worker matched the web-only rule")
	}
	if r, ok := c.Match(sess(), []byte("SELECT * FROM t WHERE id = 7")); !ok || r.Name() != "fallback" {
		t.Errorf("fingerprint rule: %v %v", r, ok)
	}
	s.User = "other"
	if _, ok := c.Match(s, []byte("SELECT * FROM t WHERE id = 7")); ok {
		t.Error("user other matched")
	}
}

// A fingerprint rule cannot be checked at load: a text of its shape that
// may not be cached is refused at match time, and SHOW CACHE says why.
func TestMatchRefusalIsRecorded(t *testing.T) {
	c := testCache(t, config.CacheRule{Name: "fp", Fingerprint: fpOf(t, "SELECT f(x) FROM t")})
	if _, ok := c.Match(sess(), []byte("SELECT f(x) FROM t")); ok {
		t.Fatal("untrusted function cached")
	}
	rs := c.status().Rules[0]
	if rs.LastRefusal == "" || rs.Fingerprint != fpOf(t, "SELECT f(x) FROM t") {
		t.Errorf("status: %+v", rs)
	}
	c.Reconfigure(withRules(config.CacheRule{Name: "fp", Fingerprint: fpOf(t, "SELECT f(x) FROM t"), TrustedFunctions: []string{"f"}, TTL: config.D(time.Minute)}))
	if _, ok := c.Match(sess(), []byte("SELECT f(x) FROM t")); !ok {
		t.Error("trusted function refused after reload")
	}
}

// Tables named by the rule join the ones the query reads.
func TestKeyTables(t *testing.T) {
	c := testCache(t, config.CacheRule{Name: "v", Query: "SELECT * FROM branding_view WHERE id = $1", Tables: []string{"tenant_branding", "branding_view"}})
	k := mustKey(t, c, sess(), &Statement{Text: []byte("SELECT * FROM branding_view WHERE id = 1")})
	if got := k.Tables(); len(got) != 2 || got[0] != "branding_view" || got[1] != "tenant_branding" {
		t.Errorf("tables %q", got)
	}
}

// A statement no rule matches costs a map lookup and no allocation once
// its text was seen.
func TestNoMatchDoesNotAllocate(t *testing.T) {
	c := testCache(t, branding)
	s := sess()
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 4711")
	c.Match(s, q)
	if n := testing.AllocsPerRun(200, func() { c.Match(s, q) }); n != 0 {
		t.Errorf("Match of an unmatched text: %v allocs", n)
	}
	other := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 815") // numbers zeroed: the same entry
	if n := testing.AllocsPerRun(200, func() { c.Match(s, other) }); n != 0 {
		t.Errorf("Match of another number: %v allocs", n)
	}
	w := []byte("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2")
	c.Writes(w)
	if n := testing.AllocsPerRun(200, func() { c.Writes(w) }); n != 0 {
		t.Errorf("Writes: %v allocs", n)
	}
	var nilCache *Cache
	if _, ok := nilCache.Key(s, &Statement{Text: q}); ok || nilCache.Enabled() {
		t.Error("nil cache matched")
	}
}

func withRules(rules ...config.CacheRule) *config.Config {
	cfg := config.Default()
	cfg.Cache = rules
	return cfg
}

func fpOf(t *testing.T, sql string) string {
	t.Helper()
	c := testCache(t)
	return fpHex(c.analyze([]byte(sql)).Fingerprint)
}

// BenchmarkMatch is the hot path: a statement no rule matches, and one a
// rule matches with its key.
func BenchmarkMatch(b *testing.B) {
	cfg := config.Default()
	cfg.Cache = []config.CacheRule{{Name: "branding", Query: brandingSQL, TTL: config.D(time.Minute)}}
	c, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s := sess()
	miss := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 4711")
	b.Run("no-rule", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Match(s, miss)
		}
	})
	st := &Statement{Text: []byte(brandingSQL), Extended: true, Described: true, ParamTypes: []uint32{23}, Params: [][]byte{[]byte("42")}}
	b.Run("key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Key(s, st)
		}
	})
}
