package auth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestSCRAMWithPgconn(t *testing.T) {
	const user, pw = "alice", "s3cret-Pässword"
	verifier, err := SCRAMVerifier(pw)
	if err != nil {
		t.Fatal(err)
	}
	logins := []login{
		{"right password", user, pw, true},
		{"wrong password", user, "s3cret-password", false},
		{"again, cached", user, pw, true},
	}
	t.Run("plain secret", func(t *testing.T) { runLogins(t, SCRAM, pw, logins) })
	t.Run("SCRAMVerifier secret", func(t *testing.T) { runLogins(t, SCRAM, verifier, logins) })
	t.Run("PostgreSQL verifier", func(t *testing.T) {
		runLogins(t, SCRAM, pgVerifierAlice, []login{
			{"right password", "alice", pgPasswordAlice, true},
			{"wrong password", "alice", "correct horse battery", false},
		})
	})
	t.Run("md5 secret", func(t *testing.T) {
		expectConfigError(t, SCRAM, pgMD5Bob, "bob", pgPasswordBob, "is an md5 hash")
	})
}

func TestSCRAMVerifierFormat(t *testing.T) {
	v, err := SCRAMVerifier(pgPasswordAlice)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := parseSCRAMVerifier(v)
	if !ok || k.iterations != 4096 || len(k.salt) != 16 || k.String() != v {
		t.Fatalf("SCRAMVerifier() = %q, parsed %+v, %v", v, k, ok)
	}
	if v2, _ := SCRAMVerifier(pgPasswordAlice); v2 == v {
		t.Error("two verifiers share a salt")
	}

	// Ours and PostgreSQL's agree: same keys for the same salt and password.
	pg, _ := parseSCRAMVerifier(pgVerifierAlice)
	ours, err := deriveSCRAMKeys(pgPasswordAlice, pg.salt, pg.iterations)
	if err != nil {
		t.Fatal(err)
	}
	if ours.String() != pgVerifierAlice {
		t.Errorf("derived %s\nPostgreSQL %s", ours, pgVerifierAlice)
	}

	for _, bad := range []string{
		"", "pw", pgMD5Bob,
		strings.Replace(pgVerifierAlice, "SCRAM-SHA-256", "SCRAM-SHA-1", 1),
		strings.Replace(pgVerifierAlice, "$4096:", "$0:", 1),
		strings.Replace(pgVerifierAlice, "$4096:", "$x:", 1),
		strings.Replace(pgVerifierAlice, "0McL", "!McL", 1), // salt not base64
		pgVerifierAlice[:len(pgVerifierAlice)-8] + "=",      // short ServerKey
		strings.Replace(pgVerifierAlice, ":Qrs", "Qrs", 1),  // one key
	} {
		if IsSCRAMVerifier(bad) {
			t.Errorf("IsSCRAMVerifier(%q) = true", bad)
		}
	}
}

func TestVerifierCache(t *testing.T) {
	a, err := derivedVerifiers.get("cache me")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := derivedVerifiers.get("cache me")
	c, _ := derivedVerifiers.get("not me")
	if a != b {
		t.Error("same password derived twice")
	}
	if string(a.salt) == string(c.salt) {
		t.Error("two passwords share a salt")
	}
}

// scramClient is a test SCRAM-SHA-256 client (RFC 5802 §3) with knobs to
// send what pgconn never would.
type scramClient struct {
	password string
	salted   []byte                        // SaltedPassword, if already known
	gs2      string                        // gs2-header; "n,," if empty
	first    func(nonce string) string     // client-first-message-bare
	final    func(cb, nonce string) string // client-final-message-without-proof
	proof    func(proof []byte) string     // the p= value
}

