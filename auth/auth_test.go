package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Verifiers and hashes computed by PostgreSQL 15 (CREATE ROLE ... PASSWORD,
// then SELECT rolpassword FROM pg_authid), for the passwords beside them.
const (
	pgVerifierAlice = "SCRAM-SHA-256$4096:0McL6NqnBUmjxLfL5lngBw==$hXcvY75XauQhzkEBuEtM7nNtUbx3KPhe8TXf3TDw7qs=:QrsBQlglcOooW40VxbwE1/6o0tn44XHaQFY3TqbWOsk="
	pgPasswordAlice = "correct horse"
	pgMD5Bob        = "md5a2cc14bcc08bcb211f578153967abd6d" // user bob
	pgPasswordBob   = "hunter2"
)

// testServer is a tiny PostgreSQL server over loopback TCP that does nothing
// but authenticate: it reads the StartupMessage, calls Authenticate and
// answers AuthenticationOk + ReadyForQuery, or an ErrorResponse.
type testServer struct {
	ln      net.Listener
	method  Method
	secret  string
	results chan error // Authenticate's result, one per connection
	wg      sync.WaitGroup
}

func startServer(t *testing.T, method Method, secret string) *testServer {
	t.Helper()
	checkNoLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{ln: ln, method: method, secret: secret, results: make(chan error, 16)}
	s.wg.Go(s.accept)
	t.Cleanup(func() {
		ln.Close()
		waitGroup(t, &s.wg)
	})
	return s
}

func (s *testServer) accept() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() { s.results <- serveConn(conn, s.method, s.secret) })
	}
}

// serveConn is what pgguard's client side does around Authenticate.
func serveConn(conn net.Conn, method Method, secret string) error {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	be.SetMaxBodyLen(8192)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return fmt.Errorf("startup: %w", err)
	}
	startup, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return fmt.Errorf("startup: got %T", msg)
	}
	user := startup.Parameters["user"]

	err = Authenticate(conn, method, user, secret)
	switch {
	case err == nil:
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "17.0"})
		be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if err := be.Flush(); err != nil {
			return err
		}
		// Wait for the client's Terminate.
		for {
			msg, err := be.Receive()
			if err != nil {
				return nil
			}
			if _, ok := msg.(*pgproto3.Terminate); ok {
				return nil
			}
		}
	case errors.Is(err, ErrPasswordMismatch):
		sendError(be, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	case errors.Is(err, ErrProtocolViolation):
		sendError(be, "08P01", "protocol violation")
	case errors.Is(err, ErrConfig):
		sendError(be, "28000", "authentication is misconfigured for this user")
	}
	return err
}

func sendError(be *pgproto3.Backend, code, message string) {
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: message})
	_ = be.Flush()
}

// connect logs in with pgconn, the real client, and returns its error and
// the server's.
func (s *testServer) connect(t *testing.T, user, password string) (clientErr, serverErr error) {
	t.Helper()
	port := s.ln.Addr().(*net.TCPAddr).Port
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=db sslmode=disable", port, user))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, clientErr := pgconn.ConnectConfig(ctx, cfg)
	if clientErr == nil {
		if err := conn.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	select {
	case serverErr = <-s.results:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	return clientErr, serverErr
}

// login is one pgconn login attempt and what should come of it.
type login struct {
	name, user, password string
	ok                   bool
}

// runLogins connects once per login and checks the outcome on both sides: a
// success, or a wrong-password failure that the client sees as 28P01.
func runLogins(t *testing.T, method Method, secret string, logins []login) {
	t.Helper()
	s := startServer(t, method, secret)
	for _, l := range logins {
		clientErr, serverErr := s.connect(t, l.user, l.password)
		if l.ok {
			if clientErr != nil || serverErr != nil {
				t.Errorf("%s: want success, got client %v, server %v", l.name, clientErr, serverErr)
			}
			continue
		}
		if !errors.Is(serverErr, ErrPasswordMismatch) {
			t.Errorf("%s: server: want ErrPasswordMismatch, got %v", l.name, serverErr)
		}
		if clientErr == nil || !strings.Contains(clientErr.Error(), "28P01") {
			t.Errorf("%s: client: want a 28P01 error, got %v", l.name, clientErr)
		}
	}
}

// expectConfigError connects once and checks that the server refused with
// ErrConfig, saying why.
func expectConfigError(t *testing.T, method Method, secret, user, password, says string) {
	t.Helper()
	s := startServer(t, method, secret)
	clientErr, serverErr := s.connect(t, user, password)
	if !errors.Is(serverErr, ErrConfig) || !strings.Contains(serverErr.Error(), says) {
		t.Errorf("server: want ErrConfig saying %q, got %v", says, serverErr)
	}
	if clientErr == nil || !strings.Contains(clientErr.Error(), "28000") {
		t.Errorf("client: want a 28000 error, got %v", clientErr)
	}
}

// pipeAuth runs Authenticate on one end of a net.Pipe and returns a raw
// client on the other end, for exchanges pgconn would never send.
func pipeAuth(t *testing.T, method Method, user, secret string) (*pgproto3.Frontend, net.Conn, <-chan error) {
	t.Helper()
	checkNoLeaks(t)
	srv, cli := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = srv.SetDeadline(deadline)
	_ = cli.SetDeadline(deadline)
	errc := make(chan error, 1)
	go func() {
		defer srv.Close()
		errc <- Authenticate(srv, method, user, secret)
	}()
	t.Cleanup(func() { cli.Close() })
	return pgproto3.NewFrontend(cli, cli), cli, errc
}

// result waits for Authenticate's result.
func result(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Authenticate did not return")
		return nil
	}
}

// expectMsg receives the next backend message and checks its type.
func expectMsg[T pgproto3.BackendMessage](t testing.TB, fe *pgproto3.Frontend) T {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	m, ok := msg.(T)
	if !ok {
		t.Fatalf("got %T, want %T", msg, *new(T))
	}
	return m
}

func sendMsg(t testing.TB, fe *pgproto3.Frontend, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// checkNoLeaks fails the test if, once it and its cleanups are done, a
// goroutine is still in this package's server code.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			leaked := false
			for _, fn := range []string{"auth.Authenticate", "auth.serveConn", "auth.(*testServer)", "auth.pipeAuth"} {
				leaked = leaked || strings.Contains(stacks, fn)
			}
			if !leaked {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("leaked goroutines:\n%s", stacks)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("server goroutines did not finish")
	}
}

func TestAuthenticateConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method Method
		secret string
		says   string
	}{
		{"unknown method", "trust", "pw", `unknown auth method "trust"`},
		{"empty secret", SCRAM, "", "empty"},
		{"broken verifier", Plain, "SCRAM-SHA-256$4096:c2FsdA==$bad", "starts like a SCRAM-SHA-256 verifier"},
		{"uppercase md5", MD5, "md5A2CC14BCC08BCB211F578153967ABD6D", "lowercase"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cli, errc := pipeAuth(t, tc.method, "alice", tc.secret)
			// Nothing must be sent before the error: the pipe has no buffer, so
			// a send would block until the deadline.
			err := result(t, errc)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("want ErrConfig saying %q, got %v", tc.says, err)
			}
			cli.Close()
		})
	}
}

