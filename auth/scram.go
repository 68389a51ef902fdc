package auth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

const (
	scramMechanism  = "SCRAM-SHA-256"
	scramIterations = 4096 // PostgreSQL's default scram_iterations
	scramSaltLen    = 16   // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramNonceLen   = 18   // PostgreSQL's SCRAM_RAW_NONCE_LEN, before base64
)

// scramKeys is a parsed SCRAM-SHA-256 verifier (RFC 5802 §3): what the
// server stores instead of the password.
type scramKeys struct {
	iterations int
	salt       []byte
	storedKey  [sha256.Size]byte // H(ClientKey)
	serverKey  [sha256.Size]byte // HMAC(SaltedPassword, "Server Key")
}

// String formats k as PostgreSQL stores it in pg_authid.rolpassword.
func (k *scramKeys) String() string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s$%d:%s$%s:%s", scramMechanism, k.iterations,
		b64(k.salt), b64(k.storedKey[:]), b64(k.serverKey[:]))
}

// parseSCRAMVerifier parses PostgreSQL's verifier format,
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", all three
// base64 (PostgreSQL's parse_scram_secret).
func parseSCRAMVerifier(s string) (*scramKeys, bool) {
	mech, rest, ok1 := strings.Cut(s, "$")
	params, keys, ok2 := strings.Cut(rest, "$")
	iter, salt, ok3 := strings.Cut(params, ":")
	stored, server, ok4 := strings.Cut(keys, ":")
	if !ok1 || !ok2 || !ok3 || !ok4 || mech != scramMechanism {
		return nil, false
	}
	k := &scramKeys{}
	var err error
	if k.iterations, err = strconv.Atoi(iter); err != nil || k.iterations <= 0 {
		return nil, false
	}
	if k.salt, err = base64.StdEncoding.DecodeString(salt); err != nil || len(k.salt) == 0 {
		return nil, false
	}
	if !decodeKey(k.storedKey[:], stored) || !decodeKey(k.serverKey[:], server) {
		return nil, false
	}
	return k, true
}

// decodeKey decodes base64 s into dst, which it must fill exactly.
func decodeKey(dst []byte, s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && copy(dst, b) == len(dst) && len(b) == len(dst)
}

// deriveSCRAMKeys computes the verifier of password for salt and iterations
// (RFC 5802 §3), preparing the password with SASLprep first as PostgreSQL
// does.
func deriveSCRAMKeys(password string, salt []byte, iterations int) (*scramKeys, error) {
	salted, err := pbkdf2.Key(sha256.New, saslprep(password), salt, iterations, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("auth: deriving SCRAM keys: %w", err)
	}
	k := &scramKeys{iterations: iterations, salt: salt}
	k.storedKey = sha256.Sum256(hmacSHA256(salted, "Client Key"))
	copy(k.serverKey[:], hmacSHA256(salted, "Server Key"))
	return k, nil
}

// SCRAMVerifier returns a fresh SCRAM-SHA-256 verifier for password, with a
// random 16-byte salt and 4096 iterations, in the format PostgreSQL stores in
// pg_authid.rolpassword: it can be used as a pgguard secret or with ALTER
// ROLE ... PASSWORD, and a verifier copied from pg_authid works as a secret.
func SCRAMVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	_, _ = rand.Read(salt) // never fails (crypto/rand docs)
	k, err := deriveSCRAMKeys(password, salt, scramIterations)
	if err != nil {
		return "", err
	}
	return k.String(), nil
}

// IsSCRAMVerifier reports whether secret is a SCRAM-SHA-256 verifier in
// PostgreSQL's format.
func IsSCRAMVerifier(secret string) bool {
	_, ok := parseSCRAMVerifier(secret)
	return ok
}

// derivedVerifiers caches the verifiers derived from plain secrets, so that
// PBKDF2 runs once per password and process rather than once per login. The
// salt is then fixed for the life of the process, which SCRAM allows.
var derivedVerifiers = verifierCache{m: make(map[[sha256.Size]byte]*verifierEntry)}

// maxDerivedVerifiers bounds the cache; only config reloads that keep
// changing passwords could fill it, and then it starts over.
const maxDerivedVerifiers = 1024

// verifierCache maps SHA-256(password) to its derived verifier. It is safe
// for concurrent use; a login storm on a cold entry derives it once.
type verifierCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*verifierEntry // guarded by mu
}

// verifierEntry is derived once, outside the cache lock.
type verifierEntry struct {
	once sync.Once
	keys *scramKeys
	err  error
}

