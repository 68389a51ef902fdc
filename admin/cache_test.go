package admin_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/cache"
)

// brandingReply is a server's answer to the branding query.
func brandingReply(t *testing.T) []byte {
	t.Helper()
	var b []byte
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("name"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("acme")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
	} {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// lookup runs the branding query through the cache as the proxy will, and
// reports whether it hit.
func (e *env) lookup(t *testing.T) bool {
	t.Helper()
	ctx := context.Background()
	k, ok := e.cache.Key(&cache.Session{Database: "app", User: appUser},
		&cache.Statement{Text: []byte("SELECT * FROM tenant_branding WHERE tenant_id = 7")})
	if !ok {
		t.Fatal("the branding rule does not match")
	}
	if _, hit := e.cache.Get(ctx, k); hit {
		return true
	}
	if !e.cache.Put(ctx, k, brandingReply(t)) {
		t.Fatal("Put refused the reply")
	}
	return false
}

func TestConsoleCache(t *testing.T) {
	e := start(t, testConfig())
	con := e.console(t)
	e.lookup(t)
	if !e.lookup(t) {
		t.Fatal("second lookup missed")
	}
	show := mustExec(t, con, "SHOW CACHE")
	r := show.row(t, "rule", "branding")
	if r["hits"] != "1" || r["misses"] != "1" || r["stored"] != "1" || r["ttl"] != "1m0s" || r["hit_ratio"] != "0.50" || len(r["fingerprint"]) != 16 {
		t.Errorf("SHOW CACHE branding: %v", r)
	}
	if tot := show.row(t, "rule", "(total)"); !strings.Contains(tot["note"], "redis: off") || tot["hits"] != "1" {
		t.Errorf("SHOW CACHE total: %v", tot)
	}
	if res := mustExec(t, con, "DISCARD CACHE"); res.tag != "DISCARD CACHE" {
		t.Errorf("DISCARD CACHE tag %q", res.tag)
	}
	if e.lookup(t) {
		t.Error("hit after DISCARD CACHE")
	}
	if _, err := exec(t, con, "DISCARD ALL"); err == nil || !strings.Contains(err.Error(), "DISCARD CACHE") {
		t.Errorf("DISCARD ALL: %v", err)
	}
}

func TestCacheHTTP(t *testing.T) {
	e := start(t, testConfig())
	e.lookup(t)
	e.lookup(t)
	_, body := e.get(t, "/status")
	var st struct {
		Extra struct {
			Cache cache.Status `json:"cache"`
		} `json:"extra"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	c := st.Extra.Cache
	if c.Redis != "off" || len(c.Rules) != 1 || c.Rules[0].Name != "branding" || c.Rules[0].Hits != 1 || c.LocalEntries != 1 {
		t.Errorf("/status cache: %+v", c)
	}
	_, metrics := e.get(t, "/metrics")
	for _, m := range []string{`pgguard_cache_hits_total{rule="branding"} 1`, `pgguard_cache_misses_total{rule="branding"} 1`, "pgguard_cache_local_entries 1"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	// Forgetting is an admin action.
	if code, _ := e.do(t, http.MethodPost, "/cache/reset", "", appUser, appPass); code != http.StatusUnauthorized {
		t.Errorf("POST /cache/reset as a non-admin: %d, want 401", code)
	}
	if !e.lookup(t) {
		t.Fatal("an unauthorized reset forgot the entry")
	}
	if code, body := e.do(t, http.MethodPost, "/cache/reset", "", adminUser, adminPass); code != http.StatusNoContent {
		t.Fatalf("POST /cache/reset as admin: %d %s", code, body)
	}
	if e.lookup(t) {
		t.Error("hit after POST /cache/reset")
	}
}