func TestValidateSecret(t *testing.T) {
	v, err := SCRAMVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	for _, good := range []string{"pw", "md5 is not a hash", v, pgVerifierAlice, pgMD5Bob} {
		if err := ValidateSecret(good); err != nil {
			t.Errorf("ValidateSecret(%q) = %v", good, err)
		}
	}
	for _, bad := range []string{"", "SCRAM-SHA-256$", v[:len(v)-4], "md5A2CC14BCC08BCB211F578153967ABD6D"} {
		if err := ValidateSecret(bad); err == nil {
			t.Errorf("ValidateSecret(%q) = nil", bad)
		}
	}
}

// A client that hangs up mid-exchange gets Authenticate an I/O error, not a
// mismatch or protocol violation, and leaves no goroutine behind.
func TestClientDisconnects(t *testing.T) {
	for _, method := range []Method{SCRAM, MD5, Plain} {
		t.Run(string(method), func(t *testing.T) {
			fe, cli, errc := pipeAuth(t, method, "alice", "pw")
			if _, err := fe.Receive(); err != nil { // the authentication request
				t.Fatal(err)
			}
			cli.Close()
			err := result(t, errc)
			if !isIOError(err) || errors.Is(err, ErrPasswordMismatch) || errors.Is(err, ErrProtocolViolation) {
				t.Errorf("want an I/O error, got %v", err)
			}
		})
	}
	t.Run("SCRAM after client-first", func(t *testing.T) {
		fe, cli, errc := pipeAuth(t, SCRAM, "alice", "pw")
		expectMsg[*pgproto3.AuthenticationSASL](t, fe)
		sendMsg(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")})
		expectMsg[*pgproto3.AuthenticationSASLContinue](t, fe)
		cli.Close()
		if err := result(t, errc); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("want ErrUnexpectedEOF, got %v", err)
		}
	})
	t.Run("TCP", func(t *testing.T) {
		s := startServer(t, SCRAM, "pw")
		conn, err := net.Dial("tcp", s.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(conn, conn)
		sendMsg(t, fe, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "alice"}})
		expectMsg[*pgproto3.AuthenticationSASL](t, fe)
		conn.Close()
		if err := result(t, s.results); !isIOError(err) {
			t.Errorf("want an I/O error, got %v", err)
		}
	})
	t.Run("Terminate", func(t *testing.T) {
		fe, _, errc := pipeAuth(t, Plain, "alice", "pw")
		expectMsg[*pgproto3.AuthenticationCleartextPassword](t, fe)
		sendMsg(t, fe, &pgproto3.Terminate{})
		if err := result(t, errc); !errors.Is(err, io.EOF) {
			t.Errorf("want EOF, got %v", err)
		}
	})
}

// Garbage where the client's answer belongs is a protocol violation, for
// every method.
func TestGarbageResponse(t *testing.T) {
	query, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	for _, method := range []Method{SCRAM, MD5, Plain} {
		for _, tc := range []struct {
			name string
			raw  []byte
		}{
			{"query", query},
			{"unknown type", []byte("z\x00\x00\x00\x08junk")},
			{"bad length", []byte("p\x00\x00\x00\x02")},
			// A 'p' whose body has no NUL: neither a SASLInitialResponse nor a
			// PasswordMessage.
			{"undecodable", []byte("p\x00\x00\x00\x07abc")},
		} {
			t.Run(string(method)+"/"+tc.name, func(t *testing.T) {
				fe, cli, errc := pipeAuth(t, method, "alice", "pw")
				if _, err := fe.Receive(); err != nil {
					t.Fatal(err)
				}
				// The pipe blocks until the server reads, which it may not.
				go func() { _, _ = cli.Write(tc.raw) }()
				if err := result(t, errc); !errors.Is(err, ErrProtocolViolation) {
					t.Errorf("want ErrProtocolViolation, got %v", err)
				}
			})
		}
	}
}
