package cache

import (
	"fmt"
	"strconv"
	"time"
)

// Status is the cache's section of GET /status.
type Status struct {
	// Redis is "off" (no Redis URL), "suspended" (SUSPEND_REDIS), "fleet"
	// (shared through Redis) or "per_instance" (Redis unreachable).
	Redis string `json:"redis"`
	// DegradedTTL caps entries while per instance with a Redis configured.
	DegradedTTL string `json:"degraded_ttl"`
	// LocalEntries and LocalBytes are held in process, up to LocalMaxBytes.
	LocalEntries  int `json:"local_entries"`
	LocalBytes    int `json:"local_bytes"`
	LocalMaxBytes int `json:"local_max_bytes"`
	// PendingInvalidations wait for Redis to return.
	PendingInvalidations int          `json:"pending_invalidations"`
	Rules                []RuleStatus `json:"rules"`
}

// RuleStatus is one [[cache]] rule and its counters on this instance.
type RuleStatus struct {
	Name          string   `json:"name"`
	Fingerprint   string   `json:"fingerprint"`
	Query         string   `json:"query,omitempty"`
	Match         string   `json:"match"`
	TTL           string   `json:"ttl"`
	MaxEntryBytes int      `json:"max_entry_bytes"`
	Tables        []string `json:"tables,omitempty"`
	Hits          int64    `json:"hits"`
	Misses        int64    `json:"misses"`
	Invalidated   int64    `json:"invalidated"`
	Stored        int64    `json:"stored"`
	Oversize      int64    `json:"oversize"`
	HitBytes      int64    `json:"hit_bytes"`
	StoredBytes   int64    `json:"stored_bytes"`
	// LastRefusal says why the last text of this shape could not be
	// cached (a volatile or untrusted function, ...).
	LastRefusal string `json:"last_refusal,omitempty"`
}

// redisMode names where entries live now.
func (c *Cache) redisMode() string {
	switch {
	case c.mode != "redis":
		return c.mode
	case c.fleet():
		return "fleet"
	}
	return "per_instance"
}

// Status returns a JSON-able snapshot for /status. Nil-safe.
func (c *Cache) Status() any {
	if c == nil {
		return nil
	}
	return c.status()
}

func (c *Cache) status() Status {
	n, b, max := c.lru.stats()
	st := Status{
		Redis:        c.redisMode(),
		DegradedTTL:  time.Duration(c.degradedTTL.Load()).String(),
		LocalEntries: n, LocalBytes: b, LocalMaxBytes: max,
		PendingInvalidations: c.pend.len(),
		Rules:                []RuleStatus{},
	}
	for _, r := range c.rules.Load().list {
		rs := RuleStatus{
			Name: r.name, Fingerprint: fpHex(r.fingerprint), Query: r.query, Match: r.matchString(),
			TTL: r.ttl.String(), MaxEntryBytes: r.maxBytes, Tables: r.tables,
			Hits: r.st.hits.Load(), Misses: r.st.misses.Load(), Invalidated: r.st.invalidated.Load(),
			Stored: r.st.stored.Load(), Oversize: r.st.oversize.Load(),
			HitBytes: r.st.hitBytes.Load(), StoredBytes: r.st.storedBytes.Load(),
		}
		if p := r.st.lastRefusal.Load(); p != nil {
			rs.LastRefusal = *p
		}
		st.Rules = append(st.Rules, rs)
	}
	return st
}

// StatsRows is SHOW CACHE: one row per rule, then a "(total)" row whose
// note says where entries live.
func (c *Cache) StatsRows() (columns []string, rows [][]string) {
	columns = []string{"rule", "fingerprint", "ttl", "hits", "misses", "invalidated", "stored", "oversize", "hit_bytes", "stored_bytes", "hit_ratio", "match", "note"}
	if c == nil {
		return columns, nil
	}
	st := c.status()
	var tot RuleStatus
	for _, r := range st.Rules {
		rows = append(rows, []string{r.Name, r.Fingerprint, r.TTL, i64(r.Hits), i64(r.Misses), i64(r.Invalidated), i64(r.Stored),
			i64(r.Oversize), i64(r.HitBytes), i64(r.StoredBytes), ratio(r.Hits, r.Misses), r.Match, r.LastRefusal})
		tot.Hits += r.Hits
		tot.Misses += r.Misses
		tot.Invalidated += r.Invalidated
		tot.Stored += r.Stored
		tot.Oversize += r.Oversize
		tot.HitBytes += r.HitBytes
		tot.StoredBytes += r.StoredBytes
	}
	note := fmt.Sprintf("redis: %s; in process: %d entries, %d of %d bytes", st.Redis, st.LocalEntries, st.LocalBytes, st.LocalMaxBytes)
	if st.Redis != "fleet" && st.Redis != "off" {
		note += "; entries live at most " + st.DegradedTTL
	}
	if st.PendingInvalidations > 0 {
		note += fmt.Sprintf("; %d invalidations wait for redis", st.PendingInvalidations)
	}
	rows = append(rows, []string{"(total)", "", "", i64(tot.Hits), i64(tot.Misses), i64(tot.Invalidated), i64(tot.Stored),
		i64(tot.Oversize), i64(tot.HitBytes), i64(tot.StoredBytes), ratio(tot.Hits, tot.Misses), "", note})
	return columns, rows
}

func i64(n int64) string { return strconv.FormatInt(n, 10) }

// ratio is hits / (hits + misses) with two decimals, "" with no lookups.
func ratio(hits, misses int64) string {
	if hits+misses == 0 {
		return ""
	}
	return strconv.FormatFloat(float64(hits)/float64(hits+misses), 'f', 2, 64)
}

// fpHex formats a fingerprint as SHOW QUERIES does: 16 hex digits.
func fpHex(fp uint64) string { return fmt.Sprintf("%016x", fp) }
