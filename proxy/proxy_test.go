package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/config"

	"github.com/pgguard/pgguard/internal/guardtest"
)

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func pgMessage(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Message
	}
	return ""
}

// TestManyClientsFewServers runs 60 clients doing real read-write
// transactions over 3 server connections in each mode and checks both the
// results and that pgguard never held more than 3 backends.
func TestManyClientsFewServers(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			guardtest.CheckGoroutines(t)
			ctx := context.Background()
			table := "many_" + mode
			if err := pg.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s; CREATE TABLE %s (client int, n int); GRANT ALL ON %s TO tester", table, table, table)); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(mode)
			cfg.Pool.Size = 3
			cfg.Pool.WaitTimeout = config.D(60 * time.Second)
			g := startGuard(t, cfg)

			const clients, txPerClient = 60, 15
			var maxBackends atomic.Int64
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
						if n := int64(backendsOf(t)); n > maxBackends.Load() {
							maxBackends.Store(n)
						}
					}
				}
			}()
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := 0; i < clients; i++ {
				wg.Add(1)
				go func(id int) {
					defer wg.Done()
					err := func() error {
						conn, err := pgx.ConnectConfig(ctx, mustParse(t, g.url("app"), pgx.QueryExecModeExec))
						if err != nil {
							return err
						}
						defer conn.Close(ctx)
						if mode == "session" {
							defer conn.Close(ctx) // free the session for the next client early
						}
						for j := 0; j < txPerClient; j++ {
							tx, err := conn.Begin(ctx)
							if err != nil {
								return err
							}
							if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1, $2)", table), id, j); err != nil {
								return err
							}
							var got int
							if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE client = $1", table), id).Scan(&got); err != nil {
								return err
							}
							if got != j+1 {
								return fmt.Errorf("client %d saw %d rows inside its transaction, want %d", id, got, j+1)
							}
							if err := tx.Commit(ctx); err != nil {
								return err
							}
						}
						return nil
					}()
					if err != nil {
						errs <- fmt.Errorf("client %d: %w", id, err)
					}
				}(i)
			}
			wg.Wait()
			close(stop)
			<-sampled
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			total, err := pg.QueryInt(ctx, "SELECT count(*) FROM "+table)
			if err != nil {
				t.Fatal(err)
			}
			if total != clients*txPerClient {
				t.Errorf("%d rows committed, want %d", total, clients*txPerClient)
			}
			if m := maxBackends.Load(); m > 3 || m == 0 {
				t.Errorf("pgguard held up to %d backends, cap is 3", m)
			}
			t.Logf("%s mode: %d clients x %d transactions over <= %d backends", mode, clients, txPerClient, maxBackends.Load())
		})
	}
}

func mustParse(t testing.TB, url string, mode pgx.QueryExecMode) *pgx.ConnConfig {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cc.DefaultQueryExecMode = mode
	return cc
}

// TestExecModesAndPipelines exercises the simple protocol, unnamed extended
// statements and a batch pipeline through transaction pooling.
func TestExecModesAndPipelines(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		conn := connect(t, g.url("app"), mode)
		var s string
		var n int64
		if err := conn.QueryRow(ctx, "SELECT $1::text || 'x', $2::int8 * 2", "a'b", int64(21)).Scan(&s, &n); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if s != "a'bx" || n != 42 {
			t.Fatalf("%v: got %q %d", mode, s, n)
		}
		batch := &pgx.Batch{}
		for i := 0; i < 50; i++ {
			batch.Queue("SELECT $1::int + 1", i)
		}
		br := conn.SendBatch(ctx, batch)
		for i := 0; i < 50; i++ {
			var v int
			if err := br.QueryRow().Scan(&v); err != nil || v != i+1 {
				t.Fatalf("%v batch row %d: %d %v", mode, i, v, err)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
		// An error mid-transaction aborts it; the server is then rolled back cleanly.
		if _, err := conn.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
		if err := conn.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("after error: %d %v", n, err)
		}
	}
}

