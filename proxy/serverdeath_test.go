package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// idleEnding reads what an idle connection receives until it ends, without
// sending anything (as a driver's idle-connection check does): each
// message's type and, for an ErrorResponse, its severity and SQLSTATE;
// then "EOF". The wait is bounded generously, so a connection that is not
// closed fails the test instead of hanging it.
func idleEnding(t *testing.T, conn net.Conn) []string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	var got []string
	for {
		msg, err := fe.Receive()
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return append(got, "EOF")
		case err != nil:
			return append(got, "error: "+err.Error())
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, fmt.Sprintf("ErrorResponse %s %s", m.Severity, m.Code))
		default:
			got = append(got, fmt.Sprintf("%T", m))
		}
	}
}

// terminatedWhileIdle connects to url, runs a query, terminates the
// session's server by pg_backend_pid(), and returns what the idle
// connection then reads; byKey: with no query, by the process ID the
// driver was told at login.
func terminatedWhileIdle(t *testing.T, url string, byKey bool) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pc := connectPg(t, url)
	pid := fmt.Sprint(pc.PID())
	if !byKey {
		rr := pc.ExecParams(ctx, "SELECT pg_backend_pid()", nil, nil, nil, nil).Read()
		if rr.Err != nil {
			t.Fatal(rr.Err)
		}
		pid = string(rr.Rows[0][0])
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	if err := pg.Exec(ctx, "SELECT pg_terminate_backend("+pid+")"); err != nil {
		t.Fatal(err)
	}
	return idleEnding(t, hc.Conn)
}

// TestSessionServerDeathClosesClient: in session mode, a server that dies
// under an idle client (pg_terminate_backend, as a compute's suspend does)
// ends the client's connection at once: it reads the server's FATAL 57P01
// and end-of-file without sending anything, as on a direct connection, so
// a driver's idle-connection check (a read, a poll) sees it.
func TestSessionServerDeathClosesClient(t *testing.T) {
	direct := terminatedWhileIdle(t, pg.URL("app"), false)
	if len(direct) == 0 || direct[len(direct)-1] != "EOF" {
		t.Fatalf("direct connection read %v", direct)
	}
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		cfg := testConfig("session")
		n.Route(t, cfg)
		g := startGuard(t, cfg)
		for _, byKey := range []bool{false, true} {
			got := terminatedWhileIdle(t, g.url("app"), byKey)
			if strings.Join(got, "; ") != strings.Join(direct, "; ") {
				t.Fatalf("through pgguard (no query, terminated by the PID the driver was told: %v) the idle client read\n  %s\ndirect:\n  %s",
					byKey, strings.Join(got, "; "), strings.Join(direct, "; "))
			}
		}
	})

	// The upstream goes away without a word (its connection reset): the
	// idle client reads pgguard's FATAL saying so, then end-of-file.
	cfg := testConfig("session")
	u, relay := guardtest.Net{Name: "relay", Relay: &guardtest.Shapes{}}.URL(t, cfg.Databases["app"].Primary)
	cfg.Databases["app"].Primary = u
	g := startGuard(t, cfg)
	pc := connectPg(t, g.url("app"))
	if _, err := queryOne(t, pc, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	relay.Reset()
	got := idleEnding(t, hc.Conn)
	if strings.Join(got, "; ") != "ErrorResponse FATAL 08006; EOF" {
		t.Fatalf("after its upstream connection was reset, the idle client read %v; want pgguard's FATAL 08006, then EOF", got)
	}
}
