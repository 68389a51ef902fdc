package querylog

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	s := newStats(10)
	for i := 1; i <= 3; i++ {
		for range i * 10 {
			s.add(testInfo(i), &Record{Duration: time.Duration(10-i) * time.Millisecond})
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/queries", s.Handler())
	mux.Handle("/queries/", s.Handler())
	do := func(method, target string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(method, target, nil))
		return w
	}
	list := func(target string) []ShapeStats {
		t.Helper()
		w := do("GET", target)
		if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
		}
		var out []ShapeStats
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	if got := list("/queries"); len(got) != 3 || got[0].Calls != 30 {
		t.Fatalf("default sort by total: %+v", got)
	}
	if got := list("/queries?sort=p95&limit=1"); len(got) != 1 || got[0].Calls != 10 {
		t.Fatalf("sort=p95&limit=1: %+v", got)
	}
	w := do("GET", "/queries?sort=calls")
	if !strings.Contains(w.Body.String(), `"p95_ms":`) || !strings.Contains(w.Body.String(), `"fingerprint":"`) {
		t.Fatalf("JSON fields: %s", w.Body)
	}
	for _, bad := range []string{"/queries?sort=rows", "/queries?limit=x", "/queries?limit=-1"} {
		if w := do("GET", bad); w.Code != 400 {
			t.Errorf("GET %s: %d", bad, w.Code)
		}
	}
	if w := do("PUT", "/queries"); w.Code != 405 || w.Header().Get("Allow") == "" {
		t.Errorf("PUT: %d", w.Code)
	}
	if w := do("GET", "/queries/reset"); w.Code != 405 {
		t.Errorf("GET reset: %d", w.Code)
	}
	if w := do("POST", "/queries/reset"); w.Code != 204 || s.Len() != 0 {
		t.Errorf("POST reset: %d, %d shapes left", w.Code, s.Len())
	}
	if got := list("/queries"); got == nil || len(got) != 0 {
		t.Errorf("after reset: %+v", got)
	}
	s.add(testInfo(1), &Record{})
	if w := do("DELETE", "/queries"); w.Code != 204 || s.Len() != 0 {
		t.Errorf("DELETE: %d", w.Code)
	}

	// Mounted behind StripPrefix, too.
	h := http.StripPrefix("/queries", s.Handler())
	s.add(testInfo(1), &Record{})
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/queries/reset", nil))
	if w.Code != 204 || s.Len() != 0 {
		t.Errorf("stripped reset: %d", w.Code)
	}
}
