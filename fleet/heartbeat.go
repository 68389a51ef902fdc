package fleet

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"time"
)

// Instance is one instance's heartbeat: what SHOW FLEET and GET /fleet list.
type Instance struct {
	ID      string `json:"id"`
	Machine string `json:"fly_machine_id,omitempty"`
	Region  string `json:"fly_region,omitempty"`
	Version string `json:"version"`
	// Seen is when the heartbeat was published; Started when the instance started.
	Seen    time.Time `json:"seen"`
	Started time.Time `json:"started"`
	// Fleet is the instance's fleet mode: "leases", "static" or "off".
	Fleet           string  `json:"fleet"`
	ReadOnly        bool    `json:"read_only"`
	WorkersDisabled bool    `json:"disable_workers"`
	Clients         int     `json:"clients"`
	Waiting         int     `json:"waiting"`
	QPS             float64 `json:"qps"`
	P95MS           float64 `json:"p95_ms"`
	Pools           []Pool  `json:"pools"`
}

// Pool is one database's pool in a heartbeat.
type Pool struct {
	Database string `json:"database"`
	// ServerConns are the instance's open server connections; Waiting its
	// queued clients.
	ServerConns int `json:"server_conns"`
	Clients     int `json:"clients"`
	Waiting     int `json:"waiting"`
	// UpstreamRefusals counts dials the upstream refused as full (53300).
	UpstreamRefusals uint64 `json:"upstream_refusals"`
	// Leases are the instance's leases of the fleet cap (Cap 0: none).
	Leases LeaseStatus `json:"leases"`
}

// heartbeatKey holds instance id's heartbeat (JSON) for lease_ttl.
func heartbeatKey(id string) string { return keyPrefix + "hb:" + id }

// membersKey is the set of instance ids that published a heartbeat; an id
// whose heartbeat expired is dropped as the fleet is read.
const membersKey = keyPrefix + "members"

// self is this instance's heartbeat.
func (f *Fleet) self() Instance {
	var in Instance
	if f.Describe != nil {
		in = f.Describe()
	}
	in.ID, in.Machine, in.Region = f.id, os.Getenv("FLY_MACHINE_ID"), os.Getenv("FLY_REGION")
	in.Seen, in.Started, in.Fleet = time.Now().UTC(), f.started.UTC(), f.Mode()
	leases := map[string]LeaseStatus{}
	for _, l := range f.allLeases() {
		leases[l.database] = l.Status()
	}
	for i := range in.Pools {
		in.Pools[i].Leases = leases[in.Pools[i].Database]
	}
	return in
}

// beat publishes the heartbeat and applies the fleet-wide switches.
func (f *Fleet) beat() {
	if !f.up() {
		return
	}
	b, err := json.Marshal(f.self())
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.link.Timeout())
	defer cancel()
	ttl := f.cfg.Load().Fleet.LeaseTTL.Duration
	pipe := f.link.C.TxPipeline()
	pipe.Set(ctx, heartbeatKey(f.id), b, ttl)
	pipe.SAdd(ctx, membersKey, f.id)
	sw := pipe.HGetAll(ctx, switchesKey)
	if _, err := pipe.Exec(ctx); err != nil {
		f.link.Failed(ctx, err)
		return
	}
	f.applySwitches(sw.Val())
}

// View is the fleet as GET /fleet shows it.
type View struct {
	// Self is this instance's id; Mode its fleet mode ("leases", "static", "off").
	Self      string         `json:"self"`
	Mode      string         `json:"mode"`
	Instances []Instance     `json:"instances"`
	Totals    []DatabaseView `json:"totals"`
	// Switches are the fleet-wide switch values last read ("on"/"off"),
	// for the switches flipped fleet-wide at least once.
	Switches map[string]string `json:"switches"`
}

// DatabaseView is one database's totals over the live instances.
type DatabaseView struct {
	Database    string `json:"database"`
	Instances   int    `json:"instances"`
	ServerConns int    `json:"server_conns"`
	Leases      int64  `json:"leases"`
	Clients     int    `json:"clients"`
	Waiting     int    `json:"waiting"`
	// Cap is fleet_max_connections as this instance has it (0: none);
	// UsedPct the server connections as a percentage of it.
	Cap     int64   `json:"fleet_max_connections"`
	UsedPct float64 `json:"used_pct,omitempty"`
}

// View reads every live instance's heartbeat (this one's fresh) and sums
// them per database. Without Redis, or while it is unreachable, it lists
// this instance alone.
func (f *Fleet) View(ctx context.Context) View {
	v := View{Self: f.id, Mode: f.Mode(), Switches: f.Switches()}
	me := f.self()
	if f.up() {
		v.Instances = f.readInstances(ctx)
	}
	v.Instances = slices.DeleteFunc(v.Instances, func(in Instance) bool { return in.ID == f.id })
	v.Instances = append(v.Instances, me)
	slices.SortFunc(v.Instances, func(a, b Instance) int { return compareStrings(a.ID, b.ID) })
	caps := map[string]int64{}
	for _, l := range f.allLeases() {
		caps[l.database] = l.cap.Load()
	}
	byDB := map[string]*DatabaseView{}
	var names []string
	for _, in := range v.Instances {
		for _, p := range in.Pools {
			d := byDB[p.Database]
			if d == nil {
				d = &DatabaseView{Database: p.Database, Cap: caps[p.Database]}
				byDB[p.Database] = d
				names = append(names, p.Database)
			}
			d.Instances++
			d.ServerConns += p.ServerConns
			d.Leases += p.Leases.Held
			d.Clients += p.Clients
			d.Waiting += p.Waiting
		}
	}
	slices.Sort(names)
	for _, n := range names {
		d := byDB[n]
		if d.Cap > 0 {
			d.UsedPct = 100 * float64(d.ServerConns) / float64(d.Cap)
		}
		v.Totals = append(v.Totals, *d)
	}
	return v
}

// readInstances reads the heartbeats of the members, dropping the expired.
func (f *Fleet) readInstances(ctx context.Context) []Instance {
	ctx, cancel := context.WithTimeout(ctx, f.link.Timeout())
	defer cancel()
	ids, err := f.link.C.SMembers(ctx, membersKey).Result()
	if err != nil || len(ids) == 0 {
		f.link.Failed(ctx, err)
		return nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = heartbeatKey(id)
	}
	vals, err := f.link.C.MGet(ctx, keys...).Result()
	if err != nil {
		f.link.Failed(ctx, err)
		return nil
	}
	var out []Instance
	var gone []any
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			gone = append(gone, ids[i])
			continue
		}
		var in Instance
		if json.Unmarshal([]byte(s), &in) == nil {
			out = append(out, in)
		}
	}
	if len(gone) > 0 {
		f.link.C.SRem(ctx, membersKey, gone...)
	}
	return out
}
