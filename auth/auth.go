// Package auth is the server side of PostgreSQL password authentication:
// pgguard plays the server toward its clients and checks the password they
// give against the secret held in its configuration.
//
// The message flow is that of the PostgreSQL protocol docs, §55.2.1 "Start-up"
// (AuthenticationCleartextPassword, AuthenticationMD5Password) and §55.3 "SASL
// Authentication" (SCRAM-SHA-256, RFC 5802 and RFC 7677). Authenticate runs
// one exchange on a connection whose StartupMessage has already been read and
// stops short of AuthenticationOk, which the caller sends together with its
// ParameterStatus messages.
//
// A secret is one of three kinds, told apart the way PostgreSQL tells apart
// the contents of pg_authid.rolpassword: a SCRAM-SHA-256 verifier
// ("SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"), an md5 hash
// ("md5" followed by 32 lowercase hex digits, md5(password+username)), or else
// a plain password.
package auth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Method is an authentication method pgguard asks of its clients.
type Method string

const (
	// SCRAM is SASL authentication with SCRAM-SHA-256 (docs §55.3.1), without
	// channel binding. It works with a plain or a SCRAM verifier secret.
	SCRAM Method = "scram-sha-256"
	// MD5 is AuthenticationMD5Password (docs §55.2.1). It works with a plain or
	// an md5 secret.
	MD5 Method = "md5"
	// Plain is AuthenticationCleartextPassword (docs §55.2.1): the client sends
	// its password as is, so it belongs behind TLS. It works with every kind of
	// secret.
	Plain Method = "plain"
)

var (
	// ErrPasswordMismatch reports that the client did not prove it knows the
	// password: a wrong password, an unknown SCRAM nonce or a bad proof. The
	// caller answers it with SQLSTATE 28P01, "password authentication failed
	// for user ...", and tells the client nothing more.
	ErrPasswordMismatch = errors.New("auth: password authentication failed")

	// ErrProtocolViolation reports a client that broke the message flow: an
	// unexpected or undecodable message, a malformed SCRAM message, or a
	// request for channel binding that was not offered. The caller answers it
	// with SQLSTATE 08P01.
	ErrProtocolViolation = errors.New("auth: protocol violation")

	// ErrConfig reports that the configured method and secret cannot
	// authenticate the user at all, whatever the client sends: an unknown
	// method, an empty or malformed secret, or a SCRAM verifier where md5
	// needs the password or its md5 hash. It is returned before anything is
	// sent to the client, and its text names what to change.
	ErrConfig = errors.New("auth: configuration cannot authenticate this user")
)

// Authenticate runs the authentication exchange for method on conn, a
// connection whose StartupMessage the caller has already read, for user
// (the StartupMessage's "user") against secret, the configured plain
// password, SCRAM-SHA-256 verifier or md5 hash. It reads no further than
// the client's last authentication message and keeps no buffer.
//
// It returns nil once the client has proved it knows the password, without
// sending AuthenticationOk: that and what follows it are the caller's. Errors
// wrap ErrPasswordMismatch, ErrProtocolViolation or ErrConfig, or else the I/O
// error from the connection; errors.Is tells them apart.
//
// Authenticate sets no deadline: the caller bounds the exchange with one on
// the connection (PostgreSQL's authentication_timeout). Client messages are
// capped at maxMessage bytes.
func Authenticate(conn io.ReadWriter, method Method, user, secret string) error {
	kind, err := classify(secret)
	if err != nil {
		return fmt.Errorf("%w: the secret for user %q: %w", ErrConfig, user, err)
	}
	switch method {
	case SCRAM:
		return authSCRAM(conn, user, secret, kind)
	case MD5:
		return authMD5(conn, user, secret, kind)
	case Plain:
		return authPlain(conn, user, secret, kind)
	default:
		return fmt.Errorf("%w: unknown auth method %q for user %q (want %q, %q or %q)",
			ErrConfig, method, user, SCRAM, MD5, Plain)
	}
}

// ValidateSecret reports whether secret can be used by Authenticate. A
// secret that starts like a SCRAM-SHA-256 verifier or an md5 hash but does
// not parse as one is refused rather than taken for a plain password, which
// is what PostgreSQL would do but is almost always a copy-paste mistake in a
// config file.
func ValidateSecret(secret string) error {
	_, err := classify(secret)
	return err
}

// secretKind is what a configured secret holds.
type secretKind int

const (
	plainSecret secretKind = iota
	md5Secret
	scramSecret
)

// classify tells the kind of secret, as PostgreSQL's get_password_type does,
// but refuses near misses (see ValidateSecret).
func classify(secret string) (secretKind, error) {
	switch {
	case secret == "":
		return 0, errors.New("it is empty")
	case IsSCRAMVerifier(secret):
		return scramSecret, nil
	case strings.HasPrefix(secret, scramMechanism+"$"):
		return 0, errors.New(`it starts like a SCRAM-SHA-256 verifier but is not "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"`)
	case IsMD5Hash(secret):
		return md5Secret, nil
	case len(secret) == md5HashLen && strings.HasPrefix(secret, "md5") && isHex(strings.ToLower(secret[3:])):
		return 0, errors.New(`it looks like an md5 hash but its hex digits must be lowercase`)
	default:
		return plainSecret, nil
	}
}

// maxMessage caps a client's authentication message, as PostgreSQL's
// PG_MAX_AUTH_TOKEN_LENGTH does.
const maxMessage = 65535

// send writes msg to the client.
func send(conn io.Writer, msg pgproto3.BackendMessage) error {
	buf, err := msg.Encode(nil)
	if err == nil {
		_, err = conn.Write(buf)
	}
	if err != nil {
		return fmt.Errorf("auth: sending %T: %w", msg, err)
	}
	return nil
}

// receive reads the client's answer to an authentication request: the body
// of a 'p' message, whose exact type the caller knows from the context
// (docs §55.7). what names the expected message for errors. It reads the
// header and then the body, never past the message.
func receive(conn io.Reader, what string) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the client hung up while we wait
		}
		return nil, fmt.Errorf("auth: reading %s: %w", what, err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	switch {
	case n < 0 || n > maxMessage:
		return nil, fmt.Errorf("%w: reading %s: message length %d outside 4..%d", ErrProtocolViolation, what, n+4, maxMessage+4)
	case hdr[0] == 'X':
		return nil, fmt.Errorf("auth: client sent Terminate instead of %s: %w", what, io.EOF)
	case hdr[0] != 'p':
		return nil, fmt.Errorf("%w: expected %s, got message type %q", ErrProtocolViolation, what, hdr[0])
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("auth: reading %s: %w", what, err)
	}
	return body, nil
}

// decode decodes the body of a 'p' message into msg.
func decode(msg pgproto3.FrontendMessage, body []byte, what string) error {
	if err := msg.Decode(body); err != nil {
		return fmt.Errorf("%w: reading %s: %w", ErrProtocolViolation, what, err)
	}
	return nil
}

// isIOError tells a failed or closed connection from a message the client
// got wrong.
func isIOError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne)
}
