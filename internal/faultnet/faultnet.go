// Package faultnet is a fault-injecting TCP relay for tests: put it between
// pgguard and PostgreSQL (or between a driver and pgguard) and the bytes
// still arrive intact and in order, but chunked as a slow WAN would chunk
// them — every write split into pieces of 1..N bytes with short pauses —
// and, on demand or at random, stalled or cut off by a reset in the middle
// of a message.
//
//	r, err := faultnet.Listen(faultnet.Options{
//		Target: "127.0.0.1:5432",
//		Seed:   1,
//		Down:   faultnet.Shape{MaxPiece: 5, Pause: 200 * time.Microsecond, PauseChance: 0.02},
//	})
//	defer r.Close()
//	// connect to r.Addr() instead of the target
//
// The relay knows nothing of the PostgreSQL protocol. Random decisions come
// from a generator per connection and direction, seeded from Options.Seed and
// the connection's accept order, so a run that feeds a connection the same
// chunks makes the same decisions. Close stops every goroutine it started
// and waits for them.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction is one way through the relay.
type Direction int

const (
	// Up is from the side that connected to the relay to the target
	// (driver to pgguard, pgguard to PostgreSQL).
	Up Direction = iota
	// Down is from the target back (PostgreSQL to pgguard).
	Down
	// Both means Up and Down, where a method accepts it.
	Both
)

// String returns "up", "down" or "both".
func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Shape is what the relay does to one direction's bytes. The zero value
// passes them on as they come.
type Shape struct {
	// MaxPiece > 0 splits every chunk read into writes of 1..MaxPiece bytes,
	// sizes uniformly random, each its own TCP segment (Go sets
	// TCP_NODELAY), so the reader's reads end inside messages.
	MaxPiece int
	// Pause is the longest pause after a piece, each one uniform in
	// (0, Pause]; PauseChance is the probability of one after each piece.
	// Pauses let the reader drain its socket, so that its next read returns
	// the next piece alone.
	Pause       time.Duration
	PauseChance float64
	// Stall is the length of a random stall of this direction and
	// StallChance its probability after each piece; see also Relay.Stall.
	Stall       time.Duration
	StallChance float64
	// ResetChance is the probability, for each chunk read from the source,
	// that the relay forwards only part of it (cut at a random offset) and
	// then resets the connection: both sides get a TCP RST.
	ResetChance float64
}

// Options configure a Relay.
type Options struct {
	// Target is the host:port the relay connects each accepted connection to.
	Target string
	// Listen is the address to listen on; "" means 127.0.0.1:0.
	Listen string
	// Seed seeds every random decision.
	Seed uint64
	// Up and Down shape each direction; SetShape changes them later.
	Up, Down Shape
	// DialTimeout bounds the connection to Target (default 5 s). When it
	// fails, the accepted connection is reset, as a refused one would be.
	DialTimeout time.Duration
}

// Stats counts what a relay did. Per-direction fields are indexed by Up
// and Down.
type Stats struct {
	Accepted    int64    // connections accepted
	DialFailed  int64    // of which the target refused or timed out
	Resets      int64    // connections the relay reset
	Bytes       [2]int64 // bytes forwarded
	Reads       [2]int64 // chunks read from the source
	Pieces      [2]int64 // writes made: more than Reads when splitting
	Pauses      [2]int64 // pauses and stalls taken between pieces
	Connections int64    // connections open now
}

// Relay accepts connections and relays each to the target. Its methods may
// be called from any goroutine.
type Relay struct {
	opts   Options
	ln     net.Listener
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	shapes     [2]atomic.Pointer[Shape]
	stallUntil [2]atomic.Int64 // unix nanoseconds; traffic waits until then
	trig       trigger         // a reset armed by ResetAfter

	mu     sync.Mutex
	conns  map[*Conn]struct{} // open connections
	nextID uint64             // accept order, for seeding
	closed bool

	accepted, dialFailed, resets atomic.Int64
	bytes, reads, pieces, pauses [2]atomic.Int64
}

