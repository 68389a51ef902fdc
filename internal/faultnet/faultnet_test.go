package faultnet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// target is a TCP server for a relay to forward to: it echoes what it reads,
// or, with sink set, counts it without answering.
type target struct {
	ln   net.Listener
	sink bool
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
	got   []chan result // per accepted connection, in accept order
}

// result is what a sink connection received before it ended.
type result struct {
	n   int
	err error
}

func startTarget(t *testing.T, sink bool) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln, sink: sink}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ch := make(chan result, 1)
			tg.mu.Lock()
			tg.conns = append(tg.conns, c)
			tg.got = append(tg.got, ch)
			tg.mu.Unlock()
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				defer c.Close()
				if !sink {
					io.Copy(c, c)
					c.(*net.TCPConn).CloseWrite()
					io.Copy(io.Discard, c)
					return
				}
				n, err := io.Copy(io.Discard, c)
				ch <- result{int(n), err}
			}()
		}
	}()
	t.Cleanup(tg.close)
	return tg
}

// close stops the target and waits for its goroutines.
func (tg *target) close() {
	tg.ln.Close()
	tg.mu.Lock()
	for _, c := range tg.conns {
		c.Close()
	}
	tg.mu.Unlock()
	tg.wg.Wait()
}

// received waits for what sink connection i got before it ended.
func (tg *target) received(t *testing.T, i int) result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tg.mu.Lock()
		var ch chan result
		if i < len(tg.got) {
			ch = tg.got[i]
		}
		tg.mu.Unlock()
		if ch != nil {
			select {
			case r := <-ch:
				return r
			case <-time.After(time.Until(deadline)):
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("target connection %d did not end within 10 s", i)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listen(t *testing.T, opts Options) *Relay {
	t.Helper()
	r, err := Listen(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func dial(t *testing.T, r *Relay) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// noLeak fails t when goroutines started during it are still running once
// its cleanups (registered after this call) have run.
func noLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
	})
}

// TestIntactUnderEverySplit sends random bytes in random-sized writes
// through an echoing target, both directions shaped, and requires every
// byte back in order, in at least as many pieces as the shape implies.
func TestIntactUnderEverySplit(t *testing.T) {
	for _, s := range []Shape{
		{},
		{MaxPiece: 1},
		{MaxPiece: 2, Pause: 50 * time.Microsecond, PauseChance: 0.1},
		{MaxPiece: 5, Pause: time.Millisecond, PauseChance: 0.01},
		{MaxPiece: 5, Stall: 2 * time.Millisecond, StallChance: 0.001},
		{MaxPiece: 7},
		{MaxPiece: 1000},
	} {
		t.Run(fmt.Sprintf("max%d_pause%s_stall%s", s.MaxPiece, s.Pause, s.Stall), func(t *testing.T) {
			noLeak(t)
			tg := startTarget(t, false)
			r := listen(t, Options{Target: tg.ln.Addr().String(), Seed: 7, Up: s, Down: s})
			const clients = 3
			size := 64 << 10
			if s.MaxPiece > 0 && s.MaxPiece < 3 {
				size = 16 << 10
			}
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				c := dial(t, r)
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- roundTrip(c, size, uint64(i))
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			st := r.Stats()
			total := int64(clients * size)
			for _, d := range []Direction{Up, Down} {
				if st.Bytes[d] != total {
					t.Errorf("%s: %d bytes forwarded, want %d", d, st.Bytes[d], total)
				}
				if s.MaxPiece > 0 && st.Pieces[d] < total/int64(s.MaxPiece) {
					t.Errorf("%s: %d pieces for %d bytes, at most %d a piece", d, st.Pieces[d], total, s.MaxPiece)
				}
				if s.PauseChance > 0 && st.Pauses[d] == 0 {
					t.Errorf("%s: no pause taken", d)
				}
			}
			if st.Accepted != clients || st.Resets != 0 || st.DialFailed != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// roundTrip writes size random bytes to c in writes of random size while
// reading them back, and compares.
func roundTrip(c *net.TCPConn, size int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 99))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.UintN(256))
	}
	werr := make(chan error, 1)
	go func() {
		p := data
		for len(p) > 0 {
			k := min(len(p), 1+rng.IntN(3000))
			if _, err := c.Write(p[:k]); err != nil {
				werr <- err
				return
			}
			p = p[k:]
		}
		werr <- c.CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && i < len(data) && got[i] == data[i] {
			i++
		}
		return fmt.Errorf("got %d bytes back, sent %d; first difference at %d", len(got), len(data), i)
	}
	return nil
}

// expectCut reads from c until it fails and requires a reset or EOF (not a
// timeout) within 5 s; it returns the bytes read.
func expectCut(t *testing.T, what string, c net.Conn) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open 5 s after the reset (%d bytes read)", what, n)
	}
	return int(n)
}