// get returns the verifier for password, deriving and caching it if needed.
func (c *verifierCache) get(password string) (*scramKeys, error) {
	h := sha256.Sum256([]byte(password))
	c.mu.Lock()
	e := c.m[h]
	if e == nil {
		if len(c.m) >= maxDerivedVerifiers {
			clear(c.m)
		}
		e = &verifierEntry{}
		c.m[h] = e
	}
	c.mu.Unlock()

	e.once.Do(func() {
		salt := make([]byte, scramSaltLen)
		_, _ = rand.Read(salt)
		e.keys, e.err = deriveSCRAMKeys(password, salt, scramIterations)
	})
	if e.err != nil {
		c.mu.Lock()
		if c.m[h] == e {
			delete(c.m, h)
		}
		c.mu.Unlock()
	}
	return e.keys, e.err
}

// authSCRAM runs SASL authentication with SCRAM-SHA-256 (docs §55.3.1):
//
//	S: AuthenticationSASL [SCRAM-SHA-256]
//	C: SASLInitialResponse  client-first-message
//	S: AuthenticationSASLContinue  server-first-message
//	C: SASLResponse  client-final-message
//	S: AuthenticationSASLFinal  server-final-message
func authSCRAM(conn io.ReadWriter, user, secret string, kind secretKind) error {
	var keys *scramKeys
	switch kind {
	case scramSecret:
		keys, _ = parseSCRAMVerifier(secret)
	case plainSecret:
		var err error
		if keys, err = derivedVerifiers.get(secret); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: the secret for user %q is an md5 hash, which cannot answer SCRAM-SHA-256 authentication: "+
			"use auth method md5 or plain, or configure the plain password or a SCRAM-SHA-256 verifier", ErrConfig, user)
	}

	// Only SCRAM-SHA-256: pgguard offers no channel binding (-PLUS) yet.
	if err := send(conn, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	body, err := receive(conn, "SASLInitialResponse")
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if err := decode(&initial, body, "SASLInitialResponse"); err != nil {
		return err
	}
	if initial.AuthMechanism != scramMechanism {
		return fmt.Errorf("%w: client selected SASL mechanism %q, but only %s was offered",
			ErrProtocolViolation, initial.AuthMechanism, scramMechanism)
	}
	first, err := parseClientFirst(string(initial.Data))
	if err != nil {
		return err
	}

	// server-first-message = nonce "," salt "," iteration-count (RFC 5802 §7);
	// the nonce is the client's with ours appended.
	raw := make([]byte, scramNonceLen)
	_, _ = rand.Read(raw)
	nonce := first.nonce + base64.StdEncoding.EncodeToString(raw)
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(keys.salt) +
		",i=" + strconv.Itoa(keys.iterations)
	if err := send(conn, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return err
	}

	if body, err = receive(conn, "SASLResponse"); err != nil {
		return err
	}
	var resp pgproto3.SASLResponse
	if err := decode(&resp, body, "SASLResponse"); err != nil {
		return err
	}
	final, err := parseClientFinal(string(resp.Data))
	if err != nil {
		return err
	}
	// Without channel binding, "c" is the base64 of the gs2-header the client
	// sent first (RFC 5802 §5.1, "c").
	if final.channelBinding != first.gs2Header {
		return fmt.Errorf("%w: SCRAM channel-binding attribute does not match the client's gs2-header", ErrProtocolViolation)
	}
	if subtle.ConstantTimeCompare([]byte(final.nonce), []byte(nonce)) != 1 {
		return fmt.Errorf("%w: SCRAM nonce does not match", ErrPasswordMismatch)
	}

	// AuthMessage, ClientProof and ServerSignature: RFC 5802 §3.
	authMessage := first.bare + "," + serverFirst + "," + final.withoutProof
	clientSignature := hmacSHA256(keys.storedKey[:], authMessage)
	clientKey := make([]byte, sha256.Size)
	subtle.XORBytes(clientKey, final.proof, clientSignature)
	storedKey := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(storedKey[:], keys.storedKey[:]) != 1 {
		return fmt.Errorf("%w: bad SCRAM proof", ErrPasswordMismatch)
	}

	serverSignature := hmacSHA256(keys.serverKey[:], authMessage)
	serverFinal := "v=" + base64.StdEncoding.EncodeToString(serverSignature)
	return send(conn, &pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
}

// clientFirst is a parsed client-first-message (RFC 5802 §7).
type clientFirst struct {
	gs2Header string // "n,," or "y,,"
	bare      string // client-first-message-bare, part of the AuthMessage
	nonce     string // c-nonce
}

// parseClientFirst parses
//
//	client-first-message = gs2-header client-first-message-bare
//	gs2-header = gs2-cbind-flag "," [ authzid ] ","
//	client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
//
// The username is ignored, as PostgreSQL does: the user is the one in the
// StartupMessage (docs §55.3.1).
func parseClientFirst(msg string) (clientFirst, error) {
	var cf clientFirst
	flag, rest, ok := strings.Cut(msg, ",")
	if !ok {
		return cf, malformed("client-first-message", "no gs2-header")
	}
	switch {
	case flag == "n", flag == "y":
		// "y": the client could bind but thinks we cannot, which is right
		// while only SCRAM-SHA-256 is offered; once -PLUS is, "y" must fail
		// (RFC 5802 §6, a downgrade).
	case strings.HasPrefix(flag, "p="):
		return cf, fmt.Errorf("%w: client requires SCRAM channel binding (%s), but only %s was offered",
			ErrProtocolViolation, flag[2:], scramMechanism)
	default:
		return cf, malformed("client-first-message", "bad gs2-cbind-flag")
	}
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok {
		return cf, malformed("client-first-message", "no gs2-header")
	}
	if authzid != "" {
		return cf, fmt.Errorf("%w: SCRAM authorization identity (a=) is not supported", ErrProtocolViolation)
	}
	cf.gs2Header = msg[:len(msg)-len(bare)]
	cf.bare = bare

	attrs := strings.Split(bare, ",")
	if strings.HasPrefix(attrs[0], "m=") {
		return cf, fmt.Errorf("%w: SCRAM mandatory extension (m=) is not supported", ErrProtocolViolation)
	}
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") || !strings.HasPrefix(attrs[1], "r=") {
		return cf, malformed("client-first-message", "want n=username,r=nonce")
	}
	cf.nonce = attrs[1][2:]
	if !isPrintable(cf.nonce) {
		return cf, malformed("client-first-message", "nonce empty or not printable")
	}
	if err := checkExtensions(attrs[2:], "client-first-message"); err != nil {
		return cf, err
	}
	return cf, nil
}

