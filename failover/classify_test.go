package failover

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestClassify(t *testing.T) {
	pg := func(code, msg string) error {
		// As pgconn returns it from a failed connect: wrapped.
		return fmt.Errorf("failed to connect to `user=app database=neondb`: %w", &pgconn.PgError{Severity: "FATAL", Code: code, Message: msg})
	}
	cases := []struct {
		name string
		err  error
		kind Kind
	}{
		{"nil", nil, NotFailure},
		{"cancelled", fmt.Errorf("dial: %w", context.Canceled), NotFailure},
		{"closed by pgguard", &net.OpError{Op: "read", Err: net.ErrClosed}, NotFailure},

		{"neon compute quota", pg("XX000", "Your account or project has exceeded the compute time quota. Upgrade your plan to increase limits."), Quota},
		{"neon transfer quota", pg("XX000", "Your project has exceeded the data transfer quota. Upgrade your plan to increase limits."), Quota},
		{"neon endpoint disabled", pg("XX000", "The endpoint has been disabled. Enable it using Neon API and retry."), Suspended},
		{"neon project suspended", pg("XX000", "Project 'ep-x' is suspended"), Suspended},
		{"neon suspended", pg("XX000", "compute is suspended by the administrator"), Suspended},
		{"neon too many connections", pg("XX000", "Too many connections attempts"), TooManyConnections},
		{"postgres too many clients", pg("53300", "sorry, too many clients already"), TooManyConnections},
		{"reserved slots", pg("53300", "remaining connection slots are reserved for roles with the SUPERUSER attribute"), TooManyConnections},
		{"admin shutdown", pg("57P01", "terminating connection due to administrator command"), Shutdown},
		{"crash shutdown", pg("57P02", "terminating connection because of crash of another server process"), Shutdown},
		{"starting up", pg("57P03", "the database system is starting up"), Shutdown},
		{"bad password", pg("28P01", "password authentication failed for user \"app\""), Auth},
		{"no pg_hba entry", pg("28000", "no pg_hba.conf entry for host"), Auth},
		{"neon other", pg("XX000", "Couldn't connect to compute node"), Refused},
		{"no such database", pg("3D000", "database \"x\" does not exist"), Refused},

		{"dial error", &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "bad address"}}, Unreachable},
		{"econnrefused", fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), Unreachable},
		{"connect_timeout", fmt.Errorf("connect: %w", context.DeadlineExceeded), Unreachable},
		{"dns", &net.DNSError{Err: "no such host", Name: "ep-x.neon.tech"}, Unreachable},
		{"tls verify", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, TLS},
		{"tls alert", fmt.Errorf("handshake: %w", tls.AlertError(40)), TLS},
		{"tls refused", errors.New("server refused TLS connection"), TLS},
		{"eof", fmt.Errorf("read: %w", io.EOF), Lost},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, Lost},
		{"other", errors.New("something odd"), Unreachable},
	}
	for _, c := range cases {
		got := Classify(c.err)
		if got.Kind != c.kind {
			t.Errorf("%s: Classify(%v) = %s (%q), want %s", c.name, c.err, got.Kind, got.Reason, c.kind)
		}
		if got.Reason == "" {
			t.Errorf("%s: empty reason", c.name)
		}
	}
}

// TestRefusalsTableReachable: every row of the table is the first match for
// some message, so no row is shadowed by an earlier one.
func TestRefusalsTableReachable(t *testing.T) {
	for i, r := range refusals {
		code := r.code
		if code == "" {
			code = "XX000"
		} else if len(code) == 2 {
			code += "000"
		}
		msg := ""
		for _, p := range r.text {
			msg += p + " "
		}
		got := Classify(&pgconn.PgError{Code: code, Message: msg})
		if got.Kind != r.kind || got.Reason != r.reason {
			t.Errorf("row %d (%v %q) is shadowed: got %s %q", i, r.text, r.code, got.Kind, got.Reason)
		}
	}
}
