package admin

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/limiter"
	"github.com/pgguard/pgguard/proxy"
	"github.com/pgguard/pgguard/querylog"
)

// Table is a result set for the console: column names and text rows.
type Table struct {
	// Columns are the column names, sent as text columns.
	Columns []string
	// Rows hold one value per column.
	Rows [][]string
}

// Console serves the admin console: SHOW POOLS/CLIENTS/SERVERS/STATS/CONFIG,
// SHOW QUERIES (with a query log), SHOW LIMITS/APPLICATIONS/BUDGET/POLLERS
// (with a limiter), SHOW CACHE and DISCARD CACHE (with a result cache) and
// the views added to Views, SET read_only, SET disable_workers (with a
// limiter), PAUSE, RESUME, RELOAD and KILL, answered as result sets over the
// simple query protocol, with column names a PgBouncer user would recognise.
// Set its fields before the first session.
type Console struct {
	proxy  *proxy.Proxy
	reload func() error
	// QueryLog, when set, serves SHOW QUERIES.
	QueryLog *querylog.Logger
	// Limiter, when set, serves SHOW LIMITS, APPLICATIONS, BUDGET and POLLERS.
	Limiter *limiter.Limiter
	// Cache, when set, serves SHOW CACHE and DISCARD CACHE.
	Cache *cache.Cache
	// Fleet, when set, serves SHOW FLEET and SET ... FLEET.
	Fleet *fleet.Fleet
	// Views adds SHOW <name> views.
	Views map[string]func() Table
}

// NewConsole returns a console for p; reload re-reads the config (RELOAD).
func NewConsole(p *proxy.Proxy, reload func() error) *Console {
	c := &Console{proxy: p, reload: reload, Views: map[string]func() Table{}}
	c.Views["listeners"] = func() Table { return listenersTable(p.Listeners()) }
	return c
}

// Serve runs one console session; it matches proxy.ConsoleFunc.
func (c *Console) Serve(conn net.Conn, user string) {
	be := pgproto3.NewBackend(conn, conn)
	be.SetMaxBodyLen(1 << 20)
	// refused is set from an extended-protocol message to its Sync: one
	// error, the rest of the batch ignored, one ReadyForQuery at the Sync
	// (the protocol's error recovery, PostgreSQL docs 55.2.3).
	refused := false
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			c.query(be, user, m.String)
		case *pgproto3.Terminate:
			return
		case *pgproto3.Sync:
			refused = false
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		default:
			if !refused {
				sendError(be, "0A000", "the admin console speaks the simple query protocol only (use psql, or pgx's QueryExecModeSimpleProtocol)")
				refused = true
			}
		}
		if err := be.Flush(); err != nil {
			return
		}
	}
}

// query runs one console command (or several separated by semicolons).
func (c *Console) query(be *pgproto3.Backend, user, sql string) {
	defer be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	stmts := 0
	for _, stmt := range strings.Split(sql, ";") {
		stmt = strings.TrimSpace(stmt)
		if stmt == "" {
			continue
		}
		stmts++
		if err := c.command(be, user, stmt); err != nil {
			sendError(be, "42601", err.Error())
			return
		}
	}
	if stmts == 0 {
		be.Send(&pgproto3.EmptyQueryResponse{})
	}
}

