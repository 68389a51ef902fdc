package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/config"
)

// wire is a raw protocol session for transcripts.
type wire struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func newWire(t *testing.T, url string) *wire {
	conn := rawSession(t, url)
	return &wire{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

func (w *wire) send(msgs ...pgproto3.FrontendMessage) {
	w.t.Helper()
	for _, m := range msgs {
		w.fe.Send(m)
	}
	if err := w.fe.Flush(); err != nil {
		w.t.Fatal(err)
	}
}

// read returns what arrives within d (messages, with an error's
// SQLSTATE), stopping after a ReadyForQuery, or after an ErrorResponse
// when untilError.
func (w *wire) read(d time.Duration, untilError bool) string {
	w.t.Helper()
	w.conn.SetReadDeadline(time.Now().Add(d))
	defer w.conn.SetReadDeadline(time.Time{})
	var got []string
	for {
		msg, err := w.fe.Receive()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded):
			return strings.Join(got, " ")
		case err != nil:
			return strings.Join(append(got, "error: "+err.Error()), " ")
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, fmt.Sprintf("E(%s)", m.Code))
			if untilError {
				return strings.Join(got, " ")
			}
		case *pgproto3.ReadyForQuery:
			return strings.Join(append(got, fmt.Sprintf("Z(%c)", m.TxStatus)), " ")
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
		default:
			s := fmt.Sprintf("%T", m)
			got = append(got, s[strings.LastIndex(s, ".")+1:])
		}
	}
}

// until reads up to a ReadyForQuery, bounded generously.
func (w *wire) until() string { return w.read(20*time.Second, false) }

// timeoutTranscript: a statement timeout fires between a Parse and its
// Describe. The client sends Parse and Flush, reads what comes for a
// while (the timeout fires meanwhile: up to wait, or its error), then Describe and Sync, and then
// runs a query; slowParse makes the Parse itself wait on a lock. inTx
// runs it inside a transaction block. set is the session's SET, if any.
func timeoutTranscript(t *testing.T, url, set string, slowParse, inTx bool, wait time.Duration) []string {
	ctx := context.Background()
	w := newWire(t, url)
	defer w.conn.Close()
	var out []string
	if set != "" {
		w.send(&pgproto3.Query{String: set})
		out = append(out, "SET: "+w.until())
	}
	if inTx {
		w.send(&pgproto3.Query{String: "BEGIN"})
		out = append(out, "BEGIN: "+w.until())
	}
	sql := "SELECT 1"
	var locker *pgx.Conn
	if slowParse {
		sql = "SELECT * FROM ext_timeout_locked"
		locker = connect(t, pg.URL("app"), pgx.QueryExecModeSimpleProtocol)
		if _, err := locker.Exec(ctx, "BEGIN; LOCK TABLE ext_timeout_locked IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
	}
	w.send(&pgproto3.Parse{Query: sql}, &pgproto3.Flush{})
	out = append(out, "Parse, Flush: "+w.read(wait, true))
	if locker != nil {
		locker.Exec(ctx, "COMMIT")
	}
	w.send(&pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	out = append(out, "Describe, Sync: "+w.until())
	if inTx {
		w.send(&pgproto3.Query{String: "ROLLBACK"})
		out = append(out, "ROLLBACK: "+w.until())
	}
	w.send(&pgproto3.Query{String: "SELECT 2"})
	out = append(out, "SELECT 2: "+w.until())
	return out
}

// TestTimeoutBetweenParseAndDescribe: a statement timeout that fires
// between a Parse and its Describe (PostgreSQL's statement_timeout runs
// from the Parse to the Sync in the extended protocol: while the server
// waits for the client's next message it fails that message, the
// Describe; during a Parse that waits on a lock it fails the Parse at
// once) leaves the client where a direct connection would: the same
// replies, and a session that goes on; and the server clean.
func TestTimeoutBetweenParseAndDescribe(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS ext_timeout_locked; CREATE TABLE ext_timeout_locked (v int); GRANT ALL ON ext_timeout_locked TO tester"); err != nil {
		t.Fatal(err)
	}
	const set = "SET statement_timeout = '150ms'"
	cases := []struct {
		name            string
		slowParse, inTx bool
	}{
		{"idle between", false, false},
		{"idle between, in a transaction", false, true},
		{"slow Parse", true, false},
	}
	for _, mode := range []string{"transaction", "session"} {
		g := startGuard(t, testConfig(mode))
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				direct := timeoutTranscript(t, pg.URL("app"), set, c.slowParse, c.inTx, 400*time.Millisecond)
				got := timeoutTranscript(t, g.url("app"), set, c.slowParse, c.inTx, 400*time.Millisecond)
				if strings.Join(got, "\n") != strings.Join(direct, "\n") {
					t.Fatalf("through pgguard:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(direct, "\n"))
				}
				// Its server is clean: the next client there runs as usual.
				for i := 0; i < 2; i++ {
					other := newWire(t, g.url("app"))
					other.send(&pgproto3.Query{String: "SELECT 3"})
					if s := other.until(); s != "RowDescription DataRow CommandComplete Z(I)" {
						t.Fatalf("next client: %s", s)
					}
					other.conn.Close()
				}
			})
		}
	}
}

// TestQueryTimeoutSlowParse: pgguard's pool.query_timeout, like
// PostgreSQL's statement_timeout in the extended protocol, runs from a
// batch's first message: a Parse stuck on a lock, sent with Flush, is
// cancelled without waiting for the client's Sync, and the client's next
// messages find the session as a direct connection with statement_timeout
// would leave it.
func TestQueryTimeoutSlowParse(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS ext_timeout_locked; CREATE TABLE ext_timeout_locked (v int); GRANT ALL ON ext_timeout_locked TO tester"); err != nil {
		t.Fatal(err)
	}
	direct := timeoutTranscript(t, pg.URL("app"), "SET statement_timeout = '300ms'", true, false, 3*time.Second)
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(mode)
			cfg.Pool.QueryTimeout = config.D(300 * time.Millisecond)
			g := startGuard(t, cfg)
			got := timeoutTranscript(t, g.url("app"), "SET statement_timeout = 0", true, false, 3*time.Second)
			if strings.Join(got, "\n") != strings.Join(direct, "\n") {
				t.Fatalf("through pgguard:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(direct, "\n"))
			}
		})
	}
}
