package drivers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

var typeOID = regexp.MustCompile(`type \d+`)

// transcript records what a client observes, one line per step, so that a
// run through pgguard can be compared with one on a direct connection.
type transcript struct{ lines []string }

// say records step's outcome: its value, or the error (SQLSTATE and
// message for a server error, a context deadline as "timeout").
func (tr *transcript) say(step string, v any, err error) {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		// A type's OID differs between runs that recreate it.
		msg := typeOID.ReplaceAllString(pe.Message, "type N")
		tr.lines = append(tr.lines, fmt.Sprintf("%s: E:%s:%s", step, pe.Code, msg))
	case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
		tr.lines = append(tr.lines, step+": timeout")
	case err != nil:
		tr.lines = append(tr.lines, fmt.Sprintf("%s: error %v", step, err))
	default:
		tr.lines = append(tr.lines, fmt.Sprintf("%s: %v", step, v))
	}
}

// rows runs sql and records every row of its result.
func (tr *transcript) rows(ctx context.Context, conn *pgx.Conn, step, sql string, args ...any) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		tr.say(step, nil, err)
		return
	}
	var got []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			tr.say(step, nil, err)
			rows.Close()
			return
		}
		got = append(got, fmt.Sprint(vals))
	}
	tr.say(step, strings.Join(got, " "), rows.Err())
}

// sameLines compares a transcript of a direct connection with one through
// pgguard.
func sameLines(t *testing.T, direct, through []string) {
	t.Helper()
	for i := 0; i < max(len(direct), len(through)); i++ {
		var d, g string
		if i < len(direct) {
			d = direct[i]
		}
		if i < len(through) {
			g = through[i]
		}
		if d != g {
			t.Errorf("step %d differs from a direct connection's\nthrough pgguard: %s\ndirect:          %s", i, g, d)
		}
	}
}

// sessionState records what a session's later statements see: its
// settings, whether it is in a transaction; once on the server it used
// last and, through pgguard, once more on another (away holds the one it
// used meanwhile).
func sessionState(ctx context.Context, tr *transcript, conn *pgx.Conn, away func() func()) {
	for i := 0; i < 2; i++ {
		release := func() {}
		if i == 1 {
			release = away()
		}
		tr.rows(ctx, conn, "statement_timeout", "SELECT current_setting('statement_timeout')")
		tr.rows(ctx, conn, "lock_timeout", "SELECT current_setting('lock_timeout')")
		tr.rows(ctx, conn, "a short sleep", "SELECT pg_sleep(0.15)::text")
		tr.rows(ctx, conn, "a query", "SELECT $1::int * 3", 14)
		tr.say("transaction status", string(conn.PgConn().TxStatus()), nil)
		release()
	}
}

// caseEnv is where a pgxCase runs.
type caseEnv struct {
	// url is where the client connects: PostgreSQL, or pgguard.
	url  string
	mode pgx.QueryExecMode
	// away, through pgguard, has other clients hold the server conn used
	// last until release is called, so that its next transaction runs on
	// another; on a direct connection it does nothing.
	away func() (release func())
}

// pgxCase is one sequence of pgx calls run on a direct connection and
// through pgguard, in every QueryExecMode.
type pgxCase struct {
	name string
	// prepare readies the database before each run (as the superuser).
	prepare string
	run     func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv)
	// cancelHandler has pgx cancel a call whose context ends with a
	// CancelRequest (and keep the connection), not by closing it.
	cancelHandler bool
}

