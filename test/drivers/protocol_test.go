package drivers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// trace sends msgs on conn's wire, flushes, reads until syncs
// ReadyForQuery messages have come back and returns what came, one token
// per message: "1" ParseComplete, "2" BindComplete, "3" CloseComplete, "t"
// ParameterDescription, "T" RowDescription, "n" NoData, "D:<values>",
// "C:<tag>", "E:<sqlstate>:<message>", "Z:<status>", "s" PortalSuspended. Notices
// and ParameterStatus are left out. After a Flush message it waits for a
// PortalSuspended before sending the rest, as a driver fetching a portal
// in chunks does.
func trace(t *testing.T, conn *pgx.Conn, syncs int, msgs ...pgproto3.FrontendMessage) string {
	t.Helper()
	pc := conn.PgConn()
	fe := pc.Frontend()
	pc.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	defer pc.Conn().SetReadDeadline(time.Time{})
	var out []string
	for len(msgs) > 0 {
		waitSuspended := false
		for len(msgs) > 0 && !waitSuspended {
			fe.Send(msgs[0])
			_, waitSuspended = msgs[0].(*pgproto3.Flush)
			msgs = msgs[1:]
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if waitSuspended {
			out = receiveUntil(t, fe, out, func(tok string) bool { return tok == "s" })
		}
	}
	return strings.Join(receiveUntil(t, fe, out, func(tok string) bool {
		if strings.HasPrefix(tok, "Z:") {
			syncs--
		}
		return syncs == 0
	}), " ")
}

// receiveUntil appends tokens (see trace) of messages received until done
// returns true for one.
func receiveUntil(t *testing.T, fe *pgproto3.Frontend, out []string, done func(tok string) bool) []string {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.CloseComplete:
			out = append(out, "3")
		case *pgproto3.ParameterDescription:
			out = append(out, fmt.Sprintf("t%v", m.ParameterOIDs))
		case *pgproto3.RowDescription:
			var cols []string
			for _, f := range m.Fields {
				cols = append(cols, fmt.Sprintf("%s/%d", f.Name, f.DataTypeOID))
			}
			out = append(out, "T"+strings.Join(cols, ","))
		case *pgproto3.NoData:
			out = append(out, "n")
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			out = append(out, "D:"+strings.Join(vals, ","))
		case *pgproto3.CommandComplete:
			out = append(out, "C:"+string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			out = append(out, "E:"+m.Code+":"+m.Message)
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z:"+string(m.TxStatus))
		case *pgproto3.PortalSuspended:
			out = append(out, "s")
		case *pgproto3.EmptyQueryResponse:
			out = append(out, "I")
		default:
			continue
		}
		if done(out[len(out)-1]) {
			return out
		}
	}
}

// holdServer has other clients of g hold the server connection whose
// backend is pid in a transaction, so that the next transaction of any
// other client runs on a different one; release ends the hold. g has 2
// server connections.
func holdServer(t *testing.T, g *guard, pid int) (release func()) {
	t.Helper()
	ctx := context.Background()
	var others []pgx.Tx
	defer func() {
		for _, tx := range others {
			tx.Rollback(ctx)
		}
	}()
	for i := 0; i < 2; i++ {
		conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var p int
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
			t.Fatal(err)
		}
		if p == pid {
			return func() { tx.Rollback(ctx) }
		}
		others = append(others, tx)
	}
	t.Fatalf("no server connection with backend pid %d", pid)
	return nil
}