func (c *Console) command(be *pgproto3.Backend, user, stmt string) error {
	words := strings.Fields(strings.ToLower(stmt))
	switch words[0] {
	case "show":
		if len(words) < 2 {
			return fmt.Errorf("SHOW needs a view: %s", strings.Join(c.viewNames(), ", "))
		}
		if words[1] == "queries" && c.QueryLog != nil {
			sortBy := "total"
			if len(words) > 2 {
				sortBy = words[2]
			}
			if !slices.Contains(querySorts, sortBy) {
				return fmt.Errorf("SHOW QUERIES sorts by %s, not %q", strings.Join(querySorts, ", "), sortBy)
			}
			sendTable(be, queriesTable(c.QueryLog.Stats(), sortBy), "SHOW")
			return nil
		}
		t, ok := c.view(words[1])
		if !ok {
			return fmt.Errorf("unknown view %q; try: %s", words[1], strings.Join(c.viewNames(), ", "))
		}
		sendTable(be, t, "SHOW")
	case "set":
		// SET read_only = on|off (also "to", and true/false)
		rest := strings.TrimSpace(stmt[3:])
		name, value, ok := cutAssign(rest)
		if v, fleetWide := cutFleet(value); ok && fleetWide {
			return c.setFleetSwitch(be, user, name, v)
		}
		if ok && strings.EqualFold(name, "disable_workers") {
			return c.setDisableWorkers(be, user, value)
		}
		if !ok || strings.ToLower(name) != "read_only" {
			return fmt.Errorf("only SET read_only = on|off and SET disable_workers = on|off (add FLEET for every instance) are supported")
		}
		switch strings.ToLower(strings.Trim(value, "'\" ")) {
		case "on", "true", "1", "yes":
			c.proxy.SetReadOnly(true, "console:"+user)
		case "off", "false", "0", "no":
			c.proxy.SetReadOnly(false, "console:"+user)
		default:
			return fmt.Errorf("read_only takes on or off, not %q", value)
		}
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SET")})
	case "pause":
		c.proxy.Pause()
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
	case "resume":
		c.proxy.Resume()
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	case "reload":
		if c.reload == nil {
			return fmt.Errorf("RELOAD is not available")
		}
		if err := c.reload(); err != nil {
			return fmt.Errorf("reload failed, the running config is kept: %v", err)
		}
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
	case "discard":
		if len(words) != 2 || words[1] != "cache" || c.Cache == nil {
			return fmt.Errorf("the console accepts DISCARD CACHE only (and only with a result cache)")
		}
		c.Cache.Reset(context.Background())
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("DISCARD CACHE")})
	case "kill":
		if len(words) != 2 {
			return fmt.Errorf("usage: KILL <client id> (see SHOW CLIENTS)")
		}
		id, err := strconv.ParseUint(words[1], 10, 32)
		if err != nil || !c.proxy.Kill(uint32(id)) {
			return fmt.Errorf("no client with id %s (see SHOW CLIENTS)", words[1])
		}
		be.Send(&pgproto3.CommandComplete{CommandTag: []byte("KILL")})
	default:
		return fmt.Errorf("unknown command %q; the console accepts SHOW, SET read_only, PAUSE, RESUME, RELOAD, KILL, DISCARD CACHE", words[0])
	}
	return nil
}

func cutAssign(s string) (name, value string, ok bool) {
	if n, v, found := strings.Cut(s, "="); found {
		return strings.TrimSpace(n), strings.TrimSpace(v), true
	}
	f := strings.Fields(s)
	if len(f) == 3 && strings.EqualFold(f[1], "to") {
		return f[0], f[2], true
	}
	return "", "", false
}