// TestLargeMessages sends and receives values far larger than the read buffers.
func TestLargeMessages(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	big := strings.Repeat("0123456789", 500_000) // 5 MB
	var n int
	var echo string
	if err := conn.QueryRow(context.Background(), "SELECT length($1::text), $1::text", big).Scan(&n, &echo); err != nil {
		t.Fatal(err)
	}
	if n != len(big) || echo != big {
		t.Fatalf("round trip of %d bytes came back as %d", len(big), len(echo))
	}
	simple := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if err := simple.QueryRow(context.Background(), "SELECT length('"+big+"')").Scan(&n); err != nil || n != len(big) {
		t.Fatalf("large simple query: %d %v", n, err)
	}
}

func TestBadInput(t *testing.T) {
	guardtest.CheckGoroutines(t)
	cfg := testConfig("transaction")
	cfg.MaxMessageSize = 1 << 20
	cfg.Pool.MaxClientConn = 3
	g := startGuard(t, cfg)
	ctx := context.Background()

	t.Run("wrong password", func(t *testing.T) {
		_, err := pgx.Connect(ctx, strings.Replace(g.url("app"), testPassword, "nope", 1))
		if pgCode(err) != "28P01" {
			t.Fatalf("got %v, want 28P01", err)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, err := pgx.Connect(ctx, strings.Replace(g.url("app"), testUser+":", "ghost:", 1))
		if pgCode(err) != "28P01" {
			t.Fatalf("got %v, want 28P01", err)
		}
	})
	t.Run("unknown database", func(t *testing.T) {
		_, err := pgx.Connect(ctx, g.url("nosuchdb"))
		if pgCode(err) != "3D000" || !strings.Contains(pgMessage(err), "databases.nosuchdb") {
			t.Fatalf("got %v, want 3D000 naming the config key", err)
		}
	})
	t.Run("garbage startup", func(t *testing.T) {
		for _, junk := range [][]byte{
			[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
			{0, 0, 0, 3},
			{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0},
			{0, 0, 0, 8, 0, 9, 0, 0},
		} {
			c, err := net.Dial("tcp", g.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(junk)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1024)
			for {
				if _, err := c.Read(buf); err != nil {
					break // closed by pgguard
				}
			}
			c.Close()
		}
	})
	t.Run("message over max_message_size", func(t *testing.T) {
		conn := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
		_, err := conn.Exec(ctx, "SELECT '"+strings.Repeat("x", 2<<20)+"'")
		if pgCode(err) != "08P01" || !strings.Contains(pgMessage(err), "max_message_size") {
			t.Fatalf("got %v, want 08P01 naming max_message_size", err)
		}
	})
	t.Run("max_client_conn", func(t *testing.T) {
		var conns []*pgx.Conn
		defer func() {
			for _, c := range conns {
				c.Close(ctx)
			}
		}()
		var err error
		for i := 0; i < 4 && err == nil; i++ {
			var c *pgx.Conn
			if c, err = pgx.Connect(ctx, g.url("app")); err == nil {
				conns = append(conns, c)
			}
		}
		if pgCode(err) != "53300" || !strings.Contains(pgMessage(err), "max_client_conn") {
			t.Fatalf("got %v after %d connections, want 53300 naming max_client_conn", err, len(conns))
		}
	})
}

func TestUnreachableUpstream(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	cfg := testConfig("transaction")
	cfg.Databases["app"].Primary = "postgres://tester:very-secret-pw@" + dead + "/app?sslmode=disable"
	cfg.Pool.ConnectTimeout = config.D(2 * time.Second)
	cfg.Pool.WaitTimeout = config.D(time.Second)
	g := startGuard(t, cfg)
	_, err := pgx.Connect(context.Background(), g.url("app"))
	msg := pgMessage(err)
	if pgCode(err) != "08006" || !strings.Contains(msg, dead) || strings.Contains(msg, "very-secret-pw") {
		t.Fatalf("got %v; want 08006 naming %s without the password", err, dead)
	}
}

func TestWaitTimeout(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 1
	cfg.Pool.WaitTimeout = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	ctx := context.Background()
	holder := connect(t, g.url("app"), pgx.QueryExecModeExec)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	other := connect(t, g.url("app"), pgx.QueryExecModeExec)
	_, err = other.Exec(ctx, "SELECT 1")
	if pgCode(err) != "53300" || !strings.Contains(pgMessage(err), "pool.wait_timeout") {
		t.Fatalf("got %v, want 53300 naming pool.wait_timeout", err)
	}
	// The refused client's session survives and works once the server frees up.
	tx.Rollback(ctx)
	var n int
	if err := other.QueryRow(ctx, "SELECT 5").Scan(&n); err != nil || n != 5 {
		t.Fatalf("after refusal: %d %v", n, err)
	}
}

// TestDisconnectMidTransaction: a client vanishing inside a transaction must
// not leave a dirty server: its work is rolled back and the next client on the
// same (only) server starts clean.
func TestDisconnectMidTransaction(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			table := "dirty_" + mode
			pg.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int); GRANT ALL ON %s TO tester", table, table, table))
			cfg := testConfig(mode)
			cfg.Pool.Size = 1
			g := startGuard(t, cfg)
			a := connect(t, g.url("app"), pgx.QueryExecModeExec)
			if _, err := a.Exec(ctx, "BEGIN; INSERT INTO "+table+" VALUES (1); SET LOCAL work_mem = '7MB'"); err != nil {
				t.Fatal(err)
			}
			if mode == "session" {
				if _, err := a.Exec(ctx, "SET search_path = nowhere"); err != nil {
					t.Fatal(err)
				}
			}
			a.PgConn().Conn().Close() // vanish without Terminate
			guardtest.WaitFor(t, "server back in the pool", func() bool { return g.Pools()[0].ServersIdle == 1 })
			b := connect(t, g.url("app"), pgx.QueryExecModeExec)
			var n int64
			var path string
			if err := b.QueryRow(ctx, "SELECT count(*), current_setting('search_path') FROM "+table).Scan(&n, &path); err != nil {
				t.Fatal(err)
			}
			// SAVEPOINT outside a transaction block fails with 25P01: the
			// server is not inside the vanished client's transaction.
			_, err := b.Exec(ctx, "SAVEPOINT probe")
			if n != 0 || pgCode(err) != "25P01" || path == "nowhere" {
				t.Fatalf("next client saw rows=%d savepoint=%v search_path=%q; want a clean server", n, err, path)
			}
		})
	}
}