// preparedOn prepares name as sql on conn in a transaction and returns the
// backend pid it ran on.
func preparedOn(t *testing.T, conn *pgx.Conn, name, sql string) int {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Commit(ctx)
	if _, err := conn.PgConn().Prepare(ctx, name, sql, nil); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// unnamedPipeline is a pipeline longer than pgguard reads at once: Parse
// of the unnamed statement, Bind and Execute, 600 times over, with
// statements of different parameter counts; then the same after a Sync,
// Binding the last one again first.
func unnamedPipeline() []pgproto3.FrontendMessage {
	var msgs []pgproto3.FrontendMessage
	for round := 0; round < 2; round++ {
		if round == 1 {
			msgs = append(msgs, &pgproto3.Bind{Parameters: [][]byte{[]byte("1"), []byte("2")}}, &pgproto3.Execute{})
		}
		for i := 0; i < 600; i++ {
			switch i % 3 {
			case 0:
				msgs = append(msgs, &pgproto3.Parse{Query: fmt.Sprintf("SELECT %d", i)}, &pgproto3.Bind{})
			case 1:
				msgs = append(msgs, &pgproto3.Parse{Query: fmt.Sprintf("SELECT $1::int + %d", i)},
					&pgproto3.Bind{Parameters: [][]byte{[]byte("7")}})
			default:
				msgs = append(msgs, &pgproto3.Parse{Query: fmt.Sprintf("SELECT $1::int * $2::int + %d", i)},
					&pgproto3.Bind{Parameters: [][]byte{[]byte("3"), []byte("4")}})
			}
			msgs = append(msgs, &pgproto3.Execute{})
		}
		msgs = append(msgs, &pgproto3.Sync{})
	}
	return msgs
}

// TestExtendedProtocolEdgeCases sends extended-protocol sequences drivers
// use — pipelines with several Syncs and errors, Describe and Close of
// named statements, Flush without Sync — once on a direct connection and
// once through pgguard where the statement was prepared on the other
// server, and requires the same replies.
func TestExtendedProtocolEdgeCases(t *testing.T) {
	type scenario struct {
		name  string
		sql   string // prepared as "s1" first, on the other server
		syncs int
		msgs  []pgproto3.FrontendMessage
	}
	one := [][]byte{[]byte("1")}
	scenarios := []scenario{{
		name: "pipeline: error, then the statement in this batch and the next",
		sql:  "SELECT $1::int + 10 AS v", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 1 / (0 * $1::int)"}, &pgproto3.Bind{Parameters: one}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "pipeline: three batches, the middle one fails",
		sql:  "SELECT $1::int + 10 AS v", syncs: 3,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "s2", Query: "SELECT nosuchcolumn"}, &pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "s3", Query: "SELECT $1::text || 'x'"}, &pgproto3.Bind{PreparedStatement: "s3", Parameters: one}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'S', Name: "s3"}, &pgproto3.Sync{},
		},
	}, {
		name: "Describe of a statement prepared on another server",
		sql:  "SELECT $1::int8 AS a, 'x'::text AS b", syncs: 1,
		msgs: []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{}},
	}, {
		name: "Parse of a name that exists",
		sql:  "SELECT 1", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s1", Query: "SELECT 2"}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Parse in an aborted transaction",
		sql:  "SELECT $1::int + 10 AS v", syncs: 6,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN"},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Query{String: "SELECT 1/0"},
			&pgproto3.Parse{Name: "s2", Query: "SELECT $1::int + 10 AS v"}, &pgproto3.Sync{},
			&pgproto3.Query{String: "ROLLBACK"},
			&pgproto3.Bind{PreparedStatement: "s2", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Close skipped after an error",
		sql:  "SELECT $1::int + 10 AS v", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 1 / (0 * $1::int)"}, &pgproto3.Bind{Parameters: one}, &pgproto3.Execute{},
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "pipeline: a Parse fails, the next batch parses the name again",
		sql:  "SELECT 1", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s2", Query: "SELECT nosuchcolumn"}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "s2", Query: "SELECT $1::int * 2"}, &pgproto3.Bind{PreparedStatement: "s2", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "pipeline: Parse, then Bind in the next batch",
		sql:  "SELECT 1", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s2", Query: "SELECT $1::int * 3"}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s2", Parameters: one}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "pipeline: Close, then Bind in the next batch",
		sql:  "SELECT 1", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Parse, Close and Parse again in one batch",
		sql:  "SELECT 1", syncs: 1,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Parse{Name: "s1", Query: "SELECT 4"},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "pipeline: DEALLOCATE ALL, then Bind",
		sql:  "SELECT 1", syncs: 3,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "DEALLOCATE ALL"},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "s1", Query: "SELECT 6"}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Close, then Bind",
		sql:  "SELECT 1", syncs: 2,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Flush without Sync, portal suspended",
		sql:  "SELECT g FROM generate_series(1, $1::int) g", syncs: 1,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", Parameters: [][]byte{[]byte("5")}},
			&pgproto3.Describe{ObjectType: 'P', Name: "p"}, &pgproto3.Execute{Portal: "p", MaxRows: 2}, &pgproto3.Flush{},
			&pgproto3.Execute{Portal: "p", MaxRows: 2}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{},
		},
	}, {
		name: "DEALLOCATE of a protocol-level statement, then Close and Parse of its name",
		sql:  "SELECT 1", syncs: 4,
		msgs: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "DEALLOCATE s1"},
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{},
			&pgproto3.Query{String: "DEALLOCATE s1"},
			&pgproto3.Parse{Name: "s1", Query: "SELECT 5"}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		},
	}, {
		name: "Close of a name never prepared",
		sql:  "SELECT 1", syncs: 1,
		msgs: []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: "nosuch"}, &pgproto3.Sync{}},
	}, {
		name: "pipeline: unnamed statements over many reads",
		sql:  "SELECT 1", syncs: 2,
		msgs: unnamedPipeline(),
	}}

	g := startTxGuard(t)
	ctx := context.Background()
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			d := direct(t, pgx.QueryExecModeExec, nil)
			if _, err := d.PgConn().Prepare(ctx, "s1", s.sql, nil); err != nil {
				t.Fatal(err)
			}
			want := trace(t, d, s.syncs, s.msgs...)

			conn := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
			pid := preparedOn(t, conn, "s1", s.sql)
			release := holdServer(t, g, pid)
			defer release()
			got := trace(t, conn, s.syncs, s.msgs...)
			if got != want {
				t.Errorf("replies differ from a direct connection's\nthrough pgguard: %s\ndirect:          %s", got, want)
			}
			// The session goes on working either way.
			var v int
			if err := conn.QueryRow(ctx, "SELECT $1::int", 7).Scan(&v); err != nil || v != 7 {
				t.Fatalf("afterwards: %d %v", v, err)
			}
		})
	}
}

