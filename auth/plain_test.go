package auth

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestPlainWithPgconn(t *testing.T) {
	verifier, err := SCRAMVerifier(pgPasswordAlice)
	if err != nil {
		t.Fatal(err)
	}
	alice := []login{
		{"right password", "alice", pgPasswordAlice, true},
		{"wrong password", "alice", "correct horse ", false},
		{"prefix", "alice", "correct", false},
	}
	t.Run("plain secret", func(t *testing.T) { runLogins(t, Plain, pgPasswordAlice, alice) })
	t.Run("SCRAMVerifier secret", func(t *testing.T) { runLogins(t, Plain, verifier, alice) })
	t.Run("PostgreSQL verifier", func(t *testing.T) { runLogins(t, Plain, pgVerifierAlice, alice) })
	t.Run("PostgreSQL md5 secret", func(t *testing.T) {
		runLogins(t, Plain, pgMD5Bob, []login{
			{"right password", "bob", pgPasswordBob, true},
			{"wrong password", "bob", "hunter3", false},
			{"the hash itself", "bob", pgMD5Bob, false},
		})
	})
}

// Non-ASCII passwords against verifiers PostgreSQL made: the client sends
// the password as typed, and SASLprep must prepare it as PostgreSQL did, so
// that equivalent spellings log in too.
func TestPlainSASLprep(t *testing.T) {
	for _, v := range saslprepVectors {
		t.Run(v.name, func(t *testing.T) {
			runLogins(t, Plain, v.verifier, []login{
				{"right password", "carol", v.password, true},
				{"prepared password", "carol", v.prepared, true},
				{"wrong password", "carol", v.password + "x", false},
			})
		})
	}
}

func TestPlainEmptyPassword(t *testing.T) {
	// PostgreSQL refuses an empty password whatever the secret.
	for _, secret := range []string{"pw", pgVerifierAlice, pgMD5Bob} {
		fe, _, errc := pipeAuth(t, Plain, "bob", secret)
		expectMsg[*pgproto3.AuthenticationCleartextPassword](t, fe)
		sendMsg(t, fe, &pgproto3.PasswordMessage{Password: ""})
		if err := result(t, errc); !errors.Is(err, ErrPasswordMismatch) {
			t.Errorf("secret %q: want ErrPasswordMismatch, got %v", secret, err)
		}
	}
}
