package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgguard/pgguard/failover"
)

// The listener: LISTEN/NOTIFY under transaction pooling. Each database has
// one; once a transaction-mode client LISTENs, it opens one server
// connection of its own (dialed like the pool's, to the upstream in use)
// on which every channel any client subscribes to is LISTENed once, and
// fans each NotificationResponse out to the channel's subscribers
// (listen_client.go) in the order the server sent them.
//
// Neon: the connection sends nothing nobody asked for. When the upstream
// closes it (a compute suspends: 57P01), it stays closed until a client's
// query or LISTEN reaches the upstream (the compute is awake then anyway),
// or until notify.reconnect_every, if set; then every channel is LISTENed
// again and each subscriber gets a WARNING naming its channels and how long
// nothing listened (notifications sent meanwhile are lost, as for a direct
// client whose session was cut).
//
// State lives in one place: the listener's mu guards its channels, its
// subscribers' subscriptions and its connection; the connection's reader
// goroutine is the only reader of the socket.

// listener is one database's listening side. The zero value is unused:
// newListener.
type listener struct {
	db *database

	// needed: the connection is down while channels are subscribed; a
	// client's query restores it first (beforeQuery). Set under mu, read
	// without it on the hot path.
	needed atomic.Bool

	mu       sync.Mutex
	channels map[string]*channel
	subs     map[*client]*subscriber
	conn     *listenConn // nil while down
	// restoring is closed when the connection attempt under way ends.
	restoring chan struct{}
	// downSince is when the upstream closed the last connection (zero: it
	// never had one, or pgguard closed it with no channel left).
	downSince time.Time
	downWhy   string
	lastFail  time.Time // last failed attempt, spacing the next (restoreBackoff)
	retry     *time.Timer
	closed    bool

	// Counters for SHOW LISTENERS and metrics (mu).
	received, delivered, dropped uint64
	gaps                         uint64
	gapSeconds                   float64
	cut                          uint64 // clients disconnected past notify.client_buffer
}

// channel is one LISTENed name.
type channel struct {
	name string
	subs map[*subscriber]struct{} // committed subscriptions
	// staged counts LISTENs of it in open transaction blocks: the server
	// listens already, so notifications committed after theirs reach them.
	staged int
	// listen is the command that LISTENs it on the current connection;
	// nil while down.
	listen                       *listenCmd
	received, delivered, dropped uint64
}

func (ch *channel) refs() int { return len(ch.subs) + ch.staged }

// listenCmd is one Query sent on the listening connection; done is closed
// at its ReadyForQuery (err set first if it failed or the connection ended).
type listenCmd struct {
	done chan struct{}
	err  error
}

// listenConn is one listening server connection.
type listenConn struct {
	conn     net.Conn
	fe       *pgproto3.Frontend // read only by the reader goroutine
	pid      uint32
	upstream string
	since    time.Time
	cmds     []*listenCmd // awaiting their ReadyForQuery, oldest first (listener.mu)
	leased   bool         // holds a lease of the fleet cap, given back once it ends
	gave     atomic.Bool
}

// restoreBackoff spaces attempts after a failed one, so queries to an
// unreachable upstream do not each wait for a dial of their own.
const restoreBackoff = time.Second

func newListener(db *database) *listener {
	return &listener{db: db, channels: map[string]*channel{}, subs: map[*client]*subscriber{}}
}

// beforeQuery is called before a client's query is forwarded: with the
// connection down and channels subscribed, it is re-established first, so
// a notification the query commits is heard.
func (l *listener) beforeQuery() {
	if !l.needed.Load() {
		return
	}
	l.ensure(l.db.p.ctx)
}