// Listen starts a relay to opts.Target and returns once it listens.
func Listen(opts Options) (*Relay, error) {
	if opts.Target == "" {
		return nil, errors.New("faultnet: no Target")
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	for _, s := range []Shape{opts.Up, opts.Down} {
		if err := s.validate(); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	r := &Relay{opts: opts, ln: ln, conns: map[*Conn]struct{}{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.shapes[Up].Store(&opts.Up)
	r.shapes[Down].Store(&opts.Down)
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// validate rejects a shape that cannot be applied.
func (s Shape) validate() error {
	switch {
	case s.MaxPiece < 0, s.Pause < 0, s.Stall < 0:
		return fmt.Errorf("faultnet: negative value in %+v", s)
	case !chance(s.PauseChance), !chance(s.StallChance), !chance(s.ResetChance):
		return fmt.Errorf("faultnet: a chance outside [0, 1] in %+v", s)
	}
	return nil
}

func chance(p float64) bool { return p >= 0 && p <= 1 }

// Addr is the address to connect to instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Target is the address the relay forwards to.
func (r *Relay) Target() string { return r.opts.Target }

// SetShape changes how dir (Up, Down or Both) is shaped from the next chunk
// on, for open connections too.
func (r *Relay) SetShape(dir Direction, s Shape) error {
	if err := s.validate(); err != nil {
		return err
	}
	for _, d := range dirs(dir) {
		r.shapes[d].Store(&s)
	}
	return nil
}

// Shape returns how dir (Up or Down) is shaped now.
func (r *Relay) Shape(dir Direction) Shape { return *r.shapes[dir].Load() }

// Stall holds all traffic in dir (Up, Down or Both), on every connection,
// for d from now; bytes already read wait in the relay. A shorter Stall
// does not cut a longer one short; Stall(dir, 0) does nothing.
func (r *Relay) Stall(dir Direction, d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for _, i := range dirs(dir) {
		for {
			old := r.stallUntil[i].Load()
			if old >= until || r.stallUntil[i].CompareAndSwap(old, until) {
				break
			}
		}
	}
}

// Unstall ends every stall set by Stall.
func (r *Relay) Unstall() {
	r.stallUntil[Up].Store(0)
	r.stallUntil[Down].Store(0)
}

// ResetAfter arms a reset: once n more bytes have been forwarded in dir (Up
// or Down), counted over every connection, the connection that carries the
// n-th byte is reset right after it, so a message spanning that point is
// cut in the middle. n = 0 resets the next connection to send in dir before
// it writes anything. Arming again replaces the previous arming.
func (r *Relay) ResetAfter(dir Direction, n int64) { r.trig.arm(dir, n) }

// Armed reports whether a reset armed by ResetAfter in dir has yet to fire.
func (r *Relay) Armed(dir Direction) bool { return r.trig.armed[dir].Load() }

// Reset resets every open connection now and returns how many there were.
func (r *Relay) Reset() int {
	cs := r.Conns()
	for _, c := range cs {
		c.Reset()
	}
	return len(cs)
}

// Conns returns the open connections in accept order.
func (r *Relay) Conns() []*Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Conn, 0, len(r.conns))
	for c := range r.conns {
		out = append(out, c)
	}
	for i := 1; i < len(out); i++ { // few connections: insertion sort by id
		for j := i; j > 0 && out[j].id < out[j-1].id; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Stats returns the counts so far.
func (r *Relay) Stats() Stats {
	s := Stats{Accepted: r.accepted.Load(), DialFailed: r.dialFailed.Load(), Resets: r.resets.Load()}
	for d := range 2 {
		s.Bytes[d], s.Reads[d], s.Pieces[d], s.Pauses[d] = r.bytes[d].Load(), r.reads[d].Load(), r.pieces[d].Load(), r.pauses[d].Load()
	}
	r.mu.Lock()
	s.Connections = int64(len(r.conns))
	r.mu.Unlock()
	return s
}

// Close stops accepting, closes every connection and waits until every
// goroutine of the relay has returned. It may be called more than once.
func (r *Relay) Close() error {
	r.mu.Lock()
	already := r.closed
	r.closed = true
	conns := make([]*Conn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	var err error
	if !already {
		r.cancel()
		err = r.ln.Close()
	}
	for _, c := range conns {
		c.close()
	}
	r.wg.Wait()
	return err
}

// accept runs until the listener closes.
func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		nc, err := r.ln.Accept()
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // EMFILE and the like: retry
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			nc.Close()
			return
		}
		c := &Conn{r: r, id: r.nextID, client: nc.(*net.TCPConn)}
		r.nextID++
		r.conns[c] = struct{}{}
		r.accepted.Add(1)
		r.wg.Add(1)
		r.mu.Unlock()
		go c.serve()
	}
}

// forget drops c from the open connections.
func (r *Relay) forget(c *Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// waitStall blocks while dir is stalled; false means the relay closed.
func (r *Relay) waitStall(dir Direction) bool {
	for {
		until := r.stallUntil[dir].Load()
		d := time.Until(time.Unix(0, until))
		if until == 0 || d <= 0 {
			return true
		}
		if !r.sleep(min(d, 50*time.Millisecond)) { // recheck: Unstall may end it early
			return false
		}
	}
}

// sleep waits d or until Close; false means the relay closed.
func (r *Relay) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// dirs expands Both.
func dirs(d Direction) []Direction {
	switch d {
	case Up, Down:
		return []Direction{d}
	case Both:
		return []Direction{Up, Down}
	}
	panic(fmt.Sprintf("faultnet: bad direction %d", int(d)))
}

// trigger is a reset armed to fire after a count of bytes in one direction.
type trigger struct {
	armed [2]atomic.Bool // fast path: checked before every piece
	mu    sync.Mutex
	left  [2]int64
}

// arm sets the trigger for dir to fire after n bytes.
func (t *trigger) arm(dir Direction, n int64) {
	if dir != Up && dir != Down {
		panic("faultnet: ResetAfter needs Up or Down")
	}
	t.mu.Lock()
	t.left[dir] = max(n, 0)
	t.armed[dir].Store(true)
	t.mu.Unlock()
}

// take is called before writing k bytes in dir: it returns how many of
// them to write and whether to reset after those.
func (t *trigger) take(dir Direction, k int) (int, bool) {
	if !t.armed[dir].Load() {
		return k, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.armed[dir].Load() {
		return k, false
	}
	if t.left[dir] <= int64(k) {
		k = int(t.left[dir])
		t.armed[dir].Store(false)
		return k, true
	}
	t.left[dir] -= int64(k)
	return k, false
}