func (c *Console) viewNames() []string {
	names := []string{"pools", "clients", "servers", "stats", "config", "failover"}
	if c.QueryLog != nil {
		names = append(names, "queries")
	}
	if c.Limiter != nil {
		names = append(names, "limits", "applications", "budget", "pollers")
	}
	if c.Cache != nil {
		names = append(names, "cache")
	}
	if c.Fleet != nil {
		names = append(names, "fleet")
	}
	for n := range c.Views {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

func (c *Console) view(name string) (Table, bool) {
	switch name {
	case "pools":
		return poolsTable(c.proxy.Pools()), true
	case "clients":
		return clientsTable(c.proxy.Clients()), true
	case "servers":
		return serversTable(c.proxy.Servers()), true
	case "stats":
		return statsTable(c.proxy.Pools()), true
	case "config":
		return configTable(c.proxy.Config().Masked()), true
	case "failover":
		return failoverTable(c.proxy.Pools()), true
	}
	if c.QueryLog != nil && name == "queries" {
		return queriesTable(c.QueryLog.Stats(), "total"), true
	}
	if c.Limiter != nil {
		switch name {
		case "limits":
			return limitsTable(c.Limiter), true
		case "applications":
			return applicationsTable(c.Limiter), true
		case "budget":
			return budgetTable(c.Limiter), true
		case "pollers":
			return pollersTable(c.Limiter), true
		}
	}
	if c.Cache != nil && name == "cache" {
		return cacheTable(c.Cache), true
	}
	if c.Fleet != nil && name == "fleet" {
		return fleetTable(c.Fleet.View(context.Background())), true
	}
	if f, ok := c.Views[name]; ok {
		return f(), true
	}
	return Table{}, false
}

func poolsTable(pools []proxy.PoolStatus) Table {
	t := Table{Columns: []string{"database", "upstream", "upstream_host", "pool_mode", "cl_active", "cl_waiting", "cl_idle",
		"sv_active", "sv_idle", "sv_opening", "pool_size", "max_overflow", "avg_wait_ms", "sv_closing"}}
	for _, p := range pools {
		t.Rows = append(t.Rows, []string{p.Database, p.Upstream, p.UpstreamHost, p.Mode, itoa(p.ClientsActive), itoa(p.ClientsWaiting), itoa(p.ClientsIdle),
			itoa(p.ServersActive), itoa(p.ServersIdle), itoa(p.ServersOpening), itoa(p.Size), itoa(p.MaxOverflow), ms(p.AvgWaitSeconds), itoa(p.ServersClosing)})
	}
	return t
}

func clientsTable(clients []proxy.ClientStatus) Table {
	t := Table{Columns: []string{"id", "user", "database", "application_name", "addr", "state", "connect_time", "request_time", "idle_s", "server", "pinned"}}
	for _, c := range clients {
		srv := ""
		if c.Server != 0 {
			srv = strconv.FormatUint(c.Server, 10)
		}
		t.Rows = append(t.Rows, []string{strconv.FormatUint(uint64(c.ID), 10), c.User, c.Database, c.Application, c.Addr, c.State,
			ts(c.ConnectedAt), ts(c.LastActive), strconv.FormatFloat(c.IdleSeconds, 'f', 1, 64), srv, c.Pinned})
	}
	return t
}

func serversTable(servers []proxy.ServerStatus) Table {
	t := Table{Columns: []string{"id", "database", "upstream", "host", "backend_pid", "state", "client", "tx_status", "outstanding", "connect_time", "request_time"}}
	for _, s := range servers {
		cl := ""
		if s.Client != 0 {
			cl = strconv.FormatUint(uint64(s.Client), 10)
		}
		t.Rows = append(t.Rows, []string{strconv.FormatUint(s.ID, 10), s.Database, s.Upstream, s.Host, strconv.FormatUint(uint64(s.PID), 10),
			s.State, cl, s.TxStatus, strconv.Itoa(s.Outstanding), ts(s.Created), ts(s.LastUsed)})
	}
	return t
}

func statsTable(pools []proxy.PoolStatus) Table {
	t := Table{Columns: []string{"database", "total_xact_count", "total_query_count", "total_wait_count", "wait_timeouts", "server_dials", "dial_errors", "avg_wait_ms"}}
	for _, p := range pools {
		t.Rows = append(t.Rows, []string{p.Database, strconv.FormatUint(p.Transactions, 10), strconv.FormatUint(p.Queries, 10),
			strconv.FormatUint(p.Waits, 10), strconv.FormatUint(p.WaitTimeouts, 10), strconv.FormatUint(p.Dials, 10),
			strconv.FormatUint(p.DialErrors, 10), ms(p.AvgWaitSeconds)})
	}
	return t
}

func configTable(masked string) Table {
	t := Table{Columns: []string{"line"}}
	for _, line := range strings.Split(strings.TrimRight(masked, "\n"), "\n") {
		t.Rows = append(t.Rows, []string{line})
	}
	return t
}

func itoa(n int) string     { return strconv.Itoa(n) }
func ms(s float64) string   { return strconv.FormatFloat(s*1000, 'f', 3, 64) }
func ts(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

// sendTable writes a text-format result set.
func sendTable(be *pgproto3.Backend, t Table, tag string) {
	fields := make([]pgproto3.FieldDescription, len(t.Columns))
	for i, c := range t.Columns {
		fields[i] = pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	}
	be.Send(&pgproto3.RowDescription{Fields: fields})
	for _, r := range t.Rows {
		vals := make([][]byte, len(r))
		for i, v := range r {
			vals[i] = []byte(v)
		}
		be.Send(&pgproto3.DataRow{Values: vals})
	}
	be.Send(&pgproto3.CommandComplete{CommandTag: []byte(fmt.Sprintf("%s %d", tag, len(t.Rows)))})
}

func sendError(be *pgproto3.Backend, code, msg string) {
	be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg})
}
