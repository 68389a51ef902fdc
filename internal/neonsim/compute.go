package neonsim

import (
	"maps"
	"math"
	"time"

	"sync"
)

// Ledger is what a compute did: the ground truth tests compare pgguard's
// model against.
type Ledger struct {
	Endpoint string
	// Awake are the awake intervals, oldest first; the last has a zero End
	// while the compute is awake. An interval starts when a wake-up begins
	// (a starting compute is billed: the cold start counts) and ends at the
	// suspend: suspend_after past the last activity, or when forced.
	Awake []Interval
	// AwakeTime is the sum of Awake up to the time of the snapshot.
	AwakeTime time.Duration
	// CUSeconds is AwakeTime in seconds x the compute's size.
	CUSeconds float64
	// Wakes are the wake-ups, oldest first.
	Wakes []Wake
	// Suspends counts the suspends (idle, forced, or by a switch).
	Suspends int
	// Sessions counts the sessions the compute admitted.
	Sessions int
	// SessionsBy counts them by "application_name/user".
	SessionsBy map[string]int
	// Refused counts the connections refused with an error after the
	// endpoint was known (switches, connection limit).
	Refused int
	// Queries counts simple Query and extended Execute messages run;
	// SimpleQueries the first kind alone.
	Queries, SimpleQueries int64
	// Peak is the most sessions open at once.
	Peak int
}

// Interval is [Start, End); End is zero while open.
type Interval struct{ Start, End time.Time }

// Wake is one wake-up of a suspended compute.
type Wake struct {
	// At is when the first connection asked for the compute.
	At time.Time
	// Application and User are the startup parameters of the session that
	// caused it.
	Application, User string
	// ColdStart is how long that session waited.
	ColdStart time.Duration
	// Arrived is when that session's TCP connection was accepted: At minus
	// Arrived is its TLS handshake and startup packet, which a client
	// dialing at Arrived cannot tell from the compute's start.
	Arrived time.Time
}

// Cause names the wake's session: "application_name/user".
func (w Wake) Cause() string { return w.Application + "/" + w.User }

type computeState uint8

const (
	suspended computeState = iota
	waking
	awake
)

// compute is one endpoint's compute. Its mutex guards everything; sessions
// report their busy transitions, never every message.
type compute struct {
	sim *Sim
	id  string

	mu        sync.Mutex
	state     computeState
	woken     chan struct{} // closed when the wake under way ends
	sessions  map[*session]struct{}
	busy      int       // sessions active (query running or in a transaction block)
	last      time.Time // end of the latest activity or session start
	timer     *time.Timer
	quota     bool
	disabled  bool
	suspended bool
	closed    bool
	led       Ledger
}

func newCompute(s *Sim, id string) *compute {
	c := &compute{sim: s, id: id, sessions: map[*session]struct{}{}}
	c.led.Endpoint = id
	c.led.SessionsBy = map[string]int{}
	c.timer = time.AfterFunc(math.MaxInt64, c.check)
	return c
}

// refusalLocked is the switch error a connect gets now, or nil.
func (c *compute) refusalLocked() *refusal {
	switch {
	case c.suspended:
		return &refusal{"ERROR", "XX000", MsgProjectSuspended}
	case c.disabled:
		return &refusal{"ERROR", "XX000", MsgEndpointDisabled}
	case c.quota:
		return &refusal{"ERROR", "XX000", MsgQuotaExceeded}
	}
	return nil
}

// admit wakes the compute if needed, waits for it, and registers s. It
// returns a refusal to send the client, or done closing (the sim closes).
func (c *compute) admit(s *session, done <-chan struct{}) *refusal {
	c.mu.Lock()
	for {
		if r := c.refusalLocked(); r != nil || c.closed {
			c.led.Refused++
			c.mu.Unlock()
			if r == nil {
				r = &refusal{"FATAL", "57P01", MsgTerminated}
			}
			return r
		}
		if c.state == awake {
			break
		}
		if c.state == suspended {
			c.startWakeLocked(s)
		}
		ch := c.woken
		c.mu.Unlock()
		select {
		case <-ch:
		case <-done:
			return &refusal{"FATAL", "57P01", MsgTerminated}
		}
		c.mu.Lock()
	}
	if len(c.sessions) >= c.sim.opts.MaxConnections {
		c.led.Refused++
		c.mu.Unlock()
		return &refusal{"FATAL", "53300", MsgTooManyClients}
	}
	c.sessions[s] = struct{}{}
	c.led.Sessions++
	c.led.SessionsBy[s.app+"/"+s.user]++
	c.led.Peak = max(c.led.Peak, len(c.sessions))
	s.busy = true // the startup runs until its ReadyForQuery
	c.busy++
	c.touchLocked(time.Now())
	c.mu.Unlock()
	return nil
}

