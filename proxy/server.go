package proxy

import (
	"errors"
	"io"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/limiter"
)

// serverState is where a server connection stands. It changes only in
// setStateLocked (which counts it, per database and upstream, for /metrics
// and SHOW SERVERS), and moves between the pool's lists only in enter.
type serverState uint8

const (
	srvIdle       serverState = iota // in the pool, no client
	srvLinked                        // linked to a client
	srvSyncing                       // linked; pgguard brings its session parameters in line first
	srvResetting                     // the client left; pgguard's ROLLBACK/DISCARD ALL are under way
	srvCancelling                    // released, held until a CancelRequest for its last client is delivered
	srvClosed                        // closed, or found dead
	numServerStates
)

// serverStateNames label the states in metrics and SHOW SERVERS; "active"
// is a linked server, as in PgBouncer.
var serverStateNames = [numServerStates]string{"idle", "active", "syncing", "resetting", "cancelling", "closed"}

func (s serverState) String() string { return serverStateNames[s] }

// backend is one server connection to an upstream. Its pump goroutine reads
// everything the server sends for the connection's whole life: that is how a
// connection the upstream closes while idle (Neon suspending its compute,
// pg_terminate_backend) is noticed at once, without a query round trip.
//
// What becomes of each reply is decided by one queue (requests.go): an
// entry per ReadyForQuery expected, pushed by whoever writes the request,
// popped by the pump.
type backend struct {
	id       uint64
	db       *database
	conn     net.Conn
	out      *sock                // writes (linked client, resets) on conn
	in       sockReader           // the pump's reads of out
	hc       *pgconn.HijackedConn // pid, secret and config for CancelRequest
	upstream string               // "primary", "fallback" or "replica"
	created  time.Time
	act      *limiter.Activity // the budget model's view of it; nil on the fallback or without a limiter

	dead     atomic.Bool   // the server is closing or closed: never hand it out
	ended    chan struct{} // closed when the pump stops reading: the connection is over
	wrote    atomic.Bool   // the unit of work under way may have written (read-your-writes, replica.go)
	lastUsed atomic.Int64  // unix nanos of the last link, for SHOW SERVERS

	// Guarded by mu.
	mu       sync.Mutex
	state    serverState
	client   *client
	queue    requestQueue   // what the server will answer, in order
	replies  []pendingReply // ParseComplete/CloseComplete expected for client batches
	open     bool           // the client sent messages after its last sync point (mid extended-protocol batch)
	batch    openBatch      // ... since when, for pool.query_timeout (timeouts.go)
	txStatus byte           // from the last ReadyForQuery: 'I', 'T' or 'E'
	answered chan struct{}  // closed when the queue empties, for awaitAnswered
	cancels  int            // CancelRequests in flight for this connection
	resetBad bool           // a reset query failed: close instead of reuse
	syncBad  bool           // the last parameter sync failed: close instead of use
	roGen    uint64         // read-only switch generation the server was synced for
	roForced bool           // its last sync forced default_transaction_read_only on (mustReadOnly)
	// abandoned says why pgguard closed the connection under its client
	// ("was closed: ... pool.cancel_timeout ..."); "" when it was lost.
	abandoned string
	// profile is the session parameters b matches (client.profile); it
	// outlives the link, so a client that comes to a server synced for
	// itself, or for any client with the same parameters, needs no sync.
	// Zero: unknown.
	profile unique.Handle[string]
	// What the server holds: parameter values as reported (params) and at
	// connect (initial), custom parameters set, prepared statements.
	params  map[string]string
	initial map[string]string
	custom  kvs
	// staged are custom parameters SET in the unit of work under way: they
	// stick when it ends committed; unitAborted when an error or ROLLBACK
	// ended it.
	staged      kvs
	unitAborted bool
	// schemaStaged: the unit of work under way changes the schema; its
	// commit gives statement texts new keys (stale.go).
	schemaStaged bool
	stmts        serverStmts
	// For the result cache: the tables the unit's finished requests may
	// have written, whether a COMMIT was seen in it, and whether its last
	// outcome was an error or a ROLLBACK (unitWrites decides from them).
	writes        cache.Pending
	unitCommitted bool
	unitUndone    bool
	// settling: the pump is finishing the last outstanding request, whose
	// ReadyForQuery came (readyForQuery); the client waits for it to leave
	// the queue before it counts as idle (client.idleSession).
	settling bool
	// learnDue: the unit of work under way ran a statement that may change
	// session state its text does not show; the pump asks the server when
	// it ends (learn.go), with learnNames, setting names the texts named.
	learnDue   bool
	learnNames []string
	// serverEnded: the server said it is closing (FATAL): its backend is
	// gone, and nothing it ran can commit later.
	serverEnded bool
	// fatalTo: the client that server's FATAL was forwarded to (lost.go).
	fatalTo *client
	// Whose unnamed statement the server holds (a client and its number).
	unnamedOwner *client
	unnamedGen   uint64
	// rerun is a replica-routed send that may be run again on the primary
	// if the replica fails before its reply starts (rerun.go); rerunMark
	// is fwd.flushes when it was sent.
	rerun     []byte
	rerunMark uint64
	rerunAuto bool // ... and it runs outside a transaction block

	// Owned by the pump goroutine.
	rd  serverReader
	fwd output
}