// ensure returns once the connection is up with every channel LISTENed,
// or an attempt failed; it starts an attempt when none is under way.
func (l *listener) ensure(ctx context.Context) error {
	l.mu.Lock()
	waited := false
	for {
		switch {
		case l.closed:
			l.mu.Unlock()
			return nil
		case l.restoring != nil:
			ch := l.restoring
			l.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
			l.mu.Lock()
			waited = true
			continue
		case l.conn != nil:
			l.mu.Unlock()
			return nil
		case waited || time.Since(l.lastFail) < restoreBackoff:
			l.mu.Unlock()
			return fmt.Errorf("could not open the listening connection for database %q (retried %s after a failure)", l.db.name, restoreBackoff)
		}
		l.restoring = make(chan struct{})
		go l.restore()
	}
}

// restore opens a listening connection and LISTENs every channel with
// subscribers on it; then subscribers of a gap hear of it.
func (l *listener) restore() {
	err := l.open()
	l.mu.Lock()
	close(l.restoring)
	l.restoring = nil
	if err != nil {
		l.lastFail = time.Now()
		l.mu.Unlock()
		l.db.p.log.Warn("could not open the listening connection; it is retried before the next query", "database", l.db.name, "err", err)
		return
	}
	l.mu.Unlock()
}

// open dials, LISTENs every channel subscribed, and installs the
// connection once the server confirmed them.
func (l *listener) open() error {
	ctx, cancel := context.WithCancel(l.db.p.ctx)
	defer cancel()
	u := l.db.active()
	// On the primary it holds a lease of the fleet cap, as a pool's
	// connection does: the cap counts it (and the pool keeps one fewer).
	leased := u == failover.Primary && l.db.lease != nil
	if leased && !l.db.lease.TryTake() {
		return fmt.Errorf("the fleet's fleet_max_connections for database %q is reached: no lease for the listening connection", l.db.name)
	}
	hc, err := l.dial(ctx, u)
	if err != nil {
		if leased {
			l.db.lease.Give()
		}
		return err
	}
	if u == failover.Primary {
		l.db.p.Limiter.ObserveConnect(l.db.name, listenerApp, time.Now())
	}
	lc := &listenConn{conn: hc.Conn, fe: hc.Frontend, pid: hc.PID, upstream: u.String(), since: time.Now(), leased: leased}
	go l.read(lc)

	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		lc.conn.Close()
		return errors.New("pgguard is closing")
	}
	var names []string
	for name, ch := range l.channels {
		if ch.refs() > 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var cmd *listenCmd
	if len(names) > 0 {
		cmd = l.sendLocked(lc, listenSQL("LISTEN", names))
		for _, name := range names {
			l.channels[name].listen = cmd
		}
	}
	l.conn = lc // commands sent from here on queue behind this one
	l.mu.Unlock()

	if cmd != nil {
		wait := max(l.db.p.cfg.Load().Pool.ConnectTimeout.Duration, 10*time.Second)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-cmd.done:
		case <-t.C:
			lc.conn.Close() // a frozen server: the reader ends the command
			<-cmd.done
		case <-ctx.Done():
			lc.conn.Close()
			return ctx.Err()
		}
		if cmd.err != nil {
			l.lost(lc, cmd.err)
			return cmd.err
		}
	}
	l.mu.Lock()
	if l.conn != lc {
		l.mu.Unlock()
		return errors.New("the listening connection ended while it was being opened")
	}
	l.needed.Store(false)
	if l.retry != nil {
		l.retry.Stop()
		l.retry = nil
	}
	if !l.downSince.IsZero() {
		gap := time.Since(l.downSince)
		l.gaps++
		l.gapSeconds += gap.Seconds()
		l.reportGapLocked(gap)
		l.downSince = time.Time{}
	}
	l.mu.Unlock()
	l.db.p.log.Info("listening connection open", "database", l.db.name, "upstream", lc.upstream, "backend_pid", lc.pid, "channels", len(names))
	return nil
}