// clientFinal is a parsed client-final-message (RFC 5802 §7).
type clientFinal struct {
	channelBinding string // decoded "c" attribute
	nonce          string
	withoutProof   string // client-final-message-without-proof, part of the AuthMessage
	proof          []byte
}

// parseClientFinal parses
//
//	client-final-message-without-proof = channel-binding "," nonce ["," extensions]
//	client-final-message = client-final-message-without-proof "," proof
func parseClientFinal(msg string) (clientFinal, error) {
	var cf clientFinal
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return cf, malformed("client-final-message", "no proof")
	}
	cf.withoutProof = msg[:i]
	proof, err := base64.StdEncoding.Strict().DecodeString(msg[i+len(",p="):])
	if err != nil || len(proof) != sha256.Size {
		return cf, malformed("client-final-message", "bad proof")
	}
	cf.proof = proof

	attrs := strings.Split(cf.withoutProof, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "c=") || !strings.HasPrefix(attrs[1], "r=") {
		return cf, malformed("client-final-message", "want c=channel-binding,r=nonce")
	}
	cb, err := base64.StdEncoding.Strict().DecodeString(attrs[0][2:])
	if err != nil {
		return cf, malformed("client-final-message", "channel binding is not base64")
	}
	cf.channelBinding = string(cb)
	cf.nonce = attrs[1][2:]
	if err := checkExtensions(attrs[2:], "client-final-message"); err != nil {
		return cf, err
	}
	return cf, nil
}

// checkExtensions checks that attrs are well-formed optional extensions,
// attr-val = ALPHA "=" value (RFC 5802 §7), which are otherwise ignored.
func checkExtensions(attrs []string, what string) error {
	for _, a := range attrs {
		if len(a) < 2 || a[1] != '=' || !('a' <= a[0] && a[0] <= 'z' || 'A' <= a[0] && a[0] <= 'Z') {
			return malformed(what, "bad attribute")
		}
	}
	return nil
}

// isPrintable reports whether s is a non-empty RFC 5802 "printable":
// ASCII 0x21-0x7E except ",".
func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return s != ""
}

// malformed is the error for a SCRAM message that does not parse.
func malformed(what, why string) error {
	return fmt.Errorf("%w: malformed SCRAM %s: %s", ErrProtocolViolation, what, why)
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// errNoVerifier is returned by verifySCRAMPlain for a secret that is not a
// verifier; callers only pass verifiers.
var errNoVerifier = errors.New("auth: not a SCRAM-SHA-256 verifier")

// verifySCRAMPlain reports whether password matches the verifier secret,
// deriving the keys with the verifier's own salt and iterations
// (PostgreSQL's scram_verify_plain_password). It costs a full PBKDF2.
func verifySCRAMPlain(secret, password string) (bool, error) {
	want, ok := parseSCRAMVerifier(secret)
	if !ok {
		return false, errNoVerifier
	}
	got, err := deriveSCRAMKeys(password, want.salt, want.iterations)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(got.storedKey[:], want.storedKey[:]) == 1 &&
		subtle.ConstantTimeCompare(got.serverKey[:], want.serverKey[:]) == 1, nil
}