// startWakeLocked begins a wake-up caused by s.
func (c *compute) startWakeLocked(s *session) {
	now := time.Now()
	cold := c.sim.opts.ColdStart
	c.state = waking
	c.woken = make(chan struct{})
	c.led.Wakes = append(c.led.Wakes, Wake{At: now, Application: s.app, User: s.user, ColdStart: cold, Arrived: s.arrived})
	c.led.Awake = append(c.led.Awake, Interval{Start: now})
	cause := s.app + "/" + s.user
	finish := func() {
		c.mu.Lock()
		if c.state == waking {
			c.state = awake
			c.touchLocked(time.Now())
		}
		close(c.woken)
		c.mu.Unlock()
		c.notify(true, cause)
	}
	if cold <= 0 {
		c.state = awake
		close(c.woken)
		go c.notify(true, cause)
		return
	}
	time.AfterFunc(cold, finish)
}

func (c *compute) notify(awake bool, cause string) {
	if f := c.sim.opts.OnChange; f != nil {
		f(c.id, awake, cause)
	}
}

// touchLocked records activity ending (or a session starting) at now and
// re-arms the suspend timer.
func (c *compute) touchLocked(now time.Time) {
	if now.After(c.last) {
		c.last = now
	}
	c.armLocked(now)
}

// armLocked sets the timer for the suspend due when nothing is active.
func (c *compute) armLocked(now time.Time) {
	if c.state != awake || c.busy > 0 {
		c.timer.Stop()
		return
	}
	c.timer.Reset(max(c.last.Add(c.sim.opts.SuspendAfter).Sub(now), 0))
}

// setBusy records s turning active or idle; s.busy is guarded by c.mu.
func (c *compute) setBusy(s *session, busy bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.sessions[s]; !ok || s.busy == busy {
		return
	}
	s.busy = busy
	now := time.Now()
	if busy {
		c.busy++
		c.armLocked(now)
		return
	}
	c.busy--
	c.touchLocked(now)
}

// leave removes s (its connection ended).
func (c *compute) leave(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.sessions[s]; !ok {
		return
	}
	delete(c.sessions, s)
	if s.busy {
		s.busy = false
		c.busy--
		c.touchLocked(time.Now())
	}
}

// query counts a query run: a simple Query when simple, else an Execute.
func (c *compute) query(simple bool) {
	c.mu.Lock()
	c.led.Queries++
	if simple {
		c.led.SimpleQueries++
	}
	c.mu.Unlock()
}

// check is the suspend timer's function.
func (c *compute) check() {
	now := time.Now()
	c.mu.Lock()
	if c.state != awake || c.busy > 0 || now.Before(c.last.Add(c.sim.opts.SuspendAfter)) {
		c.armLocked(now)
		c.mu.Unlock()
		return
	}
	kill := c.suspendLocked(c.last.Add(c.sim.opts.SuspendAfter)) // the rule's instant, not the timer's
	c.mu.Unlock()
	c.kill(kill)
}

// suspendNow suspends the compute at once, active sessions or not.
func (c *compute) suspendNow(now time.Time) {
	c.mu.Lock()
	if c.state == suspended {
		c.mu.Unlock()
		return
	}
	kill := c.suspendLocked(now)
	c.mu.Unlock()
	c.kill(kill)
}

// suspendLocked ends the awake interval at end and returns the sessions to
// kill.
// A compute still waking is left to finish (its sessions are not yet in).
func (c *compute) suspendLocked(end time.Time) []*session {
	if c.state != awake {
		return nil
	}
	c.state = suspended
	c.timer.Stop()
	if n := len(c.led.Awake); n > 0 && c.led.Awake[n-1].End.IsZero() {
		c.led.Awake[n-1].End = later(end, c.led.Awake[n-1].Start)
	}
	c.led.Suspends++
	kill := make([]*session, 0, len(c.sessions))
	for s := range c.sessions {
		s.busy = false
		kill = append(kill, s)
	}
	clear(c.sessions)
	c.busy = 0
	return kill
}

// kill terminates the sessions of a suspend and reports it.
func (c *compute) kill(ss []*session) {
	for _, s := range ss {
		s.terminate()
	}
	go c.notify(false, "")
}

// setSwitch turns a failure switch; turning one on suspends the compute.
func (c *compute) setSwitch(sw *bool, on bool) {
	c.mu.Lock()
	*sw = on
	c.mu.Unlock()
	if on {
		c.suspendNow(time.Now())
	}
}

func (c *compute) isAwake() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state != suspended
}

func (c *compute) sessionCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}

// close ends the compute with the simulator: sessions are closed and
// nothing more is admitted.
func (c *compute) close() {
	c.mu.Lock()
	c.closed = true
	c.timer.Stop()
	ss := make([]*session, 0, len(c.sessions))
	for s := range c.sessions {
		ss = append(ss, s)
	}
	c.mu.Unlock()
	for _, s := range ss {
		s.terminate()
	}
}

// ledger returns a copy of the ledger with the sums up to now.
func (c *compute) ledger(now time.Time) Ledger {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.led
	l.Awake = append([]Interval(nil), c.led.Awake...)
	l.Wakes = append([]Wake(nil), c.led.Wakes...)
	l.SessionsBy = maps.Clone(c.led.SessionsBy)
	for _, iv := range l.Awake {
		end := iv.End
		if end.IsZero() {
			end = now
		}
		l.AwakeTime += end.Sub(iv.Start)
	}
	l.CUSeconds = l.AwakeTime.Seconds() * c.sim.opts.ComputeUnits
	return l
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