// dial opens, authenticates and hijacks a connection to u, as the pool's
// are opened.
func (l *listener) dial(ctx context.Context, u failover.Upstream) (*pgconn.HijackedConn, error) {
	pc, err := l.db.connect(ctx, u)
	if err != nil {
		return nil, err
	}
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(context.Background())
		return nil, err
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, err
	}
	return hc, nil
}

// listenerApp is the application the budget model books the listening
// connection's connects to.
const listenerApp = "pgguard (listener)"

// listenSQL is one Query of verb (LISTEN or UNLISTEN) for every name.
func listenSQL(verb string, names []string) string {
	var sb strings.Builder
	for i, n := range names {
		if i > 0 {
			sb.WriteString("; ")
		}
		sb.WriteString(verb)
		sb.WriteByte(' ')
		sb.WriteString(quoteIdent(n))
	}
	return sb.String()
}

// sendLocked writes a Query on lc and returns the command awaiting its
// ReadyForQuery (mu held: commands are queued in the order written).
func (l *listener) sendLocked(lc *listenConn, sql string) *listenCmd {
	cmd := &listenCmd{done: make(chan struct{})}
	lc.cmds = append(lc.cmds, cmd)
	lc.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := lc.conn.Write(appendQuery(nil, sql)); err != nil {
		lc.conn.Close() // the reader ends the commands
	}
	return cmd
}

// read is the connection's reader goroutine: notifications are fanned out,
// replies end the oldest command, the end of the connection is a gap.
func (l *listener) read(lc *listenConn) {
	defer l.db.p.recoverPanic("listener", func() { lc.conn.Close(); l.lost(lc, errors.New("internal error")) })
	var cmdErr error
	for {
		msg, err := lc.fe.Receive()
		if err != nil {
			l.lost(lc, err)
			return
		}
		switch m := msg.(type) {
		case *pgproto3.NotificationResponse:
			l.fanOut(m)
		case *pgproto3.ErrorResponse:
			if m.Severity == "FATAL" || m.Code == codeAdminShutdown {
				l.lost(lc, fmt.Errorf("%s %s: %s", m.Severity, m.Code, m.Message))
				lc.conn.Close()
				return
			}
			cmdErr = fmt.Errorf("%s (SQLSTATE %s)", m.Message, m.Code)
		case *pgproto3.ReadyForQuery:
			l.mu.Lock()
			if len(lc.cmds) > 0 {
				cmd := lc.cmds[0]
				lc.cmds = lc.cmds[1:]
				cmd.err = cmdErr
				close(cmd.done)
			}
			l.mu.Unlock()
			cmdErr = nil
		}
	}
}

// lost handles the end of lc: commands fail, channels are no longer
// listened, and a gap starts unless pgguard closed it.
func (l *listener) lost(lc *listenConn, err error) {
	if lc.leased && lc.gave.CompareAndSwap(false, true) {
		l.db.lease.Give()
	}
	l.mu.Lock()
	for _, cmd := range lc.cmds {
		cmd.err = fmt.Errorf("the listening connection ended: %w", err)
		close(cmd.done)
	}
	lc.cmds = nil
	if l.conn != lc {
		l.mu.Unlock()
		return
	}
	l.conn = nil
	subscribed := false
	for _, ch := range l.channels {
		ch.listen = nil
		subscribed = subscribed || ch.refs() > 0
	}
	if subscribed && !l.closed {
		if l.downSince.IsZero() { // else a gap goes on: an attempt to end it failed
			l.downSince, l.downWhy = time.Now(), err.Error()
		}
		l.needed.Store(true)
		l.scheduleLocked()
	}
	l.mu.Unlock()
	lc.conn.Close()
	if subscribed {
		l.db.p.log.Warn("listening connection lost; it is re-established before the next query (notify.reconnect_every for a schedule)",
			"database", l.db.name, "backend_pid", lc.pid, "err", err)
	}
}

