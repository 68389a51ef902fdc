package auth

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestMD5WithPgconn(t *testing.T) {
	logins := []login{
		{"right password", "bob", pgPasswordBob, true},
		{"wrong password", "bob", "hunter3", false},
		// An md5 hash is salted with the user name it was made for.
		{"other user", "alice", pgPasswordBob, false},
	}
	t.Run("plain secret", func(t *testing.T) {
		runLogins(t, MD5, pgPasswordBob, []login{
			{"right password", "bob", pgPasswordBob, true},
			{"wrong password", "bob", "hunter3", false},
			// A plain secret is hashed with whichever user logs in.
			{"other user", "alice", pgPasswordBob, true},
		})
	})
	t.Run("MD5Hash secret", func(t *testing.T) { runLogins(t, MD5, MD5Hash(pgPasswordBob, "bob"), logins) })
	t.Run("PostgreSQL md5 secret", func(t *testing.T) { runLogins(t, MD5, pgMD5Bob, logins) })
	t.Run("SCRAM verifier secret", func(t *testing.T) {
		expectConfigError(t, MD5, pgVerifierAlice, "alice", pgPasswordAlice, "is a SCRAM-SHA-256 verifier")
	})
}

func TestMD5Hash(t *testing.T) {
	if got := MD5Hash(pgPasswordBob, "bob"); got != pgMD5Bob {
		t.Errorf("MD5Hash = %q, PostgreSQL has %q", got, pgMD5Bob)
	}
	for s, want := range map[string]bool{
		pgMD5Bob:                               true,
		"md5A2CC14BCC08BCB211F578153967ABD6D":  false,
		"md5a2cc14bcc08bcb211f578153967abd6":   false,
		"md5a2cc14bcc08bcb211f578153967abd6dd": false,
		"xyza2cc14bcc08bcb211f578153967abd6d":  false,
		"md5a2cc14bcc08bcb211f578153967abd6g":  false,
		pgVerifierAlice:                        false,
	} {
		if IsMD5Hash(s) != want {
			t.Errorf("IsMD5Hash(%q) = %v", s, !want)
		}
	}
}

// The md5 response is computed over the salt sent; replaying one computed
// for another salt fails.
func TestMD5Salt(t *testing.T) {
	fe, _, errc := pipeAuth(t, MD5, "bob", pgMD5Bob)
	req := expectMsg[*pgproto3.AuthenticationMD5Password](t, fe)
	salt := req.Salt
	salt[0] ^= 1
	sendMsg(t, fe, &pgproto3.PasswordMessage{Password: md5Hex(pgMD5Bob[3:], string(salt[:]))})
	if err := result(t, errc); !errors.Is(err, ErrPasswordMismatch) {
		t.Errorf("want ErrPasswordMismatch, got %v", err)
	}

	fe, _, errc = pipeAuth(t, MD5, "bob", pgMD5Bob)
	req = expectMsg[*pgproto3.AuthenticationMD5Password](t, fe)
	sendMsg(t, fe, &pgproto3.PasswordMessage{Password: md5Hex(pgMD5Bob[3:], string(req.Salt[:]))})
	if err := result(t, errc); err != nil {
		t.Errorf("want success, got %v", err)
	}
}
