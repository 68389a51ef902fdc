package admin

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/pgguard/pgguard/proxy"
)

// failoverTable is SHOW FAILOVER: per database, the upstream in use and
// since when, each upstream's health, the last switch and why, the next
// probe, and the writes its fallback served (which are not on the primary).
func failoverTable(pools []proxy.PoolStatus) Table {
	t := Table{Columns: []string{"database", "upstream", "since", "serving", "primary_down", "primary_failures", "primary_last_error",
		"fallback_down", "switches", "last_switch", "last_switch_reason", "next_probe", "fallback_writes", "fallback_write_tables"}}
	for _, p := range pools {
		f := p.Failover
		fbDown, lastAt, lastWhy, next := "", "", "", ""
		if f.Fallback != nil {
			fbDown = strconv.FormatBool(f.Fallback.Down)
		}
		if f.LastSwitch != nil {
			lastAt, lastWhy = ts(f.LastSwitch.At), fmt.Sprintf("%s -> %s: %s", f.LastSwitch.From, f.LastSwitch.To, f.LastSwitch.Reason)
		}
		if !f.NextProbe.IsZero() {
			next = ts(f.NextProbe)
		}
		writes, tables := "", ""
		if fw := p.FallbackWrites; fw != nil {
			writes = strconv.FormatUint(fw.Total, 10)
			var parts []string
			for _, tb := range slices.Sorted(maps.Keys(fw.Tables)) {
				parts = append(parts, fmt.Sprintf("%s=%d", tb, fw.Tables[tb]))
			}
			tables = strings.Join(parts, " ")
		}
		t.Rows = append(t.Rows, []string{p.Database, f.Active.String(), ts(f.ActiveSince), strconv.FormatBool(f.Serving),
			strconv.FormatBool(f.Primary.Down), itoa(f.Primary.ConsecutiveFailures), f.Primary.LastError,
			fbDown, strconv.FormatUint(f.Switches, 10), lastAt, lastWhy, next, writes, tables})
	}
	return t
}
