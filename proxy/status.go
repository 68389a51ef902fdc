package proxy

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/pgguard/pgguard/failover"
)

// PoolStatus describes one database's pool (SHOW POOLS, /status).
type PoolStatus struct {
	Database       string `json:"database"`
	Upstream       string `json:"upstream"`
	UpstreamHost   string `json:"upstream_host"`
	Mode           string `json:"pool_mode"`
	ClientsActive  int    `json:"cl_active"`
	ClientsWaiting int    `json:"cl_waiting"`
	ClientsIdle    int    `json:"cl_idle"`
	ServersActive  int    `json:"sv_active"`
	ServersIdle    int    `json:"sv_idle"`
	ServersOpening int    `json:"sv_opening"`
	// ServersClosing: connections pgguard is closing that the upstream has
	// not let go of yet; they still count against the caps.
	ServersClosing int    `json:"sv_closing"`
	Size           int    `json:"pool_size"`
	MaxOverflow    int    `json:"max_overflow"`
	Dials          uint64 `json:"dials"`
	DialErrors     uint64 `json:"dial_errors"`
	WaitTimeouts   uint64 `json:"wait_timeouts"`
	// UpstreamFull counts dials the upstream refused as full (53300), retried
	// while the client queued; LeaseRefusals connections not opened for
	// want of a lease of the fleet cap.
	UpstreamFull   uint64  `json:"upstream_full"`
	LeaseRefusals  uint64  `json:"lease_refusals"`
	Waits          uint64  `json:"waits"`
	Transactions   uint64  `json:"total_xact_count"`
	Queries        uint64  `json:"total_query_count"`
	AvgWaitSeconds float64 `json:"avg_wait_seconds"`

	// Failover is the database's failover state (upstream in use, failures, probes).
	Failover failover.State `json:"failover"`
	// FallbackWrites accounts the writes its fallback served (with a fallback).
	FallbackWrites *FallbackWrites `json:"fallback_writes,omitempty"`
}

// ClientStatus describes one client session (SHOW CLIENTS).
type ClientStatus struct {
	ID          uint32    `json:"id"`
	User        string    `json:"user"`
	Database    string    `json:"database"`
	Application string    `json:"application_name"`
	Addr        string    `json:"addr"`
	State       string    `json:"state"`
	ConnectedAt time.Time `json:"connect_time"`
	LastActive  time.Time `json:"request_time"`
	IdleSeconds float64   `json:"idle_seconds"`
	Server      uint64    `json:"server,omitempty"`
	Pinned      string    `json:"pinned,omitempty"` // why the client keeps its server in transaction mode
}

// ServerStatus describes one server connection (SHOW SERVERS).
type ServerStatus struct {
	ID       uint64    `json:"id"`
	Database string    `json:"database"`
	Upstream string    `json:"upstream"`
	Host     string    `json:"host"`
	PID      uint32    `json:"backend_pid"`
	State    string    `json:"state"`
	Client   uint32    `json:"client,omitempty"`
	TxStatus string    `json:"tx_status"`
	Created  time.Time `json:"connect_time"`
	LastUsed time.Time `json:"request_time"`
	// Outstanding counts the ReadyForQuery replies the server still owes.
	Outstanding int `json:"outstanding"`
}