func newBackend(db *database, hc *pgconn.HijackedConn, upstream string) *backend {
	b := &backend{
		id:       db.nextSrvID.Add(1),
		db:       db,
		conn:     hc.Conn,
		out:      newSock(hc.Conn),
		hc:       hc,
		upstream: upstream,
		created:  time.Now(),
		txStatus: 'I',
		params:   maps.Clone(hc.ParameterStatuses),
		initial:  hc.ParameterStatuses,
		state:    srvIdle,
		ended:    make(chan struct{}),
	}
	b.in.init(b.out)
	db.countState(b, srvClosed, srvIdle)
	return b
}

// Dead implements pool.Conn.
func (b *backend) Dead() bool { return b.dead.Load() }

// serverCloseWait bounds the wait for an upstream to end a connection
// pgguard closes (backend.Close).
const serverCloseWait = time.Second

// Close implements pool.Conn. A connection that is still up is ended as a
// client would end it, with a Terminate, and its socket closed once the
// server has closed its end (the pump reads EOF), within serverCloseWait:
// the upstream counts a connection until its backend exits, and the pool
// counts it against the caps until Close returns. A connection already
// lost or closed is closed at once.
func (b *backend) Close() {
	b.mu.Lock()
	up := b.state != srvClosed && !b.dead.Load()
	b.setStateLocked(srvClosed)
	b.mu.Unlock()
	if up {
		b.conn.SetWriteDeadline(time.Now().Add(serverCloseWait))
		if _, err := b.out.Write([]byte{'X', 0, 0, 0, 4}); err == nil {
			t := time.NewTimer(serverCloseWait)
			select {
			case <-b.ended:
			case <-t.C:
			}
			t.Stop()
		}
	}
	b.conn.Close()
}

// setStateLocked is the one place a server's state changes (mu held).
func (b *backend) setStateLocked(to serverState) {
	from := b.state
	if from == to || from == srvClosed {
		return
	}
	b.state = to
	if to == srvClosed {
		b.dead.Store(true)
		b.act.Close(time.Now())
	}
	b.db.countState(b, from, to)
}

// enter moves b to state to and into the pool's matching list: idle goes
// back to the pool (or, with a cancel still in flight, waits as
// cancelling), closed leaves it. Called without mu held: the pool may hand
// b straight to a queued client, which links it.
func (b *backend) enter(to serverState) {
	b.mu.Lock()
	if to == srvIdle && b.cancels > 0 {
		to = srvCancelling
	}
	b.setStateLocked(to)
	b.mu.Unlock()
	switch to {
	case srvIdle:
		b.db.pool.Release(b)
	case srvClosed:
		// Out of the idle list if it died there, else out of the pool's
		// count; both are no-ops for a connection the pool forgot already.
		if !b.db.pool.Remove(b) {
			b.db.pool.Discard(b)
		}
	}
}

// died handles the end of the server connection: out of the pool if idle; the
// linked client, if any, is told and loses its server.
func (b *backend) died(err error) {
	b.mu.Lock()
	for _, r := range b.replies {
		b.skipped(r)
	}
	b.replies = b.replies[:0]
	unsure := b.unsettledWrites()
	b.releaseHeld()
	owed := b.owesClient()
	rerun := b.takeRerun(owed)
	outcome := b.lostOutcome()
	running := outcome == lostUnknown && !b.serverEnded // its backend may still commit
	why := b.abandoned
	// A client whose unit of work is over, linked only while its session
	// is learned, goes on without its server, as an idle one would, with
	// the session state pgguard knew (learn.go).
	learning := b.queue.learning()
	var held []byte // its ReadyForQuery, if kept for the commit position
	if learning {
		held = b.queue.front().held
	}
	b.queue.clear()
	b.signalAnswered()
	c := b.unlinkLocked()
	told := c != nil && b.fatalTo == c
	if learning {
		if c != nil && held != nil {
			c.write(held)
		}
		c = nil
	}
	b.mu.Unlock()
	if running && !unsure.Empty() {
		go b.settleOrphan(unsure)
	} else {
		b.invalidate(unsure)
	}
	if c != nil && !owed && b.db.replicaOf != nil {
		c = nil // a replica lost while pgguard measured it: the client goes to the primary
	}
	if c != nil && rerun != nil {
		b.db.linkedServerDied(b, err)
		c.requestRerun(rerun)
		c = nil
	}
	if c != nil {
		b.db.linkedServerDied(b, err)
		if why == "" {
			why = "was lost"
		}
		b.tellLost(c, err, lostError(b.db, b.db.hostOf(b.upstream), why, outcome), told && outcome != lostUnknown)
	}
	b.enter(srvClosed)
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		b.db.p.log.Debug("server connection ended", "database", b.db.name, "server", b.id, "err", err)
	}
}

