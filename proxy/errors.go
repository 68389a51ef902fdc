package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/failover"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/pool"
)

// SQLSTATEs pgguard sends on its own (PostgreSQL docs, Appendix A).
const (
	codeAdminShutdown      = "57P01"
	codeIdleSession        = "57P05"
	codeIdleInTransaction  = "25P03"
	codeQueryCanceled      = "57014"
	codeReadOnlyTx         = "25006"
	codeTooManyConnections = "53300"
	codeConfigLimit        = "53400"
	codeInvalidPassword    = "28P01"
	codeInvalidAuthSpec    = "28000"
	codeConnectionFailure  = "08006"
	codeProtocolViolation  = "08P01"
	codeUnknownDatabase    = "3D000"
	codeFeatureUnsupported = "0A000"
	codeDuplicatePstmt     = "42P05"
	codeInternalError      = "XX000"
)

// Error is an error pgguard reports to a client as an ErrorResponse. Message
// is what the client sees (it names the limit and the setting to change);
// Cause is for pgguard's own log only.
type Error struct {
	Severity string // ERROR or FATAL
	Code     string
	Message  string
	Detail   string
	Hint     string
	Cause    error
	raw      []byte // a server's ErrorResponse body, forwarded as it was
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s %s: %s: %v", e.Severity, e.Code, e.Message, e.Cause)
	}
	return fmt.Sprintf("%s %s: %s", e.Severity, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

// Fatal reports whether the client connection closes after this error.
func (e *Error) Fatal() bool { return e.Severity == "FATAL" }

// encode appends the ErrorResponse to dst.
func (e *Error) encode(dst []byte) []byte {
	if e.raw != nil {
		dst, at := beginMsg(dst, 'E')
		return endMsg(append(dst, e.raw...), at)
	}
	msg := pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
	out, err := msg.Encode(dst)
	if err != nil { // only on absurd sizes; never lose the error itself
		return dst
	}
	return out
}

func fatalf(code, format string, args ...any) *Error {
	return &Error{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Severity: "ERROR", Code: code, Message: fmt.Sprintf(format, args...)}
}

// clientError maps an internal error to what the client is told: the one
// table from causes to SQLSTATEs. fatal selects the severity for errors that
// end the session (at login, or when no server can be had in session mode).
func (p *Proxy) clientError(err error, db *database, fatal bool) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	sev := "ERROR"
	if fatal {
		sev = "FATAL"
	}
	cfg := p.cfg.Load()
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	var netErr net.Error
	var limitErr *limiter.LimitError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &limitErr):
		return &Error{Severity: "ERROR", Code: codeConfigLimit, Message: limitErr.Message, Cause: err}
	case errors.Is(err, pool.ErrWaitTimeout):
		return &Error{Severity: sev, Code: codeTooManyConnections, Cause: err,
			Message: fmt.Sprintf("no server connection for database %q within pool.wait_timeout = %s: all %d connections (pool.size + pool.max_overflow) are busy",
				db.name, cfg.Pool.WaitTimeout.Duration, cfg.PoolSize(db.name)+cfg.Pool.MaxOverflow),
			Hint: "raise pool.size, pool.max_overflow or pool.wait_timeout, or shorten the transactions holding connections"}
	case errors.Is(err, errServerSync):
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("could not apply this session's parameters (its SET values and startup options) on a server connection for database %q; the server's error is in pgguard's log", db.nameOr()),
			Hint:    "check the values this session SETs or passes in options=-c"}
	case errors.Is(err, failover.ErrRefused):
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("this pgguard instance cannot reach the primary %s of database %q while other instances sharing the Redis can: it answers errors rather than serve the fallback's possibly stale data (failover.split_policy = \"refuse\")",
				db.hostOf("primary"), db.nameOr()),
			Hint: "retry, or connect through another instance; set failover.split_policy = \"fail_over\" to serve the fallback instead"}
	case errors.Is(err, pool.ErrClosed):
		return &Error{Severity: "FATAL", Code: codeAdminShutdown, Cause: err, Message: "pgguard is shutting down"}
	case errors.As(err, &pgErr) && db != nil:
		// The upstream refused us (bad credentials in the URL, too many connections, Neon quota).
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("upstream %s for database %q refused the connection: %s (SQLSTATE %s)",
				db.upstreamHost(), db.name, pgErr.Message, pgErr.Code)}
	case errors.As(err, &certErr) && db != nil:
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("upstream %s for database %q presented a TLS certificate pgguard does not trust: %v",
				db.upstreamHost(), db.name, certErr.Err),
			Hint: "check the URL's sslmode and sslrootcert, and that pgguard's CA bundle (/etc/ssl/certs/ca-certificates.crt) holds the server's CA"}
	case errors.Is(err, syscall.ECONNREFUSED) && db != nil:
		// Not a timeout: nothing listens there (a Neon proxy refusing, a
		// fallback that is down).
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("upstream %s for database %q refused the connection: connection refused (nothing listens there)",
				db.upstreamHost(), db.name)}
	case errors.As(err, &connErr), errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		host := "?"
		if db != nil {
			host = db.upstreamHost()
		}
		return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
			Message: fmt.Sprintf("cannot reach upstream %s for database %q within pool.connect_timeout = %s",
				host, db.nameOr(), cfg.Pool.ConnectTimeout.Duration)}
	}
	return &Error{Severity: sev, Code: codeConnectionFailure, Cause: err,
		Message: fmt.Sprintf("server connection for database %q failed", db.nameOr())}
}