// TestResetAfter arms a reset after n bytes Up: the target gets exactly n
// bytes then a reset; the client's connection is reset too.
func TestResetAfter(t *testing.T) {
	noLeak(t)
	tg := startTarget(t, true)
	r := listen(t, Options{Target: tg.ln.Addr().String(), Seed: 1, Up: Shape{MaxPiece: 5}})
	c := dial(t, r)
	const n = 4321
	r.ResetAfter(Up, n)
	if !r.Armed(Up) || r.Armed(Down) {
		t.Fatal("armed in the wrong direction")
	}
	go c.Write(make([]byte, 10000))
	got := tg.received(t, 0)
	if got.n != n || got.err == nil {
		t.Errorf("target received %d bytes and %v, want %d and a reset", got.n, got.err, n)
	}
	expectCut(t, "client", c)
	if r.Armed(Up) {
		t.Error("still armed after firing")
	}
	st := r.Stats()
	if st.Resets != 1 || st.Bytes[Up] != n {
		t.Errorf("stats %+v, want 1 reset and %d bytes up", st, n)
	}
	// Later connections are not affected.
	c2 := dial(t, r)
	if _, err := c2.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c2.CloseWrite()
	if got := tg.received(t, 1); got.n != 5 || got.err != nil {
		t.Errorf("second connection: %d bytes, %v", got.n, got.err)
	}
}

// TestConnResetAfter arms a reset on one connection: it is cut after n
// bytes Down while another connection carries on.
func TestConnResetAfter(t *testing.T) {
	noLeak(t)
	tg := startTarget(t, false)
	r := listen(t, Options{Target: tg.ln.Addr().String(), Down: Shape{MaxPiece: 4}})
	a, b := dial(t, r), dial(t, r)
	for _, c := range []*net.TCPConn{a, b} { // both connected through
		if err := roundTrip2(c, "hi"); err != nil {
			t.Fatal(err)
		}
	}
	cs := r.Conns()
	if len(cs) != 2 || cs[0].ID() != 0 || cs[1].ID() != 1 || cs[0].Upstream() == nil || cs[0].Peer().String() != a.LocalAddr().String() {
		t.Fatalf("conns %v", cs)
	}
	cs[0].ResetAfter(Down, 1000)
	go a.Write(make([]byte, 5000))
	if n := expectCut(t, "a", a); n != 1000 {
		t.Errorf("a read %d bytes before the reset, want 1000", n)
	}
	if err := roundTrip(b, 3000, 3); err != nil {
		t.Errorf("b: %v", err)
	}
	if st := r.Stats(); st.Resets != 1 {
		t.Errorf("stats %+v", st)
	}
}

// roundTrip2 writes s to c and reads it back.
func roundTrip2(c net.Conn, s string) error {
	if _, err := c.Write([]byte(s)); err != nil {
		return err
	}
	buf := make([]byte, len(s))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != s {
		return fmt.Errorf("echo %q %v", buf, err)
	}
	return nil
}