// TestPgxCasesLikeDirect runs pgx call sequences that broke through
// pgguard's transaction pooling (issue 19) once on a direct connection and
// once through pgguard with 2 server connections, in every QueryExecMode,
// and requires the same transcript.
func TestPgxCasesLikeDirect(t *testing.T) {
	cases := []pgxCase{{
		name: "DEALLOCATE as SQL, then Deallocate and Prepare again",
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			_, err := conn.Prepare(ctx, "ps", "SELECT $1::int + 1")
			tr.say("prepare", nil, err)
			tr.rows(ctx, conn, "use", "ps", 1)
			tag, err := conn.Exec(ctx, "DEALLOCATE ps")
			tr.say("DEALLOCATE", tag, err)
			tr.say("Deallocate", nil, conn.Deallocate(ctx, "ps"))
			_, err = conn.Prepare(ctx, "ps", "SELECT $1::int + 2")
			tr.say("prepare again", nil, err)
			tr.rows(ctx, conn, "use again", "ps", 1)
			tag, err = conn.Exec(ctx, "deallocate PREPARE ps")
			tr.say("DEALLOCATE PREPARE", tag, err)
			tag, err = conn.Exec(ctx, "DEALLOCATE ps")
			tr.say("DEALLOCATE again", tag, err)
			tr.rows(ctx, conn, "use after", "SELECT 1")
			tx, err := conn.Begin(ctx)
			tr.say("begin", nil, err)
			_, err = conn.Prepare(ctx, "ps", "SELECT $1::int + 3")
			tr.say("prepare in a transaction", nil, err)
			_, err = tx.Exec(ctx, "SELECT 1/0")
			tr.say("fail the transaction", nil, err)
			tag, err = conn.Exec(ctx, "DEALLOCATE ps")
			tr.say("DEALLOCATE in a failed transaction", tag, err)
			tr.say("rollback", nil, tx.Rollback(ctx))
			tr.rows(ctx, conn, "still prepared", "ps", 1)
			tr.say("Deallocate of a name never prepared", nil, conn.PgConn().Deallocate(ctx, "nosuch"))
		},
	}, {
		name: "SendBatch of many queries",
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			for round := 0; round < 2; round++ {
				b := &pgx.Batch{}
				for i := 0; i < 400; i++ {
					switch i % 4 {
					case 0:
						b.Queue(fmt.Sprintf("SELECT $1::int + %d, $2::text", i), i, strings.Repeat("x", i%50))
					case 1:
						b.Queue(fmt.Sprintf("SELECT %d", i))
					case 2:
						b.Queue("SELECT $1::int8 * 2", int64(i))
					default:
						b.Queue(fmt.Sprintf("SELECT $1::text || '%d', $2::int, $3::bool", i), "v", i, i%2 == 0)
					}
				}
				br := conn.SendBatch(ctx, b)
				var got []string
				for i := 0; i < 400; i++ {
					rows, err := br.Query()
					if err != nil {
						tr.say(fmt.Sprintf("batch %d query %d", round, i), nil, err)
						break
					}
					for rows.Next() {
						vals, _ := rows.Values()
						got = append(got, fmt.Sprint(vals))
					}
					if err := rows.Err(); err != nil {
						tr.say(fmt.Sprintf("batch %d query %d", round, i), nil, err)
						break
					}
				}
				tr.say(fmt.Sprintf("batch %d close", round), len(got), br.Close())
				h := fnv.New64a()
				h.Write([]byte(strings.Join(got, " ")))
				if len(got) > 0 {
					tr.say(fmt.Sprintf("batch %d results", round), fmt.Sprintf("%s ... %s (hash %x)", got[0], got[len(got)-1], h.Sum64()), nil)
				}
			}
			tr.rows(ctx, conn, "afterwards", "SELECT $1::int", 5)
		},
	}, {
		name:          "a context deadline between Parse and Describe, then Prepare again",
		prepare:       "DROP TABLE IF EXISTS cancel_t; CREATE TABLE cancel_t (a int); INSERT INTO cancel_t VALUES (7); ALTER TABLE cancel_t OWNER TO tester",
		cancelHandler: true,
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			// A direct session holds the table, so Parse waits for its lock.
			locker := direct(t, pgx.QueryExecModeExec, nil)
			ltx, err := locker.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ltx.Exec(ctx, "LOCK TABLE cancel_t IN ACCESS EXCLUSIVE MODE"); err != nil {
				t.Fatal(err)
			}
			short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = conn.Prepare(short, "ps", "SELECT a FROM cancel_t")
			cancel()
			tr.say("prepare past its deadline", nil, err)
			tr.say("unlock", nil, ltx.Commit(ctx))
			release := env.away()
			_, err = conn.Prepare(ctx, "ps", "SELECT a FROM cancel_t")
			tr.say("prepare again", nil, err)
			tr.rows(ctx, conn, "use", "ps")
			release()
			tr.rows(ctx, conn, "use on another server", "ps")
			tr.rows(ctx, conn, "another query", "SELECT a + $1 FROM cancel_t", 1)
			sessionState(ctx, tr, conn, env.away)
		},
	}, {
		name: "statement_timeout inside a batch",
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			for round := 0; round < 2; round++ { // the second round finds its statements cached
				b := &pgx.Batch{}
				b.Queue("SET statement_timeout = 100")
				b.Queue("SELECT pg_sleep(0.3)::text")
				b.Queue("SELECT $1::int", 1)
				tr.say(fmt.Sprintf("batch %d", round), nil, conn.SendBatch(ctx, b).Close())
				sessionState(ctx, tr, conn, env.away)
			}
			// The same, committed: the setting sticks.
			b := &pgx.Batch{}
			b.Queue("SET statement_timeout = 100")
			b.Queue("SELECT $1::int", 1)
			tr.say("batch that commits", nil, conn.SendBatch(ctx, b).Close())
			sessionState(ctx, tr, conn, env.away)
			_, err := conn.Exec(ctx, "RESET statement_timeout")
			tr.say("reset", nil, err)
			tx, err := conn.Begin(ctx)
			tr.say("begin", nil, err)
			_, err = tx.Exec(ctx, "SET lock_timeout = 1234")
			tr.say("set in a transaction", nil, err)
			_, err = tx.Exec(ctx, "SET LOCAL statement_timeout = 100")
			tr.say("set local", nil, err)
			_, err = tx.Exec(ctx, "SELECT pg_sleep(0.3)")
			tr.say("times out", nil, err)
			tr.say("rollback", nil, tx.Rollback(ctx))
			sessionState(ctx, tr, conn, env.away)
		},
	}, {
		name: "an error while rows are received",
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			const failing = "SELECT 10 / (3 - g) FROM generate_series(1, 5) g WHERE g > $1"
			for round := 0; round < 2; round++ {
				var v int
				err := conn.QueryRow(ctx, failing, 0).Scan(&v)
				tr.say(fmt.Sprintf("QueryRow %d", round), v, err)
				tr.rows(ctx, conn, fmt.Sprintf("Query %d", round), failing, 0)
				sessionState(ctx, tr, conn, env.away)
			}
			_, err := conn.Exec(ctx, "SET lock_timeout = 4321")
			tr.say("set", nil, err)
			tx, err := conn.Begin(ctx)
			tr.say("begin", nil, err)
			_, err = tx.Exec(ctx, "SET lock_timeout = 1234")
			tr.say("set in a transaction", nil, err)
			var v int
			err = tx.QueryRow(ctx, failing, 0).Scan(&v)
			tr.say("QueryRow in a transaction", v, err)
			tr.rows(ctx, conn, "after it, in the transaction", "SELECT 1")
			tr.say("rollback", nil, tx.Rollback(ctx))
			sessionState(ctx, tr, conn, env.away)
			b := &pgx.Batch{}
			b.Queue("SET lock_timeout = 999")
			b.Queue(failing, 0)
			tr.say("batch", nil, conn.SendBatch(ctx, b).Close())
			sessionState(ctx, tr, conn, env.away)
		},
	}, {
		name: "statements gone stale after DDL",
		prepare: `DROP TABLE IF EXISTS mig_px; DROP TYPE IF EXISTS mig_px_mood;
			CREATE TABLE mig_px (a int); INSERT INTO mig_px VALUES (1); ALTER TABLE mig_px OWNER TO tester;
			CREATE TYPE mig_px_mood AS ENUM ('happy', 'sad'); ALTER TYPE mig_px_mood OWNER TO tester`,
		run: func(ctx context.Context, t *testing.T, tr *transcript, conn *pgx.Conn, env *caseEnv) {
			const all, one, mood = "SELECT * FROM mig_px", "SELECT * FROM mig_px WHERE a = $1", "SELECT $1::mig_px_mood::text"
			other := func() *pgx.Conn { return connect(t, pgxConfig(t, env.url, env.mode)) }
			for i := 0; i < 2; i++ {
				tr.rows(ctx, conn, "warm", all)
				tr.rows(ctx, conn, "warm mood", mood, "sad")
			}
			_, err := conn.Prepare(ctx, "explicit", one)
			tr.say("prepare", nil, err)
			tr.rows(ctx, conn, "explicit", "explicit", 1)

			// A migration over a direct connection.
			setup(t, "ALTER TABLE mig_px ADD COLUMN b int")
			for i := 0; i < 3; i++ {
				tr.rows(ctx, conn, "after ALTER", all)
			}
			for i := 0; i < 2; i++ {
				tr.rows(ctx, conn, "explicit after ALTER", "explicit", 1)
			}
			tr.rows(ctx, other(), "another session", one, 1)
			tr.say("Deallocate", nil, conn.Deallocate(ctx, "explicit"))
			_, err = conn.Prepare(ctx, "explicit", one)
			tr.say("prepare again", nil, err)
			tr.rows(ctx, conn, "explicit prepared again", "explicit", 1)

			// A type dropped and created again.
			setup(t, "DROP TYPE mig_px_mood; CREATE TYPE mig_px_mood AS ENUM ('happy', 'sad'); ALTER TYPE mig_px_mood OWNER TO tester")
			for i := 0; i < 3; i++ {
				tr.rows(ctx, conn, "after DROP TYPE", mood, "happy")
			}
			tr.rows(ctx, other(), "another session", mood, "sad")

			// A migration the client runs itself: statements prepared
			// afterwards see the new columns at once.
			tr.rows(ctx, conn, "warm", all)
			tag, err := other().Exec(ctx, "ALTER TABLE mig_px ADD COLUMN c text DEFAULT 'x'")
			tr.say("ALTER through the same address", tag, err)
			tr.rows(ctx, other(), "another session", all)
			tr.rows(ctx, conn, "after ALTER", all)
			tr.rows(ctx, conn, "after ALTER", all)
		},
	}}

	g := startTxGuard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mode := range pgxModes {
				t.Run(strings.ReplaceAll(mode.String(), " ", "_"), func(t *testing.T) {
					var runs [2][]string
					for i, url := range []string{pg.URL("app"), g.url()} {
						if c.prepare != "" {
							setup(t, c.prepare)
						}
						cc := pgxConfig(t, url, mode)
						if c.cancelHandler {
							cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
								return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
							}
						}
						conn := connect(t, cc)
						away := func() func() { return func() {} }
						if url == g.url() {
							away = func() func() {
								var pid int
								if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
									t.Fatal(err)
								}
								return holdServer(t, g, pid)
							}
						}
						tr := &transcript{}
						c.run(ctx, t, tr, conn, &caseEnv{url: url, mode: mode, away: away})
						runs[i] = tr.lines
					}
					sameLines(t, runs[0], runs[1])
					if t.Failed() || testing.Verbose() {
						t.Logf("direct transcript:\n%s", strings.Join(runs[0], "\n"))
					}
				})
			}
		})
	}
}
