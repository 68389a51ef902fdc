package fleet

import (
	"context"
	"fmt"
	"time"
)

// Fleet-wide switches: SET read_only = on FLEET (console), POST
// /switches/{name}?fleet=1 (HTTP, dashboard) write the value to one Redis
// hash; every instance reads it with its heartbeat and applies a value
// that changed (so a later per-machine flip holds until the fleet's value
// changes again), and an instance that starts later applies the fleet's
// values at once. The environment variable of a switch set on a machine
// (READ_ONLY_MODE, DISABLE_WORKERS) wins there: the Switch hook decides.

// switchesKey is the hash of fleet-wide switches: name -> "on"/"off", and
// name+":by" -> who flipped it.
const switchesKey = keyPrefix + "switches"

// SwitchNames are the switches that can be flipped fleet-wide.
var SwitchNames = []string{"read_only", "disable_workers"}

// SetSwitch flips switch name fleet-wide: written to Redis, applied here
// at once and by every other instance within a heartbeat.
func (f *Fleet) SetSwitch(ctx context.Context, name string, on bool, who string) error {
	known := false
	for _, n := range SwitchNames {
		known = known || n == name
	}
	if !known {
		return fmt.Errorf("%s cannot be flipped fleet-wide; fleet-wide switches: read_only, disable_workers", name)
	}
	if !f.up() {
		return fmt.Errorf("the fleet's Redis is %s: %s was not flipped fleet-wide (flip it on each machine, or set fleet.redis_url / limiter.redis_url)", f.unreachable(), name)
	}
	ctx, cancel := context.WithTimeout(ctx, f.link.Timeout())
	defer cancel()
	val := onOff(on)
	if err := f.link.C.HSet(ctx, switchesKey, name, val, name+":by", who+" at "+time.Now().UTC().Format(time.RFC3339)).Err(); err != nil {
		f.link.Failed(ctx, err)
		return fmt.Errorf("%s was not flipped fleet-wide: redis: %w", name, err)
	}
	f.mu.Lock()
	f.switches[name] = val
	f.mu.Unlock()
	if f.Switch != nil {
		f.Switch(name, on, who+" (fleet-wide)")
	}
	return nil
}

func (f *Fleet) unreachable() string {
	if f.link == nil {
		return "not configured"
	}
	return "unreachable"
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// applySwitches applies the fleet-wide values that changed since last read.
func (f *Fleet) applySwitches(vals map[string]string) {
	for _, name := range SwitchNames {
		v, ok := vals[name]
		if !ok {
			continue
		}
		f.mu.Lock()
		changed := f.switches[name] != v
		f.switches[name] = v
		f.mu.Unlock()
		if changed && f.Switch != nil {
			f.Switch(name, v == "on", "fleet: "+vals[name+":by"])
		}
	}
}

// Switches returns the fleet-wide switch values last read ("on"/"off";
// absent: never flipped fleet-wide).
func (f *Fleet) Switches() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.switches))
	for k, v := range f.switches {
		out[k] = v
	}
	return out
}