// login runs the client side on fe, up to and including checking the
// server's signature. It returns the server's error (the step at which
// pgconn would see an ErrorResponse) as a nil error and stops.
func (c *scramClient) login(t testing.TB, fe *pgproto3.Frontend) {
	t.Helper()
	if c.gs2 == "" {
		c.gs2 = "n,,"
	}
	nonce := "rOprNGfwEbeRWgbNEkqO"
	bare := "n=,r=" + nonce
	if c.first != nil {
		bare = c.first(nonce)
	}
	expectMsg[*pgproto3.AuthenticationSASL](t, fe)
	sendMsg(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(c.gs2 + bare)})

	msg, err := fe.Receive()
	if err != nil {
		return // the server hung up: its error says why
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %T, want AuthenticationSASLContinue", msg)
	}
	serverFirst := string(cont.Data)
	var serverNonce, salt string
	var iterations int
	for _, attr := range strings.Split(serverFirst, ",") {
		switch attr[:2] {
		case "r=":
			serverNonce = attr[2:]
		case "s=":
			salt = attr[2:]
		case "i=":
			iterations, _ = strconv.Atoi(attr[2:])
		}
	}
	if !strings.HasPrefix(serverNonce, nonce) || len(serverNonce) <= len(nonce) {
		t.Fatalf("server nonce %q does not extend ours", serverNonce)
	}
	if c.salted == nil {
		rawSalt, _ := base64.StdEncoding.DecodeString(salt)
		c.salted, _ = pbkdf2.Key(sha256.New, c.password, rawSalt, iterations, 32)
	}

	cb := base64.StdEncoding.EncodeToString([]byte(c.gs2))
	withoutProof := "c=" + cb + ",r=" + serverNonce
	if c.final != nil {
		withoutProof = c.final(cb, serverNonce)
	}
	authMessage := bare + "," + serverFirst + "," + withoutProof
	clientKey := testHMAC(c.salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	proof := testHMAC(storedKey[:], authMessage)
	for i := range proof {
		proof[i] ^= clientKey[i]
	}
	p := base64.StdEncoding.EncodeToString(proof)
	if c.proof != nil {
		p = c.proof(proof)
	}
	sendMsg(t, fe, &pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + p)})

	msg, err = fe.Receive()
	if err != nil {
		return
	}
	final, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		t.Fatalf("got %T, want AuthenticationSASLFinal", msg)
	}
	want := "v=" + base64.StdEncoding.EncodeToString(testHMAC(testHMAC(c.salted, "Server Key"), authMessage))
	if string(final.Data) != want {
		t.Fatalf("server-final-message %q, want %q", final.Data, want)
	}
}

func testHMAC(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func TestSCRAMExchange(t *testing.T) {
	const pw = "pw"
	for _, tc := range []struct {
		name   string
		client scramClient
		want   error // nil, ErrPasswordMismatch or ErrProtocolViolation
		says   string
	}{
		{name: "ok", client: scramClient{}},
		{name: "client could bind (y)", client: scramClient{gs2: "y,,"}},
		{name: "extensions", client: scramClient{
			first: func(n string) string { return "n=ignored,r=" + n + ",x=ext" },
			final: func(cb, n string) string { return "c=" + cb + ",r=" + n + ",y=ext" },
		}},
		{name: "wrong password", client: scramClient{password: "PW"}, want: ErrPasswordMismatch, says: "proof"},
		{name: "proof flipped", want: ErrPasswordMismatch, says: "proof", client: scramClient{
			proof: func(p []byte) string { p[0] ^= 1; return base64.StdEncoding.EncodeToString(p) },
		}},
		{name: "other nonce", want: ErrPasswordMismatch, says: "nonce", client: scramClient{
			final: func(cb, n string) string { return "c=" + cb + ",r=" + otherNonce(n) },
		}},
		{name: "client nonce only", want: ErrPasswordMismatch, says: "nonce", client: scramClient{
			final: func(cb, n string) string { return "c=" + cb + ",r=rOprNGfwEbeRWgbNEkqO" },
		}},
		{name: "channel binding required", client: scramClient{gs2: "p=tls-server-end-point,,"},
			want: ErrProtocolViolation, says: "channel binding"},
		{name: "bad cbind flag", client: scramClient{gs2: "x,,"}, want: ErrProtocolViolation, says: "gs2-cbind-flag"},
		{name: "authzid", client: scramClient{gs2: "n,a=bob,"}, want: ErrProtocolViolation, says: "authorization identity"},
		{name: "mandatory extension", want: ErrProtocolViolation, says: "mandatory extension", client: scramClient{
			first: func(n string) string { return "m=ext,n=,r=" + n },
		}},
		{name: "no nonce", want: ErrProtocolViolation, says: "n=username,r=nonce", client: scramClient{
			first: func(string) string { return "n=" },
		}},
		{name: "empty nonce", want: ErrProtocolViolation, says: "nonce", client: scramClient{
			first: func(string) string { return "n=,r=" },
		}},
		{name: "nonce not printable", want: ErrProtocolViolation, says: "nonce", client: scramClient{
			first: func(n string) string { return "n=,r=" + n + "\x7f" },
		}},
		{name: "bad extension", want: ErrProtocolViolation, says: "attribute", client: scramClient{
			first: func(n string) string { return "n=,r=" + n + ",=x" },
		}},
		{name: "cbind mismatch", want: ErrProtocolViolation, says: "channel-binding", client: scramClient{
			final: func(_, n string) string { return "c=eSws,r=" + n }, // "y,," after "n,,"
		}},
		{name: "cbind not base64", want: ErrProtocolViolation, says: "base64", client: scramClient{
			final: func(_, n string) string { return "c=b!ws,r=" + n },
		}},
		{name: "final without nonce", want: ErrProtocolViolation, says: "c=channel-binding,r=nonce", client: scramClient{
			final: func(cb, _ string) string { return "c=" + cb },
		}},
		{name: "short proof", want: ErrProtocolViolation, says: "bad proof", client: scramClient{
			proof: func(p []byte) string { return base64.StdEncoding.EncodeToString(p[:31]) },
		}},
		{name: "proof not base64", want: ErrProtocolViolation, says: "bad proof", client: scramClient{
			proof: func([]byte) string { return "***" },
		}},
		{name: "proof not last", want: ErrProtocolViolation, says: "bad proof", client: scramClient{
			proof: func(p []byte) string { return base64.StdEncoding.EncodeToString(p) + ",x=y" },
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe, _, errc := pipeAuth(t, SCRAM, "alice", pw)
			if tc.client.password == "" {
				tc.client.password = pw
			}
			tc.client.login(t, fe)
			err := result(t, errc)
			switch {
			case tc.want == nil && err != nil:
				t.Errorf("want success, got %v", err)
			case tc.want != nil && (!errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says)):
				t.Errorf("want %v saying %q, got %v", tc.want, tc.says, err)
			}
		})
	}
}

