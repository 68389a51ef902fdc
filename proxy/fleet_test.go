package proxy

import (
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/pool"
)

// The upstream's own refusal as full, from PostgreSQL (53300) or Neon's
// proxy (XX000, by text), is pool.ErrFull (the client queues) and counted;
// other refusals are not.
func TestUpstreamFullIsErrFull(t *testing.T) {
	m := metrics.New()
	db := &database{name: "app", p: &Proxy{metrics: m, log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	for _, err := range []error{
		&pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already"},
		&pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "remaining connection slots are reserved for roles with the SUPERUSER attribute"},
		&pgconn.PgError{Severity: "FATAL", Code: "XX000", Message: "Too many connections: endpoint ep-x is at its limit"},
	} {
		full := db.upstreamFull(err)
		if !errors.Is(full, pool.ErrFull) || !errors.Is(full, err) {
			t.Errorf("%v: got %v, want pool.ErrFull wrapping it", err, full)
		}
	}
	for _, err := range []error{
		&pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"},
		&pgconn.PgError{Severity: "FATAL", Code: "XX000", Message: "Your project has exceeded the compute time quota"},
		errors.New("dial tcp: connection refused"),
	} {
		if full := db.upstreamFull(err); full != nil {
			t.Errorf("%v taken for a full upstream", err)
		}
	}
	if n := testutil.ToFloat64(m.UpstreamFull.WithLabelValues("app")); n != 3 {
		t.Errorf("pgguard_upstream_refusals_total = %v, want 3", n)
	}
}
