// Package failover decides which upstream a database's new server
// connections go to: its primary, or its fallback while the primary cannot
// serve.
//
// Health comes from real traffic only. The proxy reports every dial (Success
// or Failure) and every server connection in use that ended without pgguard
// closing it (Lost). After failover.failure_threshold consecutive failures of
// the primary the Monitor switches to the fallback. Only then does it do I/O
// of its own: it probes the primary by connecting (the injected ProbeFunc;
// never a query), first after probe_interval, then backing off x2 up to
// probe_max_interval, and switches back once every probe has succeeded for
// failback_after. A healthy primary is never probed: on Neon every new
// session and every query resets the compute's suspend timer, which is how a
// compute budget gets burned.
//
// Without a fallback the same threshold marks the primary down (the proxy is
// then not ready), and the next successful dial or probe marks it up again.
// Those probes exist so /readyz recovers even after a load balancer stopped
// sending traffic because of it. While on the fallback, a fallback that keeps
// failing is marked down the same way and probed on the same ticks.
//
// Server connections in use that die together share one cause (a restart, a
// suspend): Lost counts at most one failure per second, so the threshold is
// reached only if connection attempts fail too. Failures are consecutive
// when no success came between them and none came more than five minutes
// after the one before: isolated losses spread over hours (a terminated
// backend now and then, on a pool that rarely dials) do not add up.
package failover

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgguard/pgguard/config"
)

// Upstream names one of a database's two upstreams.
type Upstream uint8

// The upstreams of a database.
const (
	Primary Upstream = iota
	Fallback
)

// String returns "primary" or "fallback", the value of the upstream label in metrics.
func (u Upstream) String() string {
	if u == Fallback {
		return "fallback"
	}
	return "primary"
}

// MarshalText makes an Upstream appear as its name in JSON.
func (u Upstream) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText reads "primary" or "fallback", for clients of /status.
func (u *Upstream) UnmarshalText(b []byte) error {
	switch string(b) {
	case "primary":
		*u = Primary
	case "fallback":
		*u = Fallback
	default:
		return fmt.Errorf("upstream %q: want primary or fallback", b)
	}
	return nil
}

// ProbeFunc checks that an upstream accepts connections: it connects,
// authenticates and closes, and runs no query. It should honour ctx and
// bound itself by the connect timeout.
type ProbeFunc func(ctx context.Context, u Upstream) error

