package drivers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgguard/pgguard/internal/guardtest"
)

// sessionProbe runs statements on two clients, a and b, and records what
// each observes, so that a run through pgguard can be compared with one on
// direct connections.
type sessionProbe struct {
	ctx  context.Context
	a, b *pgx.Conn
	obs  []string
}

// do runs sql on c; a statement that returns a row records its first
// column, one that fails records its SQLSTATE.
func (p *sessionProbe) do(c *pgx.Conn, sql string, args ...any) {
	rows, err := c.Query(p.ctx, sql, args...)
	if err != nil {
		p.obs = append(p.obs, "E:"+sqlState(err))
		return
	}
	var got []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil || len(vals) == 0 {
			continue
		}
		got = append(got, fmt.Sprint(vals[0]))
	}
	if err := rows.Err(); err != nil {
		p.obs = append(p.obs, "E:"+sqlState(err))
		return
	}
	if len(got) > 0 {
		p.obs = append(p.obs, strings.Join(got, ","))
	}
}

// reported records the value of a reported parameter as c's driver last
// heard it in ParameterStatus.
func (p *sessionProbe) reported(c *pgx.Conn, name string) {
	p.obs = append(p.obs, name+"="+c.PgConn().ParameterStatus(name))
}

// TestSessionStateLikeDirect runs session-state sequences on two clients
// sharing pgguard's one server connection, and on two direct connections,
// and requires the same observations: what one client sets never reaches the
// other, and RESET, ROLLBACK and SET LOCAL work as PostgreSQL defines them.
func TestSessionStateLikeDirect(t *testing.T) {
	setup(t, `DROP SCHEMA IF EXISTS edge_int CASCADE; DROP SCHEMA IF EXISTS edge_text CASCADE;
		CREATE SCHEMA edge_int AUTHORIZATION tester; CREATE SCHEMA edge_text AUTHORIZATION tester;
		CREATE TABLE edge_int.tt (v int); INSERT INTO edge_int.tt VALUES (1);
		CREATE TABLE edge_text.tt (v text); INSERT INTO edge_text.tt VALUES ('one');
		ALTER TABLE edge_int.tt OWNER TO tester; ALTER TABLE edge_text.tt OWNER TO tester`)
	scenarios := []struct {
		name    string
		aParams map[string]string // startup parameters of client a
		bParams map[string]string // and of client b
		run     func(p *sessionProbe)
	}{{
		name: "SET statement_timeout stays with its client",
		run: func(p *sessionProbe) {
			p.do(p.a, "SET statement_timeout = '1234s'")
			p.do(p.b, "SHOW statement_timeout")
			p.do(p.a, "SHOW statement_timeout")
			p.do(p.b, "SET statement_timeout = '99s'")
			p.do(p.a, "SHOW statement_timeout")
			p.do(p.b, "SHOW statement_timeout")
		},
	}, {
		name: "a cached SET run again stays with its client",
		run: func(p *sessionProbe) {
			p.do(p.a, "SET statement_timeout = '1111s'")
			p.do(p.a, "SET statement_timeout = '2222s'")
			p.do(p.a, "SET statement_timeout = '1111s'") // no Parse: pgx has it cached
			p.do(p.b, "SHOW statement_timeout")
			p.do(p.a, "SHOW statement_timeout")
		},
	}, {
		name: "set_config of search_path stays with its client",
		run: func(p *sessionProbe) {
			p.do(p.a, "SELECT set_config('search_path', 'edge_int', false)")
			p.do(p.b, "SHOW search_path")
			p.do(p.a, "SELECT v FROM tt")
			p.do(p.b, "SHOW search_path")
		},
	}, {
		name:    "RESET returns to the startup value",
		aParams: map[string]string{"TimeZone": "Europe/Paris", "options": "-c DateStyle=SQL,DMY"},
		run: func(p *sessionProbe) {
			p.do(p.a, "SET TimeZone = 'Asia/Tokyo'")
			p.do(p.a, "SET DateStyle = 'German'")
			p.do(p.b, "SET TimeZone = 'America/Chicago'")
			p.do(p.a, "RESET TimeZone")
			p.do(p.b, "SHOW TimeZone")
			p.do(p.a, "SHOW TimeZone")
			p.do(p.a, "RESET ALL")
			p.do(p.b, "SHOW DateStyle")
			p.do(p.a, "SELECT current_setting('TimeZone') || ' ' || current_setting('DateStyle')")
			p.reported(p.a, "TimeZone")
			p.reported(p.a, "DateStyle")
		},
	}, {
		name:    "RESET of a startup option that is not reported",
		aParams: map[string]string{"options": "-c statement_timeout=4321s -c work_mem=7MB"},
		run: func(p *sessionProbe) {
			p.do(p.a, "SET statement_timeout = '5s'")
			p.do(p.a, "SET work_mem = '9MB'")
			p.do(p.a, "RESET statement_timeout")
			p.do(p.b, "SHOW statement_timeout")
			p.do(p.a, "SHOW statement_timeout")
			p.do(p.a, "SET statement_timeout TO DEFAULT")
			p.do(p.a, "SHOW work_mem")
			p.do(p.a, "DISCARD ALL")
			p.do(p.b, "SHOW work_mem")
			p.do(p.a, "SELECT current_setting('statement_timeout') || ' ' || current_setting('work_mem')")
		},
	}, {
		name:    "SET in a rolled-back transaction is undone",
		aParams: map[string]string{"TimeZone": "Europe/Paris"},
		run: func(p *sessionProbe) {
			p.do(p.a, "BEGIN")
			p.do(p.a, "SET TimeZone = 'Asia/Tokyo'")
			p.do(p.a, "SET search_path = edge_int")
			p.do(p.a, "ROLLBACK")
			p.do(p.b, "SELECT current_setting('TimeZone') || ' ' || current_setting('search_path')")
			p.do(p.a, "SELECT current_setting('TimeZone') || ' ' || current_setting('search_path')")
			p.do(p.a, "BEGIN")
			p.do(p.a, "SET LOCAL TimeZone = 'Asia/Tokyo'")
			p.do(p.a, "SET LOCAL search_path = edge_text")
			p.do(p.a, "SELECT v FROM tt")
			p.do(p.a, "COMMIT")
			p.do(p.b, "SELECT current_setting('TimeZone') || ' ' || current_setting('search_path')")
			p.do(p.a, "SELECT current_setting('TimeZone') || ' ' || current_setting('search_path')")
		},
	}, {
		name:    "statements of clients with different search_paths",
		aParams: map[string]string{"search_path": "edge_int"},
		bParams: map[string]string{"search_path": "edge_text"},
		run: func(p *sessionProbe) {
			for i := 0; i < 3; i++ {
				p.do(p.a, "SELECT v FROM tt WHERE $1::bool", true)
				p.do(p.b, "SELECT v FROM tt WHERE $1::bool", true)
			}
		},
	}, {
		name:    "DateStyle and IntervalStyle from options",
		aParams: map[string]string{"options": "-c DateStyle=SQL,DMY -c IntervalStyle=iso_8601"},
		run: func(p *sessionProbe) {
			for i := 0; i < 2; i++ {
				p.do(p.a, "SELECT '2024-02-29'::date::text || ' ' || '1 day 2 hours'::interval::text")
				p.do(p.b, "SELECT '2024-02-29'::date::text || ' ' || '1 day 2 hours'::interval::text")
			}
		},
	}}

	ctx := context.Background()
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, s := range scenarios {
			t.Run(s.name, func(t *testing.T) {
				d := &sessionProbe{ctx: ctx, a: direct(t, pgx.QueryExecModeCacheStatement, s.aParams), b: direct(t, pgx.QueryExecModeCacheStatement, s.bParams)}
				s.run(d)

				cfg := txConfig()
				cfg.Pool.Size = 1 // a and b take turns on one server connection
				g := startGuardOver(t, n, cfg)
				open := func(params map[string]string) *pgx.Conn {
					cc := pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement)
					for k, v := range params {
						cc.RuntimeParams[k] = v
					}
					return connect(t, cc)
				}
				p := &sessionProbe{ctx: ctx, a: open(s.aParams), b: open(s.bParams)}
				s.run(p)
				got, want := strings.Join(p.obs, " | "), strings.Join(d.obs, " | ")
				if got != want {
					t.Errorf("observations differ from direct connections'\nthrough pgguard: %s\ndirect:          %s", got, want)
				}
			})
		}
	})
}
