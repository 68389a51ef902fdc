package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// replyCutter relays TCP connections to a server and, once armed with a
// CommandComplete tag, cuts every connection when the server sends that
// tag, before a byte of it reaches pgguard: the server did the work, the
// reply is lost. It also cuts every connection on demand.
type replyCutter struct {
	ln     net.Listener
	target string
	armed  atomic.Pointer[[]byte]
	mu     sync.Mutex
	conns  []net.Conn
}

func startReplyCutter(t *testing.T, target string) *replyCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replyCutter{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); r.cutAll() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, s)
			r.mu.Unlock()
			go func() { io.Copy(s, c); s.Close(); c.Close() }()
			go r.serverToClient(s, c)
		}
	}()
	return r
}

// arm makes the next reply carrying CommandComplete tag cut its connection.
func (r *replyCutter) arm(tag string) {
	msg := append([]byte{'C', 0, 0, 0, byte(4 + len(tag) + 1)}, tag...)
	msg = append(msg, 0)
	r.armed.Store(&msg)
}

func (r *replyCutter) serverToClient(s, c net.Conn) {
	defer s.Close()
	defer c.Close()
	buf := make([]byte, 64<<10)
	var tail []byte // the end of the last read, for a tag split across reads
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if p := r.armed.Load(); p != nil && bytes.Contains(append(tail, buf[:n]...), *p) && r.armed.CompareAndSwap(p, nil) {
				return
			}
			tail = append(tail[:0], buf[max(0, n-32):n]...)
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *replyCutter) cutAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// TestLostReplyOutcome (finding 3 of issue 25): a client whose COMMIT, or
// autocommit statement, reached the server but whose reply was lost is told
// the outcome is unknown (08007), never that it rolled back, and pgguard
// does not run it again: the row is there exactly once. A client idle in a
// transaction whose server dies is told its transaction rolled back, which
// is true. With and without the query log (statement texts known or not),
// both pool modes.
func TestLostReplyOutcome(t *testing.T) {
	ctx := context.Background()
	if err := pg.Exec(ctx, "DROP TABLE IF EXISTS lost; CREATE TABLE lost (id int, how text); GRANT ALL ON lost TO tester"); err != nil {
		t.Fatal(err)
	}
	cut := startReplyCutter(t, pg.Addr())
	count := func(how string) int64 {
		n, err := pg.QueryInt(ctx, "SELECT count(*) FROM lost WHERE how = $1", how)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, mode := range []string{"transaction", "session"} {
		for _, withLog := range []bool{false, true} {
			cfg := testConfig(mode)
			cfg.Databases["app"].Primary = strings.Replace(pg.URL("app"), pg.Addr(), cut.ln.Addr().String(), 1)
			g := startGuardLogged(t, cfg, withLog)
			name := mode
			if withLog {
				name += "+querylog"
			}
			for _, exec := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
				how := name + " " + exec.String()
				// COMMIT reached the server; its reply did not reach pgguard.
				conn := connect(t, g.url("app"), exec)
				if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Exec(ctx, "INSERT INTO lost VALUES (1, $1)", how+" commit"); err != nil {
					t.Fatal(err)
				}
				cut.arm("COMMIT")
				_, err := conn.Exec(ctx, "COMMIT")
				checkUnknown(t, how+": COMMIT whose reply was lost", err)
				if n := count(how + " commit"); n != 1 {
					t.Errorf("%s: the committed row is there %d times, want 1", how, n)
				}
				// An autocommit INSERT: its implicit transaction committed.
				conn = connect(t, g.url("app"), exec)
				cut.arm("INSERT 0 1")
				_, err = conn.Exec(ctx, "INSERT INTO lost VALUES (2, $1)", how+" autocommit")
				checkUnknown(t, how+": autocommit INSERT whose reply was lost", err)
				if n := count(how + " autocommit"); n != 1 {
					t.Errorf("%s: the autocommitted row is there %d times, want 1", how, n)
				}
				// Idle in a transaction when the server connection dies: rolled back, truly.
				conn = connect(t, g.url("app"), exec)
				if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Exec(ctx, "INSERT INTO lost VALUES (3, $1)", how+" idle"); err != nil {
					t.Fatal(err)
				}
				cut.cutAll()
				time.Sleep(100 * time.Millisecond)
				_, err = conn.Exec(ctx, "COMMIT")
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "08006" || !strings.Contains(pe.Message, "rolled back") {
					t.Errorf("%s: idle in a transaction when the server died: %v, want 08006 saying it rolled back", how, err)
				}
				if n := count(how + " idle"); n != 0 {
					t.Errorf("%s: the uncommitted row is there %d times, want 0", how, n)
				}
			}
		}
	}
}

// checkUnknown fails unless err says the outcome is unknown (08007) and
// never that anything rolled back.
func checkUnknown(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08007" || !strings.Contains(pe.Message, "unknown") || strings.Contains(pe.Message, "rolled back") {
		t.Errorf("%s: %v, want SQLSTATE 08007 saying the outcome is unknown", what, err)
	}
}

// startGuardLogged starts pgguard, with a query log when withLog.
func startGuardLogged(t *testing.T, cfg *config.Config, withLog bool) *guard {
	t.Helper()
	if !withLog {
		return startGuard(t, cfg)
	}
	ql, err := querylog.New(config.QueryLog{Path: filepath.Join(t.TempDir(), "q.log"), Slow: config.D(time.Hour), MaxShapes: 100},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ql.Close() })
	return startGuard(t, cfg, func(p *proxy.Proxy) { p.QueryLog = ql })
}
