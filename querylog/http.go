package querylog

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Handler serves the statistics, wherever it is mounted (with or without
// http.StripPrefix):
//
//	GET    /queries?sort=total|calls|p95|mean&limit=N  JSON array of ShapeStats (limit default 100, 0 for all)
//	POST   /queries/reset                              forget every shape
//	DELETE /queries                                    same
//
// Authorization is the mounting server's job.
func (s *Stats) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/reset") {
			if r.Method != http.MethodPost {
				w.Header().Set("Allow", "POST")
				http.Error(w, "use POST to reset query statistics", http.StatusMethodNotAllowed)
				return
			}
			s.Reset()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.serveList(w, r)
		case http.MethodDelete:
			s.Reset()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, HEAD, DELETE")
			http.Error(w, "use GET to list query statistics, DELETE or POST .../reset to reset them", http.StatusMethodNotAllowed)
		}
	})
}

func (s *Stats) serveList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sortBy := q.Get("sort")
	switch sortBy {
	case "":
		sortBy = "total"
	case "total", "calls", "p95", "mean":
	default:
		http.Error(w, "sort: want total, calls, p95 or mean", http.StatusBadRequest)
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			http.Error(w, "limit: want a non-negative integer (0 for all)", http.StatusBadRequest)
			return
		}
		limit = n
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.Snapshot(sortBy, limit))
}
