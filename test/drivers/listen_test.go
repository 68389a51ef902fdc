package drivers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// notifyChecker checks what one listening client receives: payloads
// "S<sender>:<seq>", each exactly once, each sender's in increasing seq,
// none of a rolled-back transaction ("rb...").
type notifyChecker struct {
	expected int
	count    int
	last     map[string]int
}

func (c *notifyChecker) add(channel, payload string) error {
	if strings.HasPrefix(payload, "rb") {
		return fmt.Errorf("notification of a rolled-back transaction: %s %s", channel, payload)
	}
	sender, s, _ := strings.Cut(payload, ":")
	seq, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("payload %q", payload)
	}
	if last, ok := c.last[sender]; ok && seq <= last {
		return fmt.Errorf("sender %s: seq %d after %d (duplicate or out of order)", sender, seq, last)
	}
	c.last[sender] = seq
	c.count++
	if c.count > c.expected {
		return fmt.Errorf("more than %d notifications", c.expected)
	}
	return nil
}

// TestListenFanOut is issue 30's acceptance test: 100 clients of five
// drivers (pgx WaitForNotification, lib/pq's Listener, psycopg 3
// notifies(), asyncpg add_listener, node-postgres on('notification'))
// LISTEN on 10 channels through transaction pooling with a pool of 2,
// while senders through pgguard and one direct connection commit NOTIFYs
// (some in transactions rolled back). Every client gets every committed
// notification exactly once, in order per sender, none rolled back; the
// server holds one listening backend; no client is pinned.
func TestListenFanOut(t *testing.T) {
	py := exec.Command(debianPython, "-c", "import psycopg, asyncpg").Run()
	requireTool(t, debianPython+" with psycopg 3 and asyncpg (Debian python3-psycopg, python3-asyncpg)", py)
	node, err := exec.LookPath("node")
	requireTool(t, "node", err)
	_, err = os.Stat("node/node_modules/pg/package.json")
	requireTool(t, "node-postgres (run: cd test/drivers/node && npm ci)", err)

	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		const channels = 10
		const pgxClients, pqClients, perTool = 40, 15, 15 // + psycopg, asyncpg, node: 100
		notifies := 10000
		if n.Splits() {
			notifies = 2000 // every server byte is a write and a read on the split network
		}
		if s := os.Getenv("PGGUARD_LISTEN_NOTIFIES"); s != "" {
			notifies, _ = strconv.Atoi(s)
		}
		const senders = 4 // through pgguard, plus one direct
		perSender := notifies / (senders + 1)
		expected := perSender * (senders + 1)
		clients := pgxClients + pqClients + 3*perTool

		g := startGuardOver(t, n, txConfig())
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := newCollect(clients + 8)

		// pgx.
		for i := 0; i < pgxClients; i++ {
			conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement))
			for c := 0; c < channels; c++ {
				if _, err := conn.Exec(ctx, fmt.Sprintf("LISTEN ch%d", c)); err != nil {
					t.Fatal(err)
				}
			}
			wg.Go(func() {
				chk := notifyChecker{expected: expected, last: map[string]int{}}
				wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
				defer cancel()
				for chk.count < expected {
					nt, err := conn.WaitForNotification(wctx)
					if err == nil {
						err = chk.add(nt.Channel, nt.Payload)
					}
					if err != nil {
						errs.add(fmt.Errorf("pgx client %d after %d notifications: %w", i, chk.count, err))
						return
					}
				}
			})
		}
		// lib/pq's Listener.
		for i := 0; i < pqClients; i++ {
			l := pq.NewListener(g.url(), 10*time.Millisecond, time.Second, nil)
			t.Cleanup(func() { l.Close() })
			for c := 0; c < channels; c++ {
				if err := l.Listen(fmt.Sprintf("ch%d", c)); err != nil {
					t.Fatal(err)
				}
			}
			wg.Go(func() {
				chk := notifyChecker{expected: expected, last: map[string]int{}}
				timeout := time.After(120 * time.Second)
				for chk.count < expected {
					select {
					case nt := <-l.Notify:
						if nt == nil {
							errs.add(fmt.Errorf("lib/pq client %d: the listener reconnected after %d notifications", i, chk.count))
							return
						}
						if err := chk.add(nt.Channel, nt.Extra); err != nil {
							errs.add(fmt.Errorf("lib/pq client %d: %w", i, err))
							return
						}
					case <-timeout:
						errs.add(fmt.Errorf("lib/pq client %d: %d of %d notifications", i, chk.count, expected))
						return
					}
				}
			})
		}
		// psycopg 3, asyncpg and node-postgres processes.
		tools := []struct {
			name, dir, bin string
			args           []string
		}{
			{"psycopg", "py", debianPython, []string{"listen_clients.py", "psycopg"}},
			{"asyncpg", "py", debianPython, []string{"listen_clients.py", "asyncpg"}},
			{"node-postgres", "node", node, []string{"listen.js"}},
		}
		for _, tool := range tools {
			wg.Go(func() {
				args := append(tool.args, g.url(), strconv.Itoa(perTool), strconv.Itoa(channels), strconv.Itoa(expected))
				out, err := runTool(t, 180*time.Second, tool.dir, tool.bin, args...)
				if err != nil || strings.Count(out, "ok ") != perTool {
					errs.add(fmt.Errorf("%s clients: %v\n%s", tool.name, err, out))
				}
			})
		}
		guardtest.WaitFor(t, "every client to LISTEN on every channel", func() bool {
			subs := 0
			for _, l := range g.Listeners() {
				subs += l.Subscribers
			}
			return subs == clients*channels
		})

		// Senders: through pgguard, committed one by one or a few per
		// transaction, some in transactions rolled back; and one direct.
		send := func(conn *pgx.Conn, s int) error {
			for seq := 0; seq < perSender; {
				ch := (seq + s) % channels
				switch {
				case seq%50 == 7:
					batch := pgx.Batch{}
					batch.Queue("BEGIN")
					batch.Queue(fmt.Sprintf("NOTIFY ch%d, 'rb%d'", ch, seq))
					batch.Queue("ROLLBACK")
					if err := conn.SendBatch(ctx, &batch).Close(); err != nil {
						return err
					}
					fallthrough
				case seq%10 == 3 && seq+3 <= perSender:
					tx, err := conn.Begin(ctx)
					if err != nil {
						return err
					}
					for k := 0; k < 3 && seq < perSender; k++ {
						if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", fmt.Sprintf("ch%d", (seq+s)%channels), fmt.Sprintf("S%d:%d", s, seq)); err != nil {
							return err
						}
						seq++
					}
					if err := tx.Commit(ctx); err != nil {
						return err
					}
				default:
					if _, err := conn.Exec(ctx, fmt.Sprintf("NOTIFY ch%d, 'S%d:%d'", ch, s, seq)); err != nil {
						return err
					}
					seq++
				}
			}
			return nil
		}
		start := time.Now()
		var swg sync.WaitGroup
		for s := 0; s <= senders; s++ {
			url := g.url()
			if s == senders {
				url = pg.URL("app") // direct
			}
			conn := connect(t, pgxConfig(t, url, pgx.QueryExecModeCacheStatement))
			swg.Go(func() {
				if err := send(conn, s); err != nil {
					errs.add(fmt.Errorf("sender %d: %w", s, err))
				}
			})
		}
		swg.Wait()
		sent := time.Since(start)
		if n := queryInt(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester' AND query ILIKE 'LISTEN%'"); n != 1 {
			t.Errorf("%d listening backends on the server, want 1", n)
		}
		wg.Wait()
		errs.report(t)
		for _, c := range g.Clients() {
			if c.Pinned != "" {
				t.Errorf("client %d pinned: %s", c.ID, c.Pinned)
			}
		}
		var delivered uint64
		for _, l := range g.Listeners() {
			delivered += l.Delivered
		}
		if want := uint64(expected * clients); delivered != want {
			t.Errorf("%d notifications delivered, want %d", delivered, want)
		}
		t.Logf("%d clients on %d channels, pool of 2: %d NOTIFYs (%d senders, 1 direct) sent in %s, %d deliveries in %s",
			clients, channels, expected, senders, sent.Round(time.Millisecond), delivered, time.Since(start).Round(time.Millisecond))
	})
}
