package cache

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/cache/analyze"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/querylog"
)

// Rule is a compiled [[cache]] rule. Immutable; a reload builds new ones.
type Rule struct {
	name        string
	fingerprint uint64
	query       string // as configured; "" for a fingerprint rule
	ttl         time.Duration
	database    string
	user        string
	application string
	maxBytes    int
	tables      []string // numbers zeroed like statement texts (see Cache.analyze)
	trusted     []string
	st          *ruleState
}

// Name returns the rule's name.
func (r *Rule) Name() string { return r.name }

// TTL returns how long the rule's entries may be answered.
func (r *Rule) TTL() time.Duration { return r.ttl }

// matches reports whether the rule applies to s.
func (r *Rule) matches(s *Session) bool {
	return (r.database == "" || r.database == s.Database) &&
		(r.user == "" || r.user == s.User) &&
		(r.application == "" || r.application == s.Application)
}

// matchString describes the rule's match keys for status output.
func (r *Rule) matchString() string {
	var parts []string
	for _, kv := range [][2]string{{"database", r.database}, {"user", r.user}, {"application_name", r.application}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+strconv.Quote(kv[1]))
		}
	}
	if len(parts) == 0 {
		return "all clients"
	}
	return strings.Join(parts, " ")
}

// compileRule builds a Rule from a validated config rule.
func compileRule(rc config.CacheRule, st *ruleState) *Rule {
	r := &Rule{
		name: rc.Name, query: rc.Query, ttl: rc.TTL.Duration,
		database: rc.Database, user: rc.User, application: rc.ApplicationName,
		maxBytes: rc.MaxEntryBytes, trusted: rc.TrustedFunctions, st: st,
	}
	if r.maxBytes <= 0 {
		r.maxBytes = config.DefaultCacheMaxEntryBytes
	}
	if rc.Query != "" {
		info := analyze.Analyze(string(querylog.ZeroNumbers(nil, []byte(rc.Query))))
		r.fingerprint = info.Fingerprint
	} else {
		r.fingerprint, _ = config.ParseFingerprint(rc.Fingerprint)
	}
	for _, t := range rc.Tables {
		if name, err := config.TableName(t); err == nil { // Validate refused the others
			r.tables = append(r.tables, string(querylog.ZeroNumbers(nil, []byte(name))))
		}
	}
	return r
}

// ruleSet is the rules in force, by fingerprint.
type ruleSet struct {
	list []*Rule
	byFP map[uint64][]*Rule // in file order
}

func newRuleSet(rules []*Rule) *ruleSet {
	s := &ruleSet{list: rules, byFP: map[uint64][]*Rule{}}
	for _, r := range rules {
		if r.fingerprint != 0 {
			s.byFP[r.fingerprint] = append(s.byFP[r.fingerprint], r)
		}
	}
	return s
}

// ruleState is what a rule's name keeps across reloads: its counters.
type ruleState struct {
	name                                  string
	hits, misses, invalidated, stored     atomic.Int64
	oversize, hitBytes, storedBytes       atomic.Int64
	lastRefusal                           atomic.Pointer[string] // why the last matching text could not be cached
	mHits, mMisses, mInvalidated, mStored prometheus.Counter
	mOversize, mHitBytes, mStoredBytes    prometheus.Counter
}

func newRuleState(name string, m *metrics) *ruleState {
	return &ruleState{
		name:         name,
		mHits:        m.hits.WithLabelValues(name),
		mMisses:      m.misses.WithLabelValues(name),
		mInvalidated: m.invalidated.WithLabelValues(name),
		mStored:      m.stored.WithLabelValues(name),
		mOversize:    m.oversize.WithLabelValues(name),
		mHitBytes:    m.hitBytes.WithLabelValues(name),
		mStoredBytes: m.storedBytes.WithLabelValues(name),
	}
}

func (st *ruleState) hit(bytes int) {
	st.hits.Add(1)
	st.mHits.Inc()
	st.hitBytes.Add(int64(bytes))
	st.mHitBytes.Add(float64(bytes))
}

func (st *ruleState) miss(stale bool) {
	st.misses.Add(1)
	st.mMisses.Inc()
	if stale {
		st.invalidated.Add(1)
		st.mInvalidated.Inc()
	}
}

func (st *ruleState) store(bytes int) {
	st.stored.Add(1)
	st.mStored.Inc()
	st.storedBytes.Add(int64(bytes))
	st.mStoredBytes.Add(float64(bytes))
}

func (st *ruleState) tooBig() {
	st.oversize.Add(1)
	st.mOversize.Inc()
}