// TestReset resets every open connection on demand, in the middle of an
// echo: both ends see the connection end, and the relay forgets them.
func TestReset(t *testing.T) {
	noLeak(t)
	tg := startTarget(t, false)
	r := listen(t, Options{Target: tg.ln.Addr().String(), Down: Shape{MaxPiece: 3}})
	var cs []*net.TCPConn
	for range 3 {
		c := dial(t, r)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo %q %v", buf, err)
		}
		cs = append(cs, c)
	}
	if n := r.Reset(); n != 3 {
		t.Fatalf("Reset found %d connections, want 3", n)
	}
	for i, c := range cs {
		expectCut(t, fmt.Sprintf("client %d", i), c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().Connections > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := r.Stats(); st.Connections != 0 || st.Resets != 3 {
		t.Errorf("after Reset: %+v", st)
	}
	// The target's side of each connection ended too: it echoes nothing
	// more, and a new connection still works.
	if err := roundTrip(dial(t, r), 1000, 5); err != nil {
		t.Error(err)
	}
}

// TestRandomResetsDeterministic: with ResetChance 1 the first chunk is cut
// at an offset drawn from the seed; the same seed cuts at the same offset,
// and some other seed elsewhere.
func TestRandomResetsDeterministic(t *testing.T) {
	noLeak(t)
	cutAt := func(seed uint64) int {
		tg := startTarget(t, true)
		defer tg.close()
		r := listen(t, Options{Target: tg.ln.Addr().String(), Seed: seed, Up: Shape{ResetChance: 1}})
		defer r.Close()
		c := dial(t, r)
		// Once the relay has dialed (the target accepted), one write lands
		// in its socket whole, and one read takes it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			tg.mu.Lock()
			n := len(tg.got)
			tg.mu.Unlock()
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the relay did not connect to the target")
			}
			time.Sleep(time.Millisecond)
		}
		if _, err := c.Write(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		got := tg.received(t, 0)
		expectCut(t, "client", c)
		if got.err == nil || got.n >= 1000 {
			t.Fatalf("seed %d: target got %d bytes, %v; want part of them and a reset", seed, got.n, got.err)
		}
		return got.n
	}
	a, b := cutAt(42), cutAt(42)
	if a != b {
		t.Errorf("seed 42 cut at %d, then at %d", a, b)
	}
	differs := false
	for seed := uint64(1); seed < 6 && !differs; seed++ {
		differs = cutAt(seed) != a
	}
	if !differs {
		t.Errorf("seeds 1-5 all cut at %d, like seed 42", a)
	}
}

// TestStall holds one direction: nothing passes while it is stalled, all of
// it once the stall ends; the other direction flows meanwhile.
func TestStall(t *testing.T) {
	noLeak(t)
	tg := startTarget(t, false)
	r := listen(t, Options{Target: tg.ln.Addr().String()})
	c := dial(t, r)
	if err := roundTrip(dial(t, r), 100, 1); err != nil {
		t.Fatal(err)
	}
	r.Stall(Down, time.Minute)
	if _, err := c.Write([]byte("stalled")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); n > 0 || err == nil {
		t.Fatalf("read %q during a stall", buf[:n])
	}
	// Up still flows: the target got the bytes (Bytes counts them).
	if st := r.Stats(); st.Bytes[Up] != 107 || st.Bytes[Down] != 100 {
		t.Errorf("during the stall: %+v", st)
	}
	r.Unstall()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf[:7]); err != nil || string(buf[:7]) != "stalled" {
		t.Fatalf("after the stall: %q %v", buf[:7], err)
	}
}

// TestCloseWaits closes a relay with connections stalled and mid-dial:
// Close returns promptly, the clients see their connections end, and no
// goroutine is left.
func TestCloseWaits(t *testing.T) {
	noLeak(t)
	tg := startTarget(t, false)
	r, err := Listen(Options{Target: tg.ln.Addr().String(), Down: Shape{MaxPiece: 2}})
	if err != nil {
		t.Fatal(err)
	}
	var cs []*net.TCPConn
	for range 4 {
		c := dial(t, r)
		c.Write([]byte("some bytes"))
		cs = append(cs, c)
	}
	r.Stall(Both, time.Hour)
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on stalled connections")
	}
	for i, c := range cs {
		expectCut(t, fmt.Sprintf("client %d", i), c)
	}
	if _, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		t.Error("a closed relay accepts connections")
	}
	r.Close() // again: a no-op
}

// TestDialFailure: when the target refuses, the client's connection is
// reset at once.
func TestDialFailure(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	r := listen(t, Options{Target: addr})
	// The relay accepts, then resets: the client sees the reset on connect
	// or on its first read.
	if c, err := net.Dial("tcp", r.Addr()); err == nil {
		defer c.Close()
		expectCut(t, "client", c)
	}
	if st := r.Stats(); st.DialFailed != 1 {
		t.Errorf("stats %+v, want 1 failed dial", st)
	}
}

// TestBadOptions rejects what cannot work.
func TestBadOptions(t *testing.T) {
	for _, o := range []Options{
		{},
		{Target: "127.0.0.1:1", Up: Shape{MaxPiece: -1}},
		{Target: "127.0.0.1:1", Down: Shape{ResetChance: 1.5}},
	} {
		if r, err := Listen(o); err == nil {
			r.Close()
			t.Errorf("Listen(%+v) succeeded", o)
		}
	}
}