func TestCancelRequest(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	conn := connect(t, g.url("app"), pgx.QueryExecModeExec)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := conn.Exec(ctx, "SELECT pg_sleep(20)")
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("cancel did not stop the query: %v after %s", err, time.Since(start))
	}
	// A cancel for a client with no server linked is ignored safely.
	idle := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if err := idle.PgConn().CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := idle.QueryRow(context.Background(), "SELECT 3").Scan(&n); err != nil || n != 3 {
		t.Fatalf("after idle cancel: %d %v", n, err)
	}
}

// TestServerKilledWhileIdle: every pooled server is terminated (as Neon does
// when it suspends a compute); the next client work must not see an error.
func TestServerKilledWhileIdle(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 3
	g := startGuard(t, cfg)
	ctx := context.Background()
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		conns = append(conns, connect(t, g.url("app"), pgx.QueryExecModeExec))
	}
	var wg sync.WaitGroup
	for _, c := range conns { // open all three servers at once
		wg.Add(1)
		go func(c *pgx.Conn) { defer wg.Done(); c.Exec(ctx, "SELECT pg_sleep(0.2)") }(c)
	}
	wg.Wait()
	guardtest.WaitFor(t, "3 idle servers", func() bool { return g.Pools()[0].ServersIdle == 3 })
	if err := pg.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tester'"); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "dead servers removed without a query", func() bool { return g.Pools()[0].ServersIdle == 0 })
	for i, c := range conns {
		var n int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatalf("client %d after servers were terminated: %v", i, err)
		}
	}
}