// TestUnnamedStatementAcrossParameterSync: the unnamed statement a client
// parsed survives another client using its server in between, with other
// session parameters (pgguard's parameter sync is a Query, which destroys
// the server's unnamed statement: pgguard parses it again), as on a direct
// connection, where nobody else runs in between.
func TestUnnamedStatementAcrossParameterSync(t *testing.T) {
	cfg := txConfig()
	cfg.Pool.Size = 1
	g := startGuard(t, cfg)
	ctx := context.Background()
	first := []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT $1::int * 2"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{}}
	second := []pgproto3.FrontendMessage{&pgproto3.Bind{Parameters: [][]byte{[]byte("21")}}, &pgproto3.Execute{}, &pgproto3.Sync{}}

	d := direct(t, pgx.QueryExecModeExec, nil)
	want := trace(t, d, 1, first...) + " " + trace(t, d, 1, second...)

	a := connect(t, pgxConfig(t, g.url(), pgx.QueryExecModeExec))
	// The other client's statements are named: they leave the server's
	// unnamed statement alone.
	other := pgxConfig(t, g.url(), pgx.QueryExecModeCacheStatement)
	other.RuntimeParams["TimeZone"] = "Asia/Tokyo"
	b := connect(t, other)
	got := trace(t, a, 1, first...)
	var tz string
	if err := b.QueryRow(ctx, "SELECT current_setting($1)", "TimeZone").Scan(&tz); err != nil || tz != "Asia/Tokyo" {
		t.Fatalf("the other client: %q %v", tz, err)
	}
	got += " " + trace(t, a, 1, second...)
	if got != want {
		t.Errorf("replies differ from a direct connection's\nthrough pgguard: %s\ndirect:          %s", got, want)
	}
}