// Switch records one change of the active upstream.
type Switch struct {
	From   Upstream  `json:"from"`
	To     Upstream  `json:"to"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// maxRecent is how many switches State lists.
const maxRecent = 10

// lostWindow is how close together connection losses count as one failure.
const lostWindow = time.Second

// failureMemory is how long a failure counts toward the next: a failure
// later than this after the previous one starts a new count.
const failureMemory = 5 * time.Minute

// Monitor is the failover state machine of one database. Safe for
// concurrent use; Active is a single atomic load, for the hot path.
type Monitor struct {
	// OnSwitch, when set before the Monitor is first used, is called after
	// every switch with the Monitor's lock held (so calls arrive in order):
	// keep it short and do not call back into the Monitor.
	OnSwitch func(Switch)

	hasFallback bool
	probe       ProbeFunc
	log         *slog.Logger
	clock       Clock
	active      atomic.Uint32 // an Upstream; written under mu
	ctx         context.Context
	cancel      context.CancelFunc

	mu           sync.Mutex
	cfg          config.Failover
	health       [2]health
	since        time.Time // when active last changed (or New)
	switches     uint64
	recent       []Switch // the latest maxRecent switches, newest first
	probing      bool
	gen          uint64 // bumped by every schedule and stop: a stale timer does nothing
	timer        Timer
	interval     time.Duration // current probe backoff
	next         time.Time     // when the next probe is due; zero when none
	healthySince time.Time     // first of the unbroken run of successful probes
	closed       bool
	peers        PeerView // what the other instances sharing the Redis see of the primary (fleet.go)
	isolated     bool     // this instance cannot reach the primary while another can (logged once per episode)
}

// health is what real traffic and probes said lately about one upstream.
type health struct {
	fails       int       // consecutive failures
	down        bool      // fails reached the threshold; cleared by a success
	lastLost    time.Time // last Lost that counted
	lastCounted time.Time // last failure that counted
	lastError   string
	lastErrorAt time.Time
}

// New returns a Monitor on the primary. hasFallback says whether the
// database names a fallback; probe is its only I/O, used only while the
// primary is considered down. A nil log discards; a nil clock is SystemClock.
func New(cfg config.Failover, hasFallback bool, probe ProbeFunc, log *slog.Logger, clock Clock) *Monitor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = SystemClock
	}
	m := &Monitor{hasFallback: hasFallback, probe: probe, log: log, clock: clock, cfg: cfg}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.since = clock.Now()
	return m
}

// Active returns the upstream new server connections should go to.
func (m *Monitor) Active() Upstream { return Upstream(m.active.Load()) }

// Configure applies changed [failover] settings; they take effect at the
// next failure or probe.
func (m *Monitor) Configure(cfg config.Failover) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg = cfg
	m.interval = min(m.interval, m.maxInterval())
}

// Success reports an established connection to u (a dial that succeeded).
func (m *Monitor) Success(u Upstream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || u != m.Active() {
		return
	}
	h := &m.health[u]
	h.fails = 0
	if !h.down {
		return
	}
	h.down = false
	m.log.Info("upstream connects again", "upstream", u)
	if u == Primary { // no fallback: nothing to switch back from
		m.stopProbingLocked()
	}
}

// Failure reports a failed connection attempt to u. Errors that say nothing
// about the upstream (Classify's NotFailure) are ignored, and so are failures
// of the upstream not in use.
func (m *Monitor) Failure(u Upstream, err error) { m.fail(u, err, false) }

// Lost reports that a server connection on u ended while a client was using
// it, without pgguard closing it. Losses within a second count once.
func (m *Monitor) Lost(u Upstream, err error) { m.fail(u, err, true) }

func (m *Monitor) fail(u Upstream, err error, lost bool) {
	c := Classify(err)
	if c.Kind == NotFailure {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || u != m.Active() {
		return
	}
	now := m.clock.Now()
	h := &m.health[u]
	h.lastError, h.lastErrorAt = c.Reason+": "+err.Error(), now
	if lost {
		if !h.lastLost.IsZero() && now.Sub(h.lastLost) < lostWindow {
			return
		}
		h.lastLost = now
	}
	if h.fails > 0 && now.Sub(h.lastCounted) > failureMemory {
		h.fails = 0
	}
	h.lastCounted = now
	h.fails++
	if h.fails < m.threshold() || h.down {
		return
	}
	reason := fmt.Sprintf("%d consecutive failures of the %s (failover.failure_threshold = %d); last: %s",
		h.fails, u, m.threshold(), h.lastError)
	if u == Primary && m.hasFallback && !m.refuseLocked() {
		m.switchLocked(Fallback, reason)
		m.noteIsolationLocked()
		return
	}
	h.down = true
	switch {
	case u == Primary && m.hasFallback: // refuseLocked
		m.log.Warn("this instance cannot reach the primary but other instances can: it answers errors instead of serving the fallback (failover.split_policy = \"refuse\")",
			"reason", reason, "peers_up", m.peers.Up, "peers_down", m.peers.Down)
		m.noteIsolationLocked()
	case u == Primary:
		m.log.Warn("the primary cannot serve and there is no fallback: no upstream can serve", "reason", reason)
	default:
		m.log.Warn("the fallback cannot serve either: no upstream can serve", "reason", reason)
	}
	m.startProbingLocked()
}

// Serving reports whether the active upstream can serve, judged from recent
// real traffic and probes: false only when it failed failure_threshold times
// in a row since its last success.
func (m *Monitor) Serving() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.health[m.Active()].down
}

// Close stops probing; a probe in flight is cancelled.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.stopProbingLocked()
	m.mu.Unlock()
	m.cancel()
}

// switchLocked makes to the active upstream.
func (m *Monitor) switchLocked(to Upstream, reason string) {
	from := m.Active()
	now := m.clock.Now()
	m.active.Store(uint32(to))
	m.since = now
	m.switches++
	sw := Switch{From: from, To: to, Reason: reason, At: now}
	m.recent = append([]Switch{sw}, m.recent[:min(len(m.recent), maxRecent-1)]...)
	refusing := to == Primary && m.health[Primary].down // split_policy = "refuse": it stays down
	m.health[to].fails, m.health[to].down, m.health[to].lastLost = 0, refusing, time.Time{}
	if to == Fallback {
		m.health[Primary].down = true
		m.startProbingLocked()
		m.log.Warn("upstream switch: the primary cannot serve; new server connections go to the fallback",
			"from", from, "to", to, "reason", reason)
	} else if refusing {
		m.health[Fallback].fails, m.health[Fallback].down = 0, false
		m.log.Warn("upstream switch: back to the primary, which this instance cannot reach: its clients get errors while other instances serve it; fallback connections drain",
			"from", from, "to", to, "reason", reason)
	} else {
		m.health[Fallback].fails, m.health[Fallback].down = 0, false
		m.stopProbingLocked()
		m.log.Warn("upstream switch: the primary is healthy again; new transactions go back to it and fallback connections drain",
			"from", from, "to", to, "reason", reason)
	}
	if m.OnSwitch != nil {
		m.OnSwitch(sw)
	}
}

func (m *Monitor) startProbingLocked() {
	if m.probing || m.closed {
		return
	}
	m.probing = true
	m.healthySince = time.Time{}
	m.interval = m.probeInterval()
	m.scheduleLocked(m.interval)
}

func (m *Monitor) stopProbingLocked() {
	m.probing = false
	m.gen++
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.next = time.Time{}
	m.healthySince = time.Time{}
}

func (m *Monitor) scheduleLocked(d time.Duration) {
	m.gen++
	gen := m.gen
	m.next = m.clock.Now().Add(d)
	m.timer = m.clock.AfterFunc(d, func() { m.tick(gen) })
}

// tick runs one probe round: the primary, and the fallback too while it is
// in use and down.
func (m *Monitor) tick(gen uint64) {
	m.mu.Lock()
	if m.closed || !m.probing || gen != m.gen {
		m.mu.Unlock()
		return
	}
	checkFallback := m.Active() == Fallback && m.health[Fallback].down
	m.next = time.Time{}
	m.mu.Unlock()

	err := m.probe(m.ctx, Primary)
	var ferr error
	if checkFallback {
		ferr = m.probe(m.ctx, Fallback)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || gen != m.gen {
		return
	}
	now := m.clock.Now()
	if checkFallback && ferr == nil && m.Active() == Fallback && m.health[Fallback].down {
		m.health[Fallback].fails, m.health[Fallback].down = 0, false
		m.log.Info("the fallback answers probes again", "upstream", Fallback)
	}
	if err != nil {
		h := &m.health[Primary]
		h.lastError, h.lastErrorAt = "probe: "+Classify(err).Reason+": "+err.Error(), now
		if !m.healthySince.IsZero() {
			m.log.Info("a probe of the primary failed: its healthy period starts over", "err", err)
		}
		m.healthySince = time.Time{}
		m.interval = min(2*m.interval, m.maxInterval())
		m.log.Debug("primary probe failed", "err", err, "next_probe_in", m.interval)
		m.scheduleLocked(m.interval)
		return
	}
	m.interval = m.probeInterval()
	if !m.hasFallback || m.Active() == Primary { // no fallback, or refusing (split_policy)
		m.health[Primary].fails, m.health[Primary].down = 0, false
		m.stopProbingLocked()
		m.log.Info("the primary answers probes again: it can serve", "upstream", Primary)
		m.noteIsolationLocked()
		return
	}
	after := max(m.cfg.FailbackAfter.Duration, 0)
	if m.healthySince.IsZero() {
		m.healthySince = now
		if after > 0 {
			m.log.Info("the primary answers probes again; traffic returns if every probe succeeds for failback_after",
				"failback_after", after)
		}
	}
	healthy := now.Sub(m.healthySince)
	if healthy >= after {
		m.health[Primary].fails, m.health[Primary].down = 0, false
		m.switchLocked(Primary, fmt.Sprintf("every probe of the primary succeeded for %s (failover.failback_after = %s)",
			healthy.Round(time.Millisecond), after))
		return
	}
	m.scheduleLocked(min(m.interval, after-healthy))
}

func (m *Monitor) threshold() int { return max(m.cfg.FailureThreshold, 1) }

func (m *Monitor) probeInterval() time.Duration {
	if d := m.cfg.ProbeInterval.Duration; d > 0 {
		return d
	}
	return time.Second
}

func (m *Monitor) maxInterval() time.Duration {
	return max(m.cfg.ProbeMaxInterval.Duration, m.probeInterval())
}

// Refusing reports whether the Monitor keeps the database off its fallback
// while its primary is down here and up for another instance (split_policy
// = "refuse"): clients get errors.
func (m *Monitor) Refusing() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hasFallback && m.Active() == Primary && m.health[Primary].down && m.refuseLocked()
}

// PrimaryDown reports whether this instance considers the primary down:
// what it publishes to the fleet (fleet.go).
func (m *Monitor) PrimaryDown() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health[Primary].down
}

// SetPeers gives the Monitor what the other instances sharing the Redis
// see of the primary (Fleet calls it every PublishEvery). With
// failover.split_policy = "refuse" it is acted on at once: an instance
// on its fallback while another instance reaches the primary goes back
// to answering errors, and one refusing goes to its fallback once no
// other instance reaches the primary either.
func (m *Monitor) SetPeers(v PeerView) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peers = v
	if m.closed || !m.hasFallback {
		m.noteIsolationLocked()
		return
	}
	down := m.health[Primary].down
	switch refuse := m.refuseLocked(); {
	case m.Active() == Fallback && down && refuse:
		m.switchLocked(Primary, fmt.Sprintf("this instance cannot reach the primary but %d other instances can: answering errors instead of serving the fallback (failover.split_policy = \"refuse\")", v.Up))
	case m.Active() == Primary && down && !refuse:
		m.switchLocked(Fallback, "no other instance reaches the primary either (failover.split_policy = \"refuse\")")
	}
	m.noteIsolationLocked()
}

// refuseLocked reports whether this instance must answer errors rather
// than serve its fallback: split_policy is "refuse" and another instance
// reaches the primary, by a recent view.
func (m *Monitor) refuseLocked() bool {
	return m.cfg.SplitPolicy == "refuse" && m.peers.fresh(m.clock.Now()) && m.peers.Up > 0
}

// noteIsolationLocked logs when this instance starts or stops being the
// only one that cannot reach the primary.
func (m *Monitor) noteIsolationLocked() {
	iso := m.health[Primary].down && m.peers.fresh(m.clock.Now()) && m.peers.Up > 0
	if iso == m.isolated {
		return
	}
	m.isolated = iso
	if iso {
		m.log.Warn("this instance cannot reach the primary but other instances sharing the Redis can: check this instance's network path to it",
			"peers_up", m.peers.Up, "peers_down", m.peers.Down, "active", m.Active(), "split_policy", m.cfg.SplitPolicy)
	} else {
		m.log.Info("this instance is no longer alone in not reaching the primary", "primary_down", m.health[Primary].down, "peers_up", m.peers.Up)
	}
}

// State is a snapshot of a Monitor, for /status.
type State struct {
	// Active is the upstream new server connections go to.
	Active Upstream `json:"active"`
	// ActiveSince is when Active last changed, or when pgguard started.
	ActiveSince time.Time `json:"active_since"`
	// Serving is false when the active upstream keeps failing.
	Serving bool `json:"serving"`
	// Primary and Fallback (nil without one) describe each upstream.
	Primary  UpstreamState  `json:"primary"`
	Fallback *UpstreamState `json:"fallback,omitempty"`
	// Switches counts switches since start; LastSwitch is the latest, and
	// RecentSwitches the last ten, newest first.
	Switches       uint64   `json:"switches"`
	LastSwitch     *Switch  `json:"last_switch,omitempty"`
	RecentSwitches []Switch `json:"recent_switches,omitempty"`
	// NextProbe is when the primary (or a down fallback) is probed next;
	// zero while the primary is healthy, which is never probed.
	NextProbe time.Time `json:"next_probe,omitzero"`
	// ProbeIntervalSeconds is the current probe backoff, while probing.
	ProbeIntervalSeconds float64 `json:"probe_interval_seconds,omitempty"`
	// PrimaryHealthySince starts the current run of successful probes.
	PrimaryHealthySince time.Time `json:"primary_healthy_since,omitzero"`
	// Peers is what the other instances sharing the Redis see of the
	// primary (Known false without one).
	Peers PeerView `json:"peers"`
	// Isolated: this instance cannot reach the primary while another can.
	Isolated bool `json:"isolated"`
	// SplitPolicy is failover.split_policy.
	SplitPolicy string `json:"split_policy,omitempty"`
}

// UpstreamState describes one upstream in a State.
type UpstreamState struct {
	// ConsecutiveFailures since its last success.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// Down: it reached failure_threshold and has not succeeded since.
	Down bool `json:"down"`
	// LastError is the latest failure, with when it happened.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// State returns a snapshot for /status.
func (m *Monitor) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	up := func(h health) UpstreamState {
		return UpstreamState{ConsecutiveFailures: h.fails, Down: h.down, LastError: h.lastError, LastErrorAt: h.lastErrorAt}
	}
	st := State{
		Active:              m.Active(),
		ActiveSince:         m.since,
		Serving:             !m.health[m.Active()].down,
		Primary:             up(m.health[Primary]),
		Switches:            m.switches,
		NextProbe:           m.next,
		PrimaryHealthySince: m.healthySince,
		Peers:               m.peers,
		Isolated:            m.isolated,
		SplitPolicy:         m.cfg.SplitPolicy,
	}
	if m.hasFallback {
		f := up(m.health[Fallback])
		st.Fallback = &f
	}
	if len(m.recent) > 0 {
		st.RecentSwitches = slices.Clone(m.recent)
		st.LastSwitch = &st.RecentSwitches[0]
	}
	if m.probing {
		st.ProbeIntervalSeconds = m.interval.Seconds()
	}
	return st
}
