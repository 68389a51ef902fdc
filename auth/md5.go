package auth

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// md5HashLen is the length of "md5" followed by 32 hex digits.
const md5HashLen = 3 + 2*md5.Size

// IsMD5Hash reports whether secret is an md5 password hash as PostgreSQL
// stores it: "md5" followed by 32 lowercase hex digits.
func IsMD5Hash(secret string) bool {
	return len(secret) == md5HashLen && secret[:3] == "md5" && isHex(secret[3:])
}

// MD5Hash returns the md5 secret of user's password as PostgreSQL stores it,
// "md5" + hex(md5(password + user)).
func MD5Hash(password, user string) string {
	return md5Hex(password, user)
}

// md5Hex returns "md5" + hex(md5(a + b)).
func md5Hex(a, b string) string {
	sum := md5.Sum([]byte(a + b))
	return "md5" + hex.EncodeToString(sum[:])
}

// isHex reports whether s is made of lowercase hex digits.
func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// authMD5 runs AuthenticationMD5Password (docs §55.2.1): the client answers
// the random salt with "md5" + hex(md5(hex(md5(password + user)) + salt)), so
// the server needs the password or its md5 hash, not a SCRAM verifier.
func authMD5(conn io.ReadWriter, user, secret string, kind secretKind) error {
	var hash string // "md5" + hex(md5(password + user))
	switch kind {
	case md5Secret:
		hash = secret
	case plainSecret:
		hash = MD5Hash(secret, user)
	default:
		return fmt.Errorf("%w: the secret for user %q is a SCRAM-SHA-256 verifier, which cannot answer md5 authentication: "+
			"use auth method scram-sha-256 or plain, or configure the plain password or its md5 hash", ErrConfig, user)
	}

	req := &pgproto3.AuthenticationMD5Password{}
	_, _ = rand.Read(req.Salt[:]) // never fails (crypto/rand docs)
	pw, err := askPassword(conn, req)
	if err != nil {
		return err
	}
	want := md5Hex(hash[3:], string(req.Salt[:]))
	if subtle.ConstantTimeCompare([]byte(pw), []byte(want)) != 1 {
		return fmt.Errorf("%w: md5 response does not match", ErrPasswordMismatch)
	}
	return nil
}