// Status is the /status document.
type Status struct {
	ReadOnly      bool         `json:"read_only"`
	Draining      bool         `json:"draining"`
	Paused        bool         `json:"paused"`
	Clients       int          `json:"clients"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Pools         []PoolStatus `json:"pools"`
	// Leaks are sessions holding a server connection idle past
	// pool.leak_warn_after (idle in a transaction, or in session mode).
	Leaks []ClientStatus `json:"leaks,omitempty"`
	Extra map[string]any `json:"extra,omitempty"`
}

// Pools reports every database's pool, sorted by name.
func (p *Proxy) Pools() []PoolStatus {
	mode := p.cfg.Load().Pool.Mode
	clients := p.snapshotClients()
	var out []PoolStatus
	for _, db := range p.databases() {
		st := db.pool.Stats()
		ps := PoolStatus{
			Database: db.name, Upstream: db.upstreamName(), UpstreamHost: db.upstreamHost(), Mode: mode, Failover: db.fo.State(),
			ServersActive: st.Active, ServersIdle: st.Idle, ServersOpening: st.Opening, ServersClosing: st.Closing,
			Size: st.Size, MaxOverflow: st.MaxOverflow,
			Dials: st.Dials, DialErrors: st.DialErrors, WaitTimeouts: st.WaitTimeouts, Waits: st.Waits,
			UpstreamFull: st.UpstreamFull, LeaseRefusals: st.LeaseRefusals,
			Transactions: db.xacts.Load(), Queries: db.queryCount.Load(),
		}
		if st.Waits > 0 {
			ps.AvgWaitSeconds = st.WaitTotal.Seconds() / float64(st.Waits)
		}
		if db.fallback != nil {
			fw := db.fbWrites.snapshot()
			ps.FallbackWrites = &fw
		}
		for _, c := range clients {
			if c.db != db {
				continue
			}
			switch c.currentState() {
			case stateActive:
				ps.ClientsActive++
			case stateWaiting:
				ps.ClientsWaiting++
			default:
				ps.ClientsIdle++
			}
		}
		out = append(out, ps)
		out = append(out, db.replicaPools(mode)...)
	}
	slices.SortStableFunc(out, func(a, b PoolStatus) int { return cmp.Compare(a.Database, b.Database) })
	return out
}

// Clients reports every client session, oldest first.
func (p *Proxy) Clients() []ClientStatus {
	now := time.Now()
	var out []ClientStatus
	for _, c := range p.snapshotClients() {
		cs := ClientStatus{
			ID: c.id, User: c.user, Application: c.app, Addr: c.conn.RemoteAddr().String(),
			State:       stateNames[c.currentState()],
			ConnectedAt: time.Unix(0, c.connectedAt),
			LastActive:  time.Unix(0, c.lastActive.Load()),
		}
		cs.IdleSeconds = now.Sub(cs.LastActive).Seconds()
		if c.db != nil {
			cs.Database = c.db.name
		} else {
			cs.Database = adminDatabase
		}
		if b := c.server.Load(); b != nil {
			cs.Server = b.id
		}
		if c.pinned.Load() {
			cs.Pinned = c.pinReason
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ClientStatus) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Servers reports the open server connections and the state of each.
func (p *Proxy) Servers() []ServerStatus {
	var out []ServerStatus
	for _, db := range p.databases() {
		backends := db.openBackends()
		db.eachReplica(func(r *database) { backends = append(backends, r.openBackends()...) })
		for _, b := range backends {
			b.mu.Lock()
			ss := ServerStatus{
				ID: b.id, Database: b.db.name, Upstream: b.upstream, Host: b.db.hostOf(b.upstream), PID: b.hc.PID,
				State: b.state.String(), TxStatus: string(b.txStatus), Created: b.created, LastUsed: time.Unix(0, b.lastUsed.Load()),
				Outstanding: b.queue.len(),
			}
			if b.client != nil {
				ss.Client = b.client.id
			}
			b.mu.Unlock()
			out = append(out, ss)
		}
	}
	slices.SortFunc(out, func(a, b ServerStatus) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Status reports the proxy's state for /status.
func (p *Proxy) Status() Status {
	return Status{
		ReadOnly:      p.ReadOnly(),
		Draining:      p.draining.Load(),
		Paused:        p.paused.Load(),
		Clients:       p.clientCount(),
		UptimeSeconds: time.Since(p.started).Seconds(),
		Pools:         p.Pools(),
		Leaks:         p.leaks(),
	}
}

// leaks lists sessions holding a server connection idle past leak_warn_after.
func (p *Proxy) leaks() []ClientStatus {
	after := p.cfg.Load().Pool.LeakWarnAfter.Duration
	if after <= 0 {
		return nil
	}
	var out []ClientStatus
	for _, cs := range p.Clients() {
		if cs.Server != 0 && cs.IdleSeconds > after.Seconds() {
			out = append(out, cs)
		}
	}
	return out
}

// Monitors returns each database's failover monitor by name, for the
// fleet view (failover.Fleet.Start).
func (p *Proxy) Monitors() map[string]*failover.Monitor {
	out := map[string]*failover.Monitor{}
	for _, db := range p.databases() {
		out[db.name] = db.fo
	}
	return out
}

// Degraded lists, per database, why it is served in a degraded way: by its
// fallback, or refusing while the rest of the fleet reaches its primary
// (failover.split_policy). /readyz shows them.
func (p *Proxy) Degraded() []string {
	var out []string
	for _, db := range p.databases() {
		st := db.fo.State()
		switch {
		case st.Isolated && st.Active == failover.Primary:
			out = append(out, fmt.Sprintf("database %q: this instance cannot reach its primary while %d other instances can; it answers errors (failover.split_policy = %q)",
				db.name, st.Peers.Up, st.SplitPolicy))
		case st.Isolated:
			out = append(out, fmt.Sprintf("database %q: this instance cannot reach its primary while %d other instances can; it serves the fallback (failover.split_policy = %q)",
				db.name, st.Peers.Up, st.SplitPolicy))
		case db.active() == failover.Fallback:
			out = append(out, fmt.Sprintf("database %q is served by its fallback", db.name))
		}
	}
	slices.Sort(out)
	return out
}

// Ready reports whether pgguard can serve: it is not draining and some
// upstream can serve (see upstreamsServing). An upstream is assumed able to
// serve until real traffic says otherwise; pgguard never probes a healthy
// primary (that would keep a Neon compute awake).
func (p *Proxy) Ready() bool {
	return !p.draining.Load() && p.upstreamsServing()
}

// ReadOnly reports whether the read-only kill switch is on.
func (p *Proxy) ReadOnly() bool { return p.cfg.Load().ReadOnly }

// Kill closes client id's session; false if there is no such client.
func (p *Proxy) Kill(id uint32) bool {
	p.mu.Lock()
	c := p.clients[id]
	p.mu.Unlock()
	if c == nil {
		return false
	}
	p.metrics.ClientsReaped.WithLabelValues("kill").Inc()
	c.closeWith(fatalf(codeAdminShutdown, "terminating connection due to administrator command (KILL %d)", id))
	return true
}

// SetReadOnly flips the read-only kill switch at run time; who is logged.
func (p *Proxy) SetReadOnly(on bool, who string) {
	for {
		old := p.cfg.Load()
		if old.ReadOnly == on {
			return
		}
		next := *old
		next.ReadOnly = on
		if p.cfg.CompareAndSwap(old, &next) {
			break
		}
	}
	p.roGen.Add(1)
	p.setReadOnlyMetric(on)
	p.log.Warn("read-only switch flipped", "read_only", on, "by", who)
}

// Pause stops handing server connections to clients (PAUSE): running
// transactions finish, new ones wait until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	if p.resumed == nil {
		p.resumed = make(chan struct{})
	}
	p.mu.Unlock()
	p.paused.Store(true)
	p.log.Warn("paused: new transactions wait for RESUME")
}

// Resume lets waiting clients proceed after Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	if p.resumed != nil {
		close(p.resumed)
		p.resumed = nil
	}
	p.mu.Unlock()
	p.paused.Store(false)
	p.log.Info("resumed")
}

// waitResumed blocks while the proxy is paused.
func (p *Proxy) waitResumed() error {
	if !p.paused.Load() {
		return nil
	}
	p.mu.Lock()
	ch := p.resumed
	p.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}
