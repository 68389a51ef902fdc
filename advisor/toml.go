package advisor

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// cacheTOML is the [[cache]] rule for a candidate.
func cacheTOML(name string, c *CacheCandidate, withDB bool, db string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %d calls, %.0f%% hits at this ttl (%d keys, %d invalidating writes): saves %.0f ms of primary time, %d wake-ups\n",
		c.Calls, 100*c.HitRatio, c.Keys, c.Invalidations, c.SavedPrimaryMS, c.WakeupsSaved)
	b.WriteString("[[cache]]\n")
	fmt.Fprintf(&b, "name = %s\n", tomlString(name))
	fmt.Fprintf(&b, "query = %s\n", tomlString(c.Query))
	fmt.Fprintf(&b, "ttl = %s\n", tomlString(c.TTL))
	if withDB && db != "" {
		fmt.Fprintf(&b, "database = %s\n", tomlString(db))
	}
	return b.String()
}

// limitsTOML is the [[limits]] rule for a poller.
func limitsTOML(app string, perHour float64, burst, perPoll int, target time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# at most one poll of %d queries per %s: longer than suspend_after, so the compute may suspend between polls\n", perPoll, target)
	b.WriteString("[[limits]]\n")
	fmt.Fprintf(&b, "name = %s\n", tomlString(app))
	fmt.Fprintf(&b, "application_name = %s\n", tomlString(app))
	b.WriteString("worker = true\n")
	fmt.Fprintf(&b, "queries_per_hour = %s\n", strconv.FormatFloat(perHour, 'f', -1, 64))
	fmt.Fprintf(&b, "burst = %d\n", max(burst, 1))
	b.WriteString("action = \"reject\"\n")
	return b.String()
}

// allTOML joins every suggested rule.
func allTOML(a *Advice) string {
	var parts []string
	for i := range a.CacheCandidates {
		parts = append(parts, a.CacheCandidates[i].TOML)
	}
	for i := range a.Pollers {
		if a.Pollers[i].ExistingRule == "" && a.Pollers[i].TOML != "" {
			parts = append(parts, a.Pollers[i].TOML)
		}
	}
	return strings.Join(parts, "\n")
}
