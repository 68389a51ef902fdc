package proxy_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sleeping runs sleep (a pg_sleep query) on each of pcs and returns once
// PostgreSQL runs them all; each one's outcome then arrives on the channel.
func sleeping(t *testing.T, sleep string, pcs ...*pgconn.PgConn) <-chan error {
	t.Helper()
	errc := make(chan error, len(pcs))
	for _, pc := range pcs {
		go func() {
			_, err := queryOne(t, pc, sleep)
			errc <- err
		}()
	}
	waitUntil(t, sleep+" to run", func() bool {
		n, err := pg.QueryInt(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", sleep)
		return err == nil && n == int64(len(pcs))
	})
	return errc
}

// connectPg opens a pgconn session to url, closed when the test ends.
func connectPg(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

// queryOne runs sql on pc and returns its first column of its first row.
func queryOne(t *testing.T, pc *pgconn.PgConn, sql string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rr := pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if rr.Err != nil {
		return "", rr.Err
	}
	if len(rr.Rows) == 0 {
		return "", nil
	}
	return string(rr.Rows[0][0]), nil
}

// secretOf is pc's BackendKeyData secret as a number (protocol 3.0: 4 bytes).
func secretOf(pc *pgconn.PgConn) uint32 { return binary.BigEndian.Uint32(pc.SecretKey()) }

// sendCancel sends a CancelRequest with key (pid, secret) to addr.
func sendCancel(t *testing.T, addr string, pid, secret uint32) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var b [16]byte
	for i, v := range []uint32{16, 80877102, pid, secret} {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	if _, err := conn.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	conn.Read(b[:1]) // the server closes it when done
}

// backendKeyTranscript is what a driver sees of its session's process ID
// through url (addr is where its cancel requests go): whether the PID it
// was told is pg_backend_pid(), whether pg_stat_activity shows that PID
// running the session's statements, whether a cancel with a wrong secret
// is ignored and one with the session's key cancels, and what the idle
// session reads after pg_terminate_backend of that PID.
func backendKeyTranscript(t *testing.T, url, addr string) []string {
	t.Helper()
	pc := connectPg(t, url)
	var out []string
	pid, err := queryOne(t, pc, "SELECT pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, fmt.Sprintf("told PID is pg_backend_pid(): %v", pid == fmt.Sprint(pc.PID())))

	marker := fmt.Sprintf("SELECT 'backendkey %d'", time.Now().UnixNano())
	if _, err := queryOne(t, pc, marker); err != nil {
		t.Fatal(err)
	}
	n, err := pg.QueryInt(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = $2", int(pc.PID()), marker)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, fmt.Sprintf("pg_stat_activity rows of the told PID running its query: %d", n))

	// A cancel with the wrong secret is ignored; the right key cancels.
	errc := sleeping(t, "SELECT pg_sleep(0.5)", pc)
	sendCancel(t, addr, pc.PID(), secretOf(pc)+1)
	out = append(out, fmt.Sprintf("after a cancel with a wrong secret: %v", pgCode(<-errc)))
	errc = sleeping(t, "SELECT pg_sleep(20)", pc)
	sendCancel(t, addr, pc.PID(), secretOf(pc))
	out = append(out, fmt.Sprintf("after a cancel with its key: %v", pgCode(<-errc)))

	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	if err := pg.Exec(context.Background(), fmt.Sprintf("SELECT pg_terminate_backend(%d)", pc.PID())); err != nil {
		t.Fatal(err)
	}
	out = append(out, "after pg_terminate_backend of the told PID: "+strings.Join(idleEnding(t, hc.Conn), "; "))
	return out
}

// TestSessionBackendKey: in session mode a driver is told its server's
// real process ID at login, so pg_backend_pid(), pg_stat_activity and
// pg_terminate_backend of the PID it reports work as on a direct
// connection; its cancels still go through pgguard, with pgguard's own
// secret (the server's never leaves pgguard), to the right server.
func TestSessionBackendKey(t *testing.T) {
	direct := backendKeyTranscript(t, pg.URL("app"), pg.Addr())
	for _, want := range []string{"told PID is pg_backend_pid(): true", "running its query: 1", "wrong secret: ", "with its key: 57014", "57P01; EOF"} {
		if !strings.Contains(strings.Join(direct, "\n"), want) {
			t.Fatalf("direct connection: %q not in\n%s", want, strings.Join(direct, "\n"))
		}
	}
	g := startGuard(t, testConfig("session"))
	got := backendKeyTranscript(t, g.url("app"), g.addr)
	if strings.Join(got, "\n") != strings.Join(direct, "\n") {
		t.Fatalf("through pgguard:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(direct, "\n"))
	}

	// Its own notifications carry the PID it was told, as directly.
	for _, url := range []string{pg.URL("app"), g.url("app")} {
		conn := connect(t, url, pgx.QueryExecModeExec)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := conn.Exec(ctx, "LISTEN backendkey_own; NOTIFY backendkey_own"); err != nil {
			t.Fatal(err)
		}
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if err != nil || n.PID != conn.PgConn().PID() {
			t.Fatalf("%s: own notification %+v, %v; want its PID %d", url, n, err, conn.PgConn().PID())
		}
	}

	// The key the driver holds is pgguard's: sent to the server itself,
	// it cancels nothing.
	pc := connectPg(t, g.url("app"))
	errc := sleeping(t, "SELECT pg_sleep(0.5)", pc)
	sendCancel(t, pg.Addr(), pc.PID(), secretOf(pc))
	if err := <-errc; err != nil {
		t.Fatalf("pgguard's cancel key sent straight to the server cancelled the query: %v", err)
	}
}

// TestBackendKeysUnique: every session's BackendKeyData differs (session
// mode: its server's PID; transaction mode: pgguard's client ID, which is
// not its server's), and a cancel reaches only its own session.
func TestBackendKeysUnique(t *testing.T) {
	cfg := testConfig("session")
	cfg.Pool.Size = 4
	gs := startGuard(t, cfg)
	gt := startGuard(t, testConfig("transaction"))
	seen := map[[2]uint32]bool{}
	pids := map[uint32]bool{}
	var sessions []*pgconn.PgConn
	for i := 0; i < 4; i++ {
		pc := connectPg(t, gs.url("app"))
		sessions = append(sessions, pc)
		seen[[2]uint32{pc.PID(), secretOf(pc)}] = true
		pids[pc.PID()] = true
	}
	if len(pids) != 4 {
		t.Fatalf("4 session-mode clients were told %d distinct PIDs", len(pids))
	}
	for i := 0; i < 4; i++ {
		pc := connectPg(t, gt.url("app"))
		seen[[2]uint32{pc.PID(), secretOf(pc)}] = true
		if pid, err := queryOne(t, pc, "SELECT pg_backend_pid()"); err != nil || pid == fmt.Sprint(pc.PID()) {
			t.Fatalf("transaction mode: told PID %d, pg_backend_pid %s, %v", pc.PID(), pid, err)
		}
	}
	if len(seen) != 8 {
		t.Fatalf("8 sessions got %d distinct keys", len(seen))
	}
	// A cancel of session 0 leaves session 1's query alone.
	errc := sleeping(t, "SELECT pg_sleep(1)", sessions[:2]...)
	sendCancel(t, gs.addr, sessions[0].PID(), secretOf(sessions[0]))
	codes := map[string]int{}
	for range 2 {
		codes[pgCode(<-errc)]++
	}
	if codes["57014"] != 1 || codes[""] != 1 {
		t.Fatalf("one cancel: outcomes %v, want one 57014 and one success", codes)
	}
}
