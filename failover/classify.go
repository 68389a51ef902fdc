package failover

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Kind is what an error says about the upstream that produced it.
type Kind uint8

// Kinds of upstream errors. Every kind but NotFailure counts toward
// failure_threshold.
const (
	// NotFailure is pgguard's own doing (it closed the connection, or is
	// shutting down): it says nothing about the upstream.
	NotFailure Kind = iota
	// Unreachable: connection refused, timed out, reset, name not resolved.
	Unreachable
	// TLS: the TLS handshake failed or the certificate was rejected.
	TLS
	// Auth: the upstream rejected pgguard's credentials (SQLSTATE class 28).
	Auth
	// Quota: Neon's compute time or data transfer quota is exhausted.
	Quota
	// Suspended: the Neon project is suspended or the endpoint disabled.
	Suspended
	// TooManyConnections: SQLSTATE 53300, or Neon's proxy saying so.
	TooManyConnections
	// Shutdown: the server is shutting down, crashed or still starting up
	// (SQLSTATE 57P01, 57P02, 57P03).
	Shutdown
	// Lost: an established connection ended without pgguard closing it.
	Lost
	// Refused: any other error the upstream answered a connection with.
	Refused
)

var kindNames = [...]string{"not_failure", "unreachable", "tls", "auth", "quota", "suspended",
	"too_many_connections", "shutdown", "lost", "refused"}

// String returns the kind's snake_case name, as used in logs.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Cause is Classify's verdict on an error.
type Cause struct {
	Kind Kind
	// Reason is a short phrase for logs and /status ("Neon compute time quota exceeded").
	Reason string
}

// refusals is the one table from what an upstream answers a connection with
// to a Kind. Neon's proxy sends its refusals as SQLSTATE XX000, so those rows
// match the message text (lower-cased; every listed fragment must appear);
// the others match a SQLSTATE or its two-character class. The first matching
// row wins; a PgError no row matches is Refused.
var refusals = []struct {
	code   string   // SQLSTATE or class; "" matches any
	text   []string // lower-case fragments that must all appear; nil matches any
	kind   Kind
	reason string
}{
	// Neon, by text (SQLSTATE XX000).
	{text: []string{"compute time quota"}, kind: Quota, reason: "Neon compute time quota exceeded"},
	{text: []string{"data transfer quota"}, kind: Quota, reason: "Neon data transfer quota exceeded"},
	{text: []string{"endpoint", "disabled"}, kind: Suspended, reason: "Neon endpoint is disabled"},
	{text: []string{"project", "suspended"}, kind: Suspended, reason: "Neon project suspended"},
	{text: []string{"suspended"}, kind: Suspended, reason: "upstream suspended"},
	{text: []string{"too many connections"}, kind: TooManyConnections, reason: "too many connections"},
	// PostgreSQL, by SQLSTATE (docs, Appendix A).
	{code: "53300", kind: TooManyConnections, reason: "too many connections"},
	{code: "57P01", kind: Shutdown, reason: "server shutting down"},
	{code: "57P02", kind: Shutdown, reason: "server crashed"},
	{code: "57P03", kind: Shutdown, reason: "server starting up or shutting down"},
	{code: "28", kind: Auth, reason: "authentication failed"},
}

// Classify says what err, from dialing an upstream or from an established
// server connection ending, means for that upstream. Its Kind is NotFailure
// for a nil error, a cancelled context, and a connection pgguard closed itself.
func Classify(err error) Cause {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) {
		return Cause{NotFailure, "closed by pgguard"}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg := strings.ToLower(pe.Message)
		for _, r := range refusals {
			if r.code != "" && !strings.HasPrefix(pe.Code, r.code) {
				continue
			}
			if !containsAll(msg, r.text) {
				continue
			}
			return Cause{r.kind, r.reason}
		}
		return Cause{Refused, "refused with SQLSTATE " + pe.Code}
	}
	var (
		dnsErr   *net.DNSError
		netErr   net.Error
		certErr  *tls.CertificateVerificationError
		alertErr tls.AlertError
		recErr   tls.RecordHeaderError
		authErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
	)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Cause{Unreachable, "connection refused"}
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err), errors.As(err, &netErr) && netErr.Timeout():
		return Cause{Unreachable, "timed out"}
	case errors.As(err, &dnsErr):
		return Cause{Unreachable, "host name not resolved"}
	case errors.As(err, &certErr), errors.As(err, &alertErr), errors.As(err, &recErr),
		errors.As(err, &authErr), errors.As(err, &hostErr), tlsText(err):
		return Cause{TLS, "TLS failure"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Cause{Lost, "connection closed by the upstream"}
	}
	return Cause{Unreachable, "connection failed"}
}

// tlsText catches TLS errors that have no type of their own: crypto/tls's
// "tls: ..." texts and pgconn's "server refused TLS connection".
func tlsText(err error) bool {
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "tls: ") || strings.Contains(s, "refused tls")
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
