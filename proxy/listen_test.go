package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/metrics"
	"github.com/pgguard/pgguard/proxy"
)

// listenBackends counts PostgreSQL backends that listen (their last
// statement a LISTEN): pgguard's listening connection, and clients pinned
// to a server by one.
func listenBackends(t testing.TB) int {
	t.Helper()
	n, err := pg.QueryInt(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester' AND query ~* '^\\s*(UN)?LISTEN'")
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// testerActivity lists the test user's backends (pid, state, last
// statement), for a failure's message.
func testerActivity(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.SuperURL("app"))
	if err != nil {
		return err.Error()
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT pid, state, query FROM pg_stat_activity WHERE usename = 'tester' ORDER BY pid")
	if err != nil {
		return err.Error()
	}
	var out []string
	for rows.Next() {
		var pid int
		var state, query string
		if err := rows.Scan(&pid, &state, &query); err != nil {
			return err.Error()
		}
		out = append(out, fmt.Sprintf("%d %s %q", pid, state, query))
	}
	return strings.Join(out, "; ")
}

// waitNote waits up to d for a notification on conn.
func waitNote(conn *pgx.Conn, d time.Duration) (*pgconn.Notification, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return conn.WaitForNotification(ctx)
}

// execTag runs sql and returns its command tag or its SQLSTATE.
func execTag(conn *pgx.Conn, sql string) string {
	tag, err := conn.Exec(context.Background(), sql)
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return "ERROR " + pe.Code
	}
	if err != nil {
		return "ERROR " + err.Error()
	}
	return tag.String()
}

// TestListenAnswersLikeServer replays LISTEN statements in every
// transaction state through pgguard and directly: the replies match, and
// the client is not pinned.
func TestListenAnswersLikeServer(t *testing.T) {
	guardtest.CheckGoroutines(t)
	g := startGuard(t, testConfig("transaction"))
	ctx := context.Background()
	seq := []string{
		"LISTEN a", "UNLISTEN a", "UNLISTEN *", "LISTEN a; LISTEN b",
		"BEGIN", "LISTEN c", "UNLISTEN c", "COMMIT",
		"BEGIN", "SELECT 1/0", "LISTEN d", "ROLLBACK",
		"listen \"Mixed Case\"", "UNLISTEN nobody",
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		via := connect(t, g.url("app"), mode)
		direct := connect(t, pg.URL("app"), mode)
		for _, sql := range seq {
			got, want := execTag(via, sql), execTag(direct, sql)
			if got != want {
				t.Errorf("%v %q: pgguard %q, direct %q", mode, sql, got, want)
			}
		}
		var pinned string
		for _, c := range g.Clients() {
			pinned += c.Pinned
		}
		if pinned != "" {
			t.Errorf("a LISTEN pinned the client: %q", pinned)
		}
		via.Close(ctx)
	}
}

// TestListenTransactional checks that a LISTEN takes effect when its
// transaction commits, never when it rolls back, and that a client's own
// NOTIFY reaches it; the server holds one listening backend.
func TestListenTransactional(t *testing.T) {
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		cfg := testConfig("transaction")
		n.Route(t, cfg)
		g := startGuard(t, cfg)
		ctx := context.Background()
		a := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
		b := connect(t, g.url("app"), pgx.QueryExecModeExec)
		for _, sql := range []string{"BEGIN", "LISTEN rolled", "ROLLBACK", "BEGIN", "LISTEN committed", "COMMIT", "LISTEN own"} {
			if _, err := a.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		for _, sql := range []string{"NOTIFY rolled, 'x'", "BEGIN", "NOTIFY committed, 'rolled back'", "ROLLBACK", "NOTIFY committed, 'one'"} {
			if _, err := b.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if _, err := a.Exec(ctx, "SELECT pg_notify('own', 'mine')"); err != nil {
			t.Fatal(err)
		}
		var got []string
		for len(got) < 2 {
			nt, err := waitNote(a, 5*time.Second)
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			got = append(got, nt.Channel+":"+nt.Payload)
		}
		if strings.Join(got, " ") != "committed:one own:mine" {
			t.Errorf("notifications %v, want committed:one own:mine", got)
		}
		if nt, err := waitNote(a, 200*time.Millisecond); err == nil {
			t.Errorf("unexpected notification %s:%s", nt.Channel, nt.Payload)
		}
		if n := listenBackends(t); n != 1 {
			t.Errorf("%d listening backends, want 1; the user's backends: %s", n, testerActivity(t))
		}
	})
}

// TestListenGap terminates the listening backend: nothing reconnects by
// itself; the next query re-establishes it, every subscriber is told of
// the gap, and delivery resumes.
func TestListenGap(t *testing.T) { guardtest.EachNet(t, listenGap) }

func listenGap(t *testing.T, n guardtest.Net) {
	cfg := testConfig("transaction")
	n.Route(t, cfg)
	g := startGuard(t, cfg)
	ctx := context.Background()
	sub := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	var notices []string
	var mu sync.Mutex
	cc, _ := pgx.ParseConfig(g.url("app"))
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Severity+" "+n.Message)
		mu.Unlock()
	}
	sub2, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close(ctx)
	for _, c := range []*pgx.Conn{sub, sub2} {
		if _, err := c.Exec(ctx, "LISTEN gap"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pg.QueryInt(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'tester' AND query ILIKE 'LISTEN%'"); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "the listener to notice", func() bool {
		ls := g.Listeners()
		return len(ls) == 1 && ls[0].State == "down"
	})
	time.Sleep(300 * time.Millisecond)
	if n := listenBackends(t); n != 0 {
		t.Fatalf("%d listening backends during the gap: pgguard reconnected by itself", n)
	}
	if err := pg.Exec(ctx, "NOTIFY gap, 'lost'"); err != nil { // nobody listens: lost, as for a direct client
		t.Fatal(err)
	}
	other := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := other.Exec(ctx, "NOTIFY gap, 'after'"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{sub, sub2} {
		nt, err := waitNote(c, 5*time.Second)
		if err != nil || nt.Payload != "after" {
			t.Fatalf("after the gap: %v %v", nt, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || !strings.Contains(notices[0], `channel "gap"`) || !strings.HasPrefix(notices[0], "WARNING") {
		t.Errorf("gap notices %q", notices)
	}
	if ls := g.Listeners(); len(ls) != 1 || ls[0].Gaps != 1 || ls[0].State != "listening" {
		t.Errorf("listeners %+v", ls)
	}
	metrics := []string{"pgguard_listen_gaps_total", "pgguard_listen_connections", "pgguard_notifications_delivered_total", "pgguard_server_connections"}
	want := `
# HELP pgguard_listen_connections Listening server connections by database (1 while it listens for transaction-mode clients' LISTEN).
# TYPE pgguard_listen_connections gauge
pgguard_listen_connections{database="app"} 1
# HELP pgguard_listen_gaps_total Times the listening connection was re-established after the upstream closed it (notifications sent meanwhile were lost).
# TYPE pgguard_listen_gaps_total counter
pgguard_listen_gaps_total{database="app"} 1
# HELP pgguard_notifications_delivered_total Notifications queued to subscribed clients (one per client).
# TYPE pgguard_notifications_delivered_total counter
pgguard_notifications_delivered_total{database="app"} 2
`
	if err := testutil.GatherAndCompare(g.metrics.Registry, strings.NewReader(want), metrics[:3]...); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(g.metrics.Registry, metrics[3]); err != nil || n == 0 {
		t.Errorf("pgguard_server_connections: %d series, %v", n, err)
	}
	if !strings.Contains(scrape(t, g), `pgguard_server_connections{database="app",state="listening",upstream="primary"} 1`) {
		t.Errorf("no listening server connection in pgguard_server_connections")
	}
	if n := listenBackends(t); n != 1 {
		t.Errorf("%d listening backends, want 1", n)
	}
}

// TestListenSlowSubscriber: a client that LISTENs and stops reading is cut
// at notify.client_buffer, while another keeps receiving every notification.
func TestListenSlowSubscriber(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Notify.ClientBuffer = 256 << 10
	g := startGuard(t, cfg)
	ctx := context.Background()

	// The slow one never reads again after its LISTEN; its socket buffer
	// is small, so pgguard's buffer fills.
	pc, err := pgconn.ParseConfig(g.url("app"))
	if err != nil {
		t.Fatal(err)
	}
	pc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		}}
		return d.DialContext(ctx, network, addr)
	}
	slow, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Exec(ctx, "LISTEN flood").ReadAll(); err != nil {
		t.Fatal(err)
	}
	hc, err := slow.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()

	fast := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := fast.Exec(ctx, "LISTEN flood"); err != nil {
		t.Fatal(err)
	}
	sender := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	payload := strings.Repeat("x", 7900)
	const total = 1000 // 7.9 MB: past the slow client's buffer and what the kernel holds for it (4 MB)
	// The sender stays at most 8 notifications (63 KB) ahead of the fast
	// subscriber, which keeps up by construction, however loaded the
	// machine; the slow one falls behind by everything.
	done := make(chan error, 1)
	got := make(chan int, total)
	go func() {
		read := 0
		for i := 0; i < total; i++ {
			for read < i-8 {
				read = <-got
			}
			if _, err := sender.Exec(ctx, fmt.Sprintf("NOTIFY flood, '%d %s'", i, payload)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < total; i++ {
		got <- i
		nt, err := waitNote(fast, 10*time.Second)
		if err != nil {
			t.Fatalf("fast subscriber, notification %d: %v", i, err)
		}
		if want := fmt.Sprintf("%d ", i); !strings.HasPrefix(nt.Payload, want) {
			t.Fatalf("fast subscriber got %.10q, want %q...", nt.Payload, want)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The slow client's socket holds an error naming the setting, then EOF.
	hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(hc.Conn, hc.Conn)
	var last string
	for {
		msg, err := fe.Receive()
		if err != nil {
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			last = e.Code + " " + e.Message
		}
	}
	if !strings.Contains(last, "notify.client_buffer") || !strings.HasPrefix(last, "54000") {
		t.Errorf("slow client's last error %q", last)
	}
	ls := g.Listeners()
	if len(ls) != 1 || ls[0].Subscribers != 1 || ls[0].Dropped == 0 {
		t.Errorf("listeners %+v", ls)
	}
}

// TestListenExtendedLikeServer replays LISTEN over the extended protocol
// (ExecParams: Parse/Bind/Describe/Execute/Sync; Prepare, ExecPrepared and
// Deallocate of named and unnamed statements; in and out of transaction
// blocks, aborted ones included) through pgguard and directly: the replies
// match, and what pgguard answered for takes effect.
func TestListenExtendedLikeServer(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	ctx := context.Background()
	run := func(conn *pgconn.PgConn) []string {
		var out []string
		say := func(what string, err error) {
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				what += " ERROR " + pe.Code
			} else if err != nil {
				what += " ERROR " + err.Error()
			}
			out = append(out, what)
		}
		params := func(sql string) {
			res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			say(sql+": "+res.CommandTag.String(), res.Err)
		}
		simple := func(sql string) {
			_, err := conn.Exec(ctx, sql).ReadAll()
			say(sql, err)
		}
		prepared := func(name, sql string) {
			sd, err := conn.Prepare(ctx, name, sql, nil)
			if err == nil {
				say(fmt.Sprintf("prepare %q %s: %d params %d fields", name, sql, len(sd.ParamOIDs), len(sd.Fields)), nil)
			} else {
				say(fmt.Sprintf("prepare %q %s", name, sql), err)
			}
			res := conn.ExecPrepared(ctx, name, nil, nil, nil).Read()
			say(fmt.Sprintf("exec %q: %s", name, res.CommandTag), res.Err)
		}
		params("LISTEN a")
		prepared("l1", "LISTEN b")
		prepared("", "UNLISTEN a")
		res := conn.ExecPrepared(ctx, "l1", nil, nil, nil).Read()
		say("exec l1 again: "+res.CommandTag.String(), res.Err)
		say("deallocate l1", conn.Deallocate(ctx, "l1"))
		simple("BEGIN")
		params("LISTEN c")
		prepared("l2", "UNLISTEN c")
		simple("COMMIT")
		simple("BEGIN")
		simple("SELECT 1/0")
		params("LISTEN d")
		simple("ROLLBACK")
		params("SELECT 1")
		return out
	}
	var notes []string
	vc, err := pgconn.ParseConfig(g.url("app"))
	if err != nil {
		t.Fatal(err)
	}
	vc.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { notes = append(notes, n.Channel+":"+n.Payload) }
	via, err := pgconn.ConnectConfig(ctx, vc)
	if err != nil {
		t.Fatal(err)
	}
	defer via.Close(ctx)
	direct, err := pgconn.Connect(ctx, pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	got, want := run(via), run(direct)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("through pgguard:\n%s\ndirect:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range g.Clients() {
		if c.Pinned != "" {
			t.Errorf("client %d pinned: %s", c.ID, c.Pinned)
		}
	}
	// What took effect: b only (a unlistened, c unlistened in its block, d never).
	if err := pg.Exec(ctx, "NOTIFY a, '1'; NOTIFY c, '2'; NOTIFY d, '3'; NOTIFY b, '4'"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := via.WaitForNotification(wctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	via.Exec(ctx, "SELECT 1").ReadAll() // takes in anything that came after
	if strings.Join(notes, " ") != "b:4" {
		t.Errorf("notifications %v, want b:4 only", notes)
	}
	t.Logf("transcript:\n%s", strings.Join(got, "\n"))
	if ls := g.Listeners(); len(ls) != 1 || ls[0].Channel != "b" {
		t.Errorf("listeners %+v, want channel b only", ls)
	}
	// DISCARD ALL includes UNLISTEN *.
	if _, err := via.Exec(ctx, "DISCARD ALL").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if ls := g.Listeners(); len(ls) != 1 || ls[0].Channel != "" || ls[0].State != "closed" {
		t.Errorf("after DISCARD ALL: listeners %+v, want none", ls)
	}
}

// TestListenParkedAndScheduled: a subscriber idle long enough to park (and
// past client_idle_timeout: listening is not idling) gets notifications at
// once; with notify.reconnect_every the listening connection comes back
// after pg_terminate_backend without any query, and the parked subscriber
// hears of the gap.
func TestListenParkedAndScheduled(t *testing.T) {
	guardtest.CheckGoroutines(t)
	cfg := testConfig("transaction")
	cfg.Pool.ClientIdleTimeout = config.D(2 * time.Second)
	cfg.Notify.ReconnectEvery = config.D(300 * time.Millisecond)
	g := startGuard(t, cfg)
	ctx := context.Background()
	var mu sync.Mutex
	var notices []string
	cc, _ := pgx.ParseConfig(g.url("app"))
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Message)
		mu.Unlock()
	}
	sub, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	if _, err := sub.Exec(ctx, "LISTEN parked"); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "the subscriber to park", func() bool { return serving() == 0 })
	time.Sleep(2500 * time.Millisecond) // past client_idle_timeout
	if err := pg.Exec(ctx, "NOTIFY parked, 'one'"); err != nil {
		t.Fatal(err)
	}
	if nt, err := waitNote(sub, 5*time.Second); err != nil || nt.Payload != "one" {
		t.Fatalf("parked subscriber: %v %v", nt, err)
	}
	if _, err := pg.QueryInt(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'tester' AND query ILIKE 'LISTEN%'"); err != nil {
		t.Fatal(err)
	}
	guardtest.WaitFor(t, "the scheduled reconnect", func() bool {
		ls := g.Listeners()
		return len(ls) == 1 && ls[0].Gaps == 1 && ls[0].State == "listening"
	})
	if err := pg.Exec(ctx, "NOTIFY parked, 'two'"); err != nil {
		t.Fatal(err)
	}
	if nt, err := waitNote(sub, 5*time.Second); err != nil || nt.Payload != "two" {
		t.Fatalf("after the scheduled reconnect: %v %v", nt, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || !strings.Contains(notices[0], `"parked"`) {
		t.Errorf("notices %q", notices)
	}
}

// TestListenChunking sends LISTEN exchanges (a Query; psycopg's
// Parse/Bind/Describe/Execute/Sync; asyncpg's Parse/Describe/Flush then
// Bind/Execute/Sync of a named statement) cut in two at every byte, the
// pieces apart: the replies are the same bytes as for the whole exchange.
func TestListenChunking(t *testing.T) {
	g := startGuard(t, testConfig("transaction"))
	ctx := context.Background()
	msg := func(typ byte, parts ...string) []byte {
		body := strings.Join(parts, "")
		b := []byte{typ, 0, 0, 0, 0}
		b = append(b, body...)
		binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
		return b
	}
	cat := func(ms ...[]byte) []byte {
		var out []byte
		for _, m := range ms {
			out = append(out, m...)
		}
		return out
	}
	// Each exchange is a function of the cut, so a named statement gets a
	// name of its own each time (a Parse of a name in use fails).
	exchanges := map[string]func(cut int) [][]byte{
		"query": func(int) [][]byte { return [][]byte{msg('Q', "LISTEN q1; UNLISTEN q1\x00")} },
		"psycopg": func(int) [][]byte {
			return [][]byte{cat(msg('P', "\x00LISTEN p1\x00\x00\x00"), msg('B', "\x00\x00\x00\x00\x00\x00\x00\x00"),
				msg('D', "P\x00"), msg('E', "\x00\x00\x00\x00\x00"), msg('S'))}
		},
		"asyncpg": func(cut int) [][]byte {
			name := fmt.Sprintf("s%03d\x00", cut)
			return [][]byte{cat(msg('P', name, "LISTEN a1\x00\x00\x00"), msg('D', "S", name), msg('H')),
				cat(msg('B', "\x00", name, "\x00\x00\x00\x00\x00\x00"), msg('E', "\x00\x00\x00\x00\x00"), msg('S'))}
		},
	}
	// send writes each part, the last one cut at cut (0: whole), and reads
	// want[i] bytes of reply to part i (nil: until ReadyForQuery or a pause).
	send := func(conn net.Conn, parts [][]byte, cut int, want []int) [][]byte {
		var replies [][]byte
		buf := make([]byte, 4096)
		for i, p := range parts {
			if i == len(parts)-1 && cut > 0 {
				conn.Write(p[:cut])
				time.Sleep(2 * time.Millisecond)
				conn.Write(p[cut:])
			} else {
				conn.Write(p)
			}
			var got []byte
			for {
				d := 300 * time.Millisecond
				if want != nil {
					d = 5 * time.Second
				}
				conn.SetReadDeadline(time.Now().Add(d))
				n, err := conn.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil || want != nil && len(got) >= want[i] || want == nil && len(got) > 6 && got[len(got)-6] == 'Z' {
					break
				}
			}
			replies = append(replies, got)
		}
		return replies
	}
	for name, exchange := range exchanges {
		conn, err := pgconn.Connect(ctx, g.url("app"))
		if err != nil {
			t.Fatal(err)
		}
		hc, err := conn.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		defer hc.Conn.Close()
		want := send(hc.Conn, exchange(0), 0, nil)
		if !bytes.Contains(bytes.Join(want, nil), []byte("LISTEN\x00")) {
			t.Fatalf("%s: reply %q has no LISTEN", name, want)
		}
		var lens []int
		for _, w := range want {
			lens = append(lens, len(w))
		}
		parts := exchange(1)
		for cut := 1; cut < len(parts[len(parts)-1]); cut++ {
			if got := send(hc.Conn, exchange(cut), cut, lens); !bytes.Equal(bytes.Join(got, nil), bytes.Join(want, nil)) {
				t.Fatalf("%s cut at %d: %q, want %q", name, cut, got, want)
			}
		}
	}
	for _, c := range g.Clients() {
		if c.Pinned != "" {
			t.Errorf("client %d pinned: %s", c.ID, c.Pinned)
		}
	}
}

// TestListenFleetCap: the listening connection holds a lease of the fleet
// cap (here a per-instance cap: no Redis), so the pool's connections and
// it never pass fleet_max_connections together.
func TestListenFleetCap(t *testing.T) {
	cfg := testConfig("transaction")
	cfg.Pool.Size = 4
	cfg.Databases["app"].FleetMaxConnections = 2
	f, err := fleet.New(cfg, guardtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	p, err := proxy.New(cfg, guardtest.Logger(), m, proxy.WithFleet(f))
	if err != nil {
		t.Fatal(err)
	}
	g := &guard{Proxy: p, addr: guardtest.Serve(t, p), metrics: m}
	ctx := context.Background()
	sub := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
	if _, err := sub.Exec(ctx, "LISTEN capped"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	peak := 0
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			peak = max(peak, backendsOf(t))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for i := 0; i < 4; i++ {
		c := connect(t, g.url("app"), pgx.QueryExecModeSimpleProtocol)
		wg.Go(func() {
			if _, err := c.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(0.2); NOTIFY capped, '%d'", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-stopped
	for i := 0; i < 4; i++ {
		if _, err := waitNote(sub, 5*time.Second); err != nil {
			t.Fatalf("notification %d: %v", i, err)
		}
	}
	if peak > 2 {
		t.Errorf("%d server connections at the peak, over fleet_max_connections = 2", peak)
	}
	if n := listenBackends(t); n != 1 {
		t.Errorf("%d listening backends, want 1", n)
	}
}