// TestSessionReset: in session mode a server is DISCARD ALLed between clients.
func TestSessionReset(t *testing.T) {
	cfg := testConfig("session")
	cfg.Pool.Size = 1
	g := startGuard(t, cfg)
	ctx := context.Background()
	a := connect(t, g.url("app"), pgx.QueryExecModeExec)
	if _, err := a.Exec(ctx, "SET statement_timeout = '123s'; CREATE TEMP TABLE scratch (v int)"); err != nil {
		t.Fatal(err)
	}
	var pidA, pidB int
	a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA)
	a.Close(ctx)
	b := connect(t, g.url("app"), pgx.QueryExecModeExec)
	var timeout string
	var temps int
	if err := b.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('statement_timeout'), (SELECT count(*) FROM pg_tables WHERE tablename = 'scratch')").Scan(&pidB, &timeout, &temps); err != nil {
		t.Fatal(err)
	}
	if pidA != pidB {
		t.Fatalf("server not reused (pids %d, %d)", pidA, pidB)
	}
	if timeout == "123s" || temps != 0 {
		t.Fatalf("session state leaked to the next client: statement_timeout=%s temp tables=%d", timeout, temps)
	}
}

func TestIdleClientReaped(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.ClientIdleTimeout = config.D(500 * time.Millisecond)
	g := startGuard(t, cfg)
	ctx := context.Background()
	idle := connect(t, g.url("app"), pgx.QueryExecModeExec)
	busy := connect(t, g.url("app"), pgx.QueryExecModeExec)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := busy.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("busy client was closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err := idle.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("idle client still served after client_idle_timeout")
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code != "57P05" {
		t.Fatalf("got %v, want 57P05", err)
	}
}

// TestNegotiateProtocolVersion: a client asking for 3.2 with a _pq_ option is
// told what pgguard speaks, then logs in normally.
func TestNegotiateProtocolVersion(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32,
		Parameters: map[string]string{"user": testUser, "database": "app", "_pq_.fancy": "1"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
	if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.fancy" {
		t.Fatalf("got %#v, want NegotiateProtocolVersion(0, [_pq_.fancy])", msg)
	}
	msg, err = fe.Receive()
	if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok || err != nil {
		t.Fatalf("then %T %v, want AuthenticationSASL", msg, err)
	}
}

func TestGSSEncRefusedAndPlainSSL(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, code := range []uint32{80877104, 80877103} { // GSSENCRequest, SSLRequest without tls_cert
		var pkt [8]byte
		binary.BigEndian.PutUint32(pkt[:4], 8)
		binary.BigEndian.PutUint32(pkt[4:], code)
		c.Write(pkt[:])
		var resp [1]byte
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(resp[:]); err != nil || resp[0] != 'N' {
			t.Fatalf("request %d: got %q %v, want N", code, resp[0], err)
		}
	}
}

func TestClientTLS(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.TLSCert, cfg.TLSKey = selfSignedCert(t)
	g := startGuard(t, cfg)
	conn := connect(t, strings.Replace(g.url("app"), "sslmode=disable", "sslmode=require", 1), pgx.QueryExecModeExec)
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("client connection is %T, want *tls.Conn", conn.PgConn().Conn())
	}
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT 11").Scan(&n); err != nil || n != 11 {
		t.Fatalf("over TLS: %d %v", n, err)
	}
}

func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestShutdownLetsTransactionsFinish: a drain closes idle sessions with 57P01
// and lets a transaction in flight commit.
func TestShutdownLetsTransactionsFinish(t *testing.T) {
	ctx := context.Background()
	pg.Exec(ctx, "DROP TABLE IF EXISTS drain; CREATE TABLE drain (v int); GRANT ALL ON drain TO tester")
	g := startGuard(t, testConfig("transaction"))
	idle := connect(t, g.url("app"), pgx.QueryExecModeExec)
	busy := connect(t, g.url("app"), pgx.QueryExecModeExec)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO drain VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		shut <- g.Shutdown(sctx)
	}()
	guardtest.WaitFor(t, "idle client closed", func() bool {
		_, err := idle.Exec(ctx, "SELECT 1")
		return err != nil
	})
	if _, err := tx.Exec(ctx, "INSERT INTO drain VALUES (2)"); err != nil {
		t.Fatalf("transaction in flight cut by the drain: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during drain: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if n, _ := pg.QueryInt(ctx, "SELECT count(*) FROM drain"); n != 2 {
		t.Fatalf("%d rows committed, want 2", n)
	}
	if _, err := net.DialTimeout("tcp", g.addr, time.Second); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}