// scheduleLocked arms notify.reconnect_every, if set (mu held).
func (l *listener) scheduleLocked() {
	every := l.db.p.cfg.Load().Notify.ReconnectEvery.Duration
	if every <= 0 || l.retry != nil {
		return
	}
	l.retry = time.AfterFunc(every, func() {
		l.mu.Lock()
		l.retry = nil
		l.mu.Unlock()
		if l.needed.Load() {
			l.ensure(l.db.p.ctx)
			l.mu.Lock()
			if l.needed.Load() && !l.closed {
				l.scheduleLocked()
			}
			l.mu.Unlock()
		}
	})
}

// fanOut queues a notification for every subscriber of its channel.
func (l *listener) fanOut(m *pgproto3.NotificationResponse) {
	msg, _ := m.Encode(nil)
	var cut []*subscriber
	l.mu.Lock()
	l.received++
	ch := l.channels[m.Channel]
	if ch == nil {
		l.mu.Unlock()
		return
	}
	ch.received++
	for s := range ch.subs {
		if s.enqueue(msg, 1) {
			ch.delivered++
			l.delivered++
		} else if dropped := s.overflow(); dropped >= 0 {
			ch.dropped += uint64(dropped) + 1
			l.dropped += uint64(dropped) + 1
			l.cut++
			cut = append(cut, s)
		}
	}
	l.mu.Unlock()
	for _, s := range cut {
		s.cutOff(l.db.p.cfg.Load().Notify.ClientBuffer)
	}
}

// reportGapLocked tells every subscriber which of its channels went
// unheard for gap (mu held).
func (l *listener) reportGapLocked(gap time.Duration) {
	for _, s := range l.subs {
		if len(s.channels) == 0 {
			continue
		}
		names := make([]string, 0, len(s.channels))
		for n := range s.channels {
			names = append(names, quoteIdent(n))
		}
		slices.Sort(names)
		notice := pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000",
			Message: fmt.Sprintf("pgguard: no server listened on channel %s for %s (the listening connection was closed: %s); notifications sent meanwhile were lost",
				strings.Join(names, ", "), gap.Round(time.Millisecond), l.downWhy),
			Hint: "pgguard re-establishes it before the next query; notify.reconnect_every does it on a schedule, which keeps a Neon compute awake"}
		msg, _ := notice.Encode(nil)
		s.enqueue(msg, 0)
	}
}

// connected reports whether the listening connection is open, and to
// which upstream.
func (l *listener) connected() (upstream string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return "", false
	}
	return l.conn.upstream, true
}

// retire closes the connection (its upstream is no longer in use); it is
// re-established on the active upstream before the next query.
func (l *listener) retire() {
	l.mu.Lock()
	lc := l.conn
	l.mu.Unlock()
	if lc != nil {
		lc.conn.Close()
	}
}

// close ends the listener for good (Proxy.Close).
func (l *listener) close() {
	l.mu.Lock()
	l.closed = true
	lc := l.conn
	if l.retry != nil {
		l.retry.Stop()
	}
	l.mu.Unlock()
	if lc != nil {
		lc.conn.Close()
	}
}

// channelDroppedLocked forgets a channel nobody subscribes to any more and
// UNLISTENs it; with no channel left the connection closes, so an idle
// instance holds no listening backend (mu held).
func (l *listener) channelDroppedLocked(ch *channel) {
	if ch.refs() > 0 {
		return
	}
	delete(l.channels, ch.name)
	if len(l.channels) == 0 {
		// Nothing to listen to: no connection, no gap, nothing to restore.
		l.needed.Store(false)
		l.downSince = time.Time{}
		if l.retry != nil {
			l.retry.Stop()
			l.retry = nil
		}
		if lc := l.conn; lc != nil {
			l.conn = nil // lost() then finds it gone
			lc.conn.Close()
		}
		return
	}
	if l.conn == nil {
		return
	}
	if ch.listen != nil {
		l.sendLocked(l.conn, listenSQL("UNLISTEN", []string{ch.name}))
	}
}