func TestSCRAMWrongMechanism(t *testing.T) {
	fe, _, errc := pipeAuth(t, SCRAM, "alice", "pw")
	expectMsg[*pgproto3.AuthenticationSASL](t, fe)
	sendMsg(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
	if err := result(t, errc); !errors.Is(err, ErrProtocolViolation) || !strings.Contains(err.Error(), "SCRAM-SHA-256-PLUS") {
		t.Errorf("want ErrProtocolViolation naming the mechanism, got %v", err)
	}
}

func TestSCRAMWrongMessage(t *testing.T) {
	// A PasswordMessage where the SASLResponse belongs decodes as a
	// SASLResponse (the 'p' is told by context) and fails to parse.
	fe, _, errc := pipeAuth(t, SCRAM, "alice", "pw")
	expectMsg[*pgproto3.AuthenticationSASL](t, fe)
	sendMsg(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")})
	expectMsg[*pgproto3.AuthenticationSASLContinue](t, fe)
	sendMsg(t, fe, &pgproto3.PasswordMessage{Password: "pw"})
	if err := result(t, errc); !errors.Is(err, ErrProtocolViolation) {
		t.Errorf("want ErrProtocolViolation, got %v", err)
	}
}

// BenchmarkSCRAMLogin measures the server's side of one SCRAM-SHA-256
// login with a plain secret whose verifier is cached, over net.Pipe, with a
// client that has its SaltedPassword cached too.
func BenchmarkSCRAMLogin(b *testing.B) {
	const pw = "bench password"
	keys, err := derivedVerifiers.get(pw)
	if err != nil {
		b.Fatal(err)
	}
	salted, _ := pbkdf2.Key(sha256.New, pw, keys.salt, keys.iterations, 32)
	b.ReportAllocs()
	for b.Loop() {
		srv, cli := net.Pipe()
		errc := make(chan error, 1)
		go func() {
			defer srv.Close()
			errc <- Authenticate(srv, SCRAM, "alice", pw)
		}()
		c := scramClient{password: pw, salted: salted}
		c.login(b, pgproto3.NewFrontend(cli, cli))
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		cli.Close()
	}
}

// otherNonce changes the last character of n (a nonce that already ended in
// the replacement would pass, one run in 64).
func otherNonce(n string) string {
	if strings.HasSuffix(n, "X") {
		return n[:len(n)-1] + "Y"
	}
	return n[:len(n)-1] + "X"
}
