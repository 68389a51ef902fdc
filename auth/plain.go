package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// authPlain runs AuthenticationCleartextPassword (docs §55.2.1): the client
// sends its password in a PasswordMessage, which is checked against any kind
// of secret.
func authPlain(conn io.ReadWriter, user, secret string, kind secretKind) error {
	pw, err := askPassword(conn, &pgproto3.AuthenticationCleartextPassword{})
	if err != nil {
		return err
	}
	match, err := checkPlain(kind, secret, user, pw)
	if err != nil {
		return err
	}
	if !match {
		return fmt.Errorf("%w: cleartext password does not match", ErrPasswordMismatch)
	}
	return nil
}

// checkPlain reports whether password, as the client sent it, matches
// secret (PostgreSQL's plain_crypt_verify). An empty password never matches.
func checkPlain(kind secretKind, secret, user, password string) (bool, error) {
	if password == "" {
		return false, nil
	}
	switch kind {
	case scramSecret:
		return verifySCRAMPlain(secret, password)
	case md5Secret:
		return subtle.ConstantTimeCompare([]byte(MD5Hash(password, user)), []byte(secret)) == 1, nil
	default:
		// Compare digests so that the time taken says nothing of the length.
		a, b := sha256.Sum256([]byte(password)), sha256.Sum256([]byte(secret))
		return subtle.ConstantTimeCompare(a[:], b[:]) == 1, nil
	}
}

// CheckPassword reports whether password, given in clear by a client (for
// example over HTTP basic auth), matches secret: a plain password, a
// SCRAM-SHA-256 verifier or an md5 hash.
func CheckPassword(user, password, secret string) bool {
	kind, err := classify(secret)
	if err != nil {
		return false
	}
	ok, err := checkPlain(kind, secret, user, password)
	return err == nil && ok
}

// askPassword sends req and returns the password of the client's
// PasswordMessage answer.
func askPassword(conn io.ReadWriter, req pgproto3.BackendMessage) (string, error) {
	if err := send(conn, req); err != nil {
		return "", err
	}
	body, err := receive(conn, "PasswordMessage")
	if err != nil {
		return "", err
	}
	var pw pgproto3.PasswordMessage
	if err := decode(&pw, body, "PasswordMessage"); err != nil {
		return "", err
	}
	return pw.Password, nil
}