// reset detaches b from its client and sends the queries that make it safe
// for another client; the pump returns it to the pool when they complete.
// With the server mid-query it is closed instead.
func (b *backend) reset(c *client, discardAll bool) {
	b.mu.Lock()
	if b.client != c {
		b.mu.Unlock()
		return
	}
	b.unlinkLocked()
	if b.learnDue || b.queue.learning() {
		// The client's settings are not known: none reaches the next client.
		discardAll, b.learnDue, b.learnNames = true, false, b.learnNames[:0]
	}
	if b.queue.len() > 0 && !b.queue.learning() || b.open || b.dead.Load() {
		b.mu.Unlock()
		b.enter(srvClosed)
		return
	}
	// What the client's transaction did is rolled back.
	clear(b.staged)
	b.staged, b.schemaStaged, b.unitAborted = b.staged[:0], false, false
	b.writes.Reset()
	b.unitCommitted, b.unitUndone = false, false
	var q []byte
	sent := inflightQuery{start: time.Now()} // for stall.go
	if b.txStatus != 'I' {
		q = appendQuery(q, "ROLLBACK")
		b.queue.push(request{kind: reqReset, inflightQuery: sent})
	}
	if discardAll {
		q = appendQuery(q, "DISCARD ALL")
		b.queue.push(request{kind: reqReset, inflightQuery: sent})
		b.custom = nil
		b.stmts.clear()
		b.profile = unique.Handle[string]{}
	}
	b.resetBad = false
	if len(q) == 0 {
		b.mu.Unlock()
		b.enter(srvIdle)
		return
	}
	b.unnamedOwner = nil // a Query destroys the unnamed statement
	b.setStateLocked(srvResetting)
	b.mu.Unlock()
	if _, err := b.out.Write(q); err != nil {
		b.enter(srvClosed)
	}
}

// unitDone settles the SETs and RESETs of a finished unit of work (mu
// held): they stick, for the client and the server, unless it was rolled
// back. A RESET to a value the client gave at startup is redone by the
// next sync, before the client's next message runs.
func (b *backend) unitDone() {
	if c := b.client; c != nil {
		c.listenSettle(!b.unitAborted) // LISTENs of a transaction block
	}
	if c := b.client; c != nil && !b.unitAborted && len(b.staged) > 0 {
		inStep := b.profile == c.profile()
		resync := false
		for _, e := range b.staged {
			if c.want.apply(e, &b.custom) {
				resync = true
				c.want.announce = true
			}
		}
		// b and c moved in step, unless a RESET gave b the server's own
		// default; servers synced for c's old values no longer match it.
		c.wantGen.Add(1)
		switch {
		case resync:
			b.profile = unique.Handle[string]{}
		case inStep:
			b.profile = c.profile()
		}
	}
	clear(b.staged)
	b.staged = b.staged[:0]
	if b.schemaStaged && !b.unitAborted {
		b.db.stmtKeys.schemaChanged()
	}
	b.schemaStaged = false
	b.unitAborted = false
}

// signalAnswered wakes awaitAnswered once nothing is outstanding (mu held).
func (b *backend) signalAnswered() {
	if b.queue.len() == 0 && b.answered != nil {
		close(b.answered)
		b.answered = nil
	}
}

// awaitAnswered waits until b has answered every request sent, while it
// stays linked to c.
func (b *backend) awaitAnswered(c *client) {
	b.mu.Lock()
	for b.client == c && b.queue.len() > 0 {
		if b.answered == nil {
			b.answered = make(chan struct{})
		}
		ch := b.answered
		b.mu.Unlock()
		<-ch
		b.mu.Lock()
	}
	b.mu.Unlock()
}

// appendQuery appends a simple-protocol Query message.
func appendQuery(dst []byte, sql string) []byte {
	dst, at := beginMsg(dst, 'Q')
	dst = append(dst, sql...)
	return endMsg(append(dst, 0), at)
}
