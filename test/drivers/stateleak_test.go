package drivers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// leakZones are 40 distinct time zones, one per client of the leak test.
var leakZones = func() []string {
	var z []string
	for h := 1; h <= 12; h++ {
		z = append(z, fmt.Sprintf("Etc/GMT+%d", h), fmt.Sprintf("Etc/GMT-%d", h))
	}
	return append(z, "Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney",
		"Africa/Cairo", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Auckland", "Europe/Moscow",
		"America/Los_Angeles", "Asia/Singapore", "Europe/London", "America/Chicago", "Asia/Dubai",
		"Atlantic/Reykjavik", "Pacific/Honolulu")
}()

const (
	leakClients = 40
	leakTxs     = 100 // transactions per client
	// leakSplitTxs on a split network, where every byte costs a write and
	// a read.
	leakSplitTxs = 30
)

// TestSessionStateDoesNotLeak runs 40 clients on 2 server connections, each
// with its own search_path (schema sN holding a table t whose one row is N),
// TimeZone and application_name, set in different ways (startup parameter,
// options=-c, SET), and checks on every one of thousands of transactions
// that each client sees only its own values. Clients also change their
// application_name now and then, and half the checks run in an explicit
// transaction. In one run search_path comes with the startup packet
// (as a parameter or options=-c), in the other by SET.
func TestSessionStateDoesNotLeak(t *testing.T) {
	var ddl strings.Builder
	for i := 0; i < leakClients; i++ {
		fmt.Fprintf(&ddl, "DROP SCHEMA IF EXISTS s%d CASCADE; CREATE SCHEMA s%d AUTHORIZATION %s; CREATE TABLE s%d.t (v int); INSERT INTO s%d.t VALUES (%d); ALTER TABLE s%d.t OWNER TO %s;\n",
			i, i, pgUser, i, i, i, i, pgUser)
	}
	setup(t, ddl.String())
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, bySET := range []bool{false, true} {
			name := "search_path_at_startup"
			if bySET {
				name = "search_path_by_SET"
			}
			t.Run(name, func(t *testing.T) {
				g := startGuardOver(t, n, txConfig())
				txs := leakTxs
				if n.Splits() {
					txs = leakSplitTxs
				}
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				// DescribeExec is left out: its two round trips of the unnamed
				// statement break on their own (see TestPgxMatrix/describe_exec).
				modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
				errs := newCollect(leakClients)
				var wg sync.WaitGroup
				start := time.Now()
				for i := 0; i < leakClients; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := leakClient(ctx, t, g, i, modes[i%len(modes)], bySET, txs); err != nil {
							errs.add(fmt.Errorf("client %d (%s): %w", i, modes[i%len(modes)], err))
						}
					}()
				}
				wg.Wait()
				errs.report(t)
				if bySET && t.Failed() {
					t.Log("BUG: SET of a parameter PostgreSQL does not report (search_path) is not tracked: proxy/session.go parseEffect deparses a ParseResult without Version and drops the error")
				}
				t.Logf("%d clients x %d transactions on 2 servers in %s", leakClients, txs, time.Since(start).Round(time.Millisecond))
			})
		}
	})
}

// leakClient is client i of the leak test: it establishes its session
// state, then checks it on every transaction. bySET sets search_path with
// SET rather than at startup.
func leakClient(ctx context.Context, t *testing.T, g *guard, i int, mode pgx.QueryExecMode, bySET bool, txs int) error {
	cc := pgxConfig(t, g.url(), mode)
	zone, path, app := leakZones[i], fmt.Sprintf("s%d", i), fmt.Sprintf("leak-%d", i)
	var sets []string
	if i%2 == 0 {
		cc.RuntimeParams["TimeZone"] = zone
	} else {
		sets = append(sets, fmt.Sprintf("SET TimeZone = '%s'", zone))
	}
	switch {
	case bySET:
		sets = append(sets, "SET search_path = "+path)
	case i%2 == 0:
		cc.RuntimeParams["options"] = "-c search_path=" + path
	default:
		cc.RuntimeParams["search_path"] = path
	}
	if i%3 == 0 {
		cc.RuntimeParams["application_name"] = app
	} else {
		sets = append(sets, fmt.Sprintf("SET application_name = '%s'", app))
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	for _, s := range sets {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	const check = "SELECT current_setting('TimeZone'), current_setting('application_name'), current_setting('search_path'), (SELECT v FROM t)"
	for j := 0; j < txs; j++ {
		if j%25 == 24 { // a new application_name now and then, by SET
			app = fmt.Sprintf("leak-%d-%d", i, j)
			if _, err := conn.Exec(ctx, fmt.Sprintf("SET application_name = '%s'", app)); err != nil {
				return err
			}
		}
		var q interface {
			QueryRow(context.Context, string, ...any) pgx.Row
		} = conn
		var tx pgx.Tx
		if j%2 == 1 {
			if tx, err = conn.Begin(ctx); err != nil {
				return err
			}
			q = tx
		}
		var gotZone, gotApp, gotPath string
		var v int
		if err := q.QueryRow(ctx, check).Scan(&gotZone, &gotApp, &gotPath, &v); err != nil {
			return fmt.Errorf("transaction %d: %w", j, err)
		}
		if gotZone != zone || gotApp != app || gotPath != path || v != i {
			return fmt.Errorf("transaction %d saw TimeZone=%s application_name=%s search_path=%s t.v=%d; want %s %s %s %d",
				j, gotZone, gotApp, gotPath, v, zone, app, path, i)
		}
		if tx != nil {
			if err := tx.Commit(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
