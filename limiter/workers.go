package limiter

import (
	"strings"
	"time"

	"github.com/pgguard/pgguard/config"
)

// The worker kill switch (DISABLE_WORKERS, the post-mortem's second
// emergency switch): while it is on, sessions bound by a rule with
// worker = true get 53400 at their next transaction; a transaction under way
// finishes, and every other client goes on.

// WorkersSwitch is the state of the worker kill switch, for /status.
type WorkersSwitch struct {
	// On is true while workers' new transactions are refused.
	On bool `json:"on"`
	// By says who set it last: "console:USER", "http:USER", "startup
	// (ORIGIN)" or "reload (ORIGIN)", where ORIGIN is the environment
	// variable or file line of disable_workers.
	By string `json:"by"`
	// Since is when it was set.
	Since time.Time `json:"since"`
	// Rules names the rules with worker = true.
	Rules []string `json:"rules"`
}

// WorkersDisabled reports whether the worker kill switch is on.
func (l *Limiter) WorkersDisabled() bool { return l != nil && l.workersOff.Load() }

// SetWorkersDisabled flips the worker kill switch at run time; who is logged
// ("console:admin", "http:admin"). A reload leaves the switch alone unless
// disable_workers itself changed.
func (l *Limiter) SetWorkersDisabled(on bool, who string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setWorkersLocked(on, who, true)
}

// setWorkersLocked records the switch and logs a change (or, when always,
// any call). l.mu held.
func (l *Limiter) setWorkersLocked(on bool, who string, always bool) {
	was := l.workersOff.Swap(on)
	if was == on && !always {
		return
	}
	l.workersBy.Store(&workersSet{by: who, at: l.clock.Now()})
	if was == on {
		l.log.Info("worker switch unchanged", "disable_workers", on, "by", who)
		return
	}
	names := workerRules(*l.set.Load())
	l.log.Warn("worker switch flipped", "disable_workers", on, "by", who, "worker_rules", strings.Join(names, ","))
	if on && len(names) == 0 {
		l.log.Warn("disable_workers is on but no [[limits]] rule has worker = true: nothing is refused")
	}
}

// configureWorkers applies cfg's disable_workers: at the first configure,
// and afterwards only when the configured value changed, so that a switch
// flipped at run time survives an unrelated reload. l.mu held.
func (l *Limiter) configureWorkers(old, cfg *config.Config) {
	switch {
	case old == nil && cfg.DisableWorkers:
		l.setWorkersLocked(true, "startup ("+cfg.Origin("disable_workers")+")", false)
	case old == nil:
		l.workersBy.Store(&workersSet{by: "startup", at: l.clock.Now()})
	case old.DisableWorkers != cfg.DisableWorkers:
		l.setWorkersLocked(cfg.DisableWorkers, "reload ("+cfg.Origin("disable_workers")+")", false)
	}
}

// workersSet is who set the switch last, and when.
type workersSet struct {
	by string
	at time.Time
}

func (l *Limiter) workersStatus() WorkersSwitch {
	w := WorkersSwitch{On: l.workersOff.Load(), Rules: workerRules(*l.set.Load())}
	if set := l.workersBy.Load(); set != nil {
		w.By, w.Since = set.by, set.at
	}
	return w
}

func workerRules(rules []*rule) []string {
	names := []string{}
	for _, r := range rules {
		if r.worker {
			names = append(names, r.name)
		}
	}
	return names
}

// workersError is the refusal of a worker's new transaction.
func (r *rule) workersError() *LimitError {
	return &LimitError{
		Rule:    r.name,
		Setting: "disable_workers",
		Message: `workers are disabled (DISABLE_WORKERS): rule "` + r.name + `" marks this client (` + r.matchString() +
			`) as a background worker (worker = true), and new transactions of workers are refused; turn the switch off with ` +
			`SET disable_workers = off in the admin console, POST /disable-workers off, or DISABLE_WORKERS=false / disable_workers = false and a reload`,
	}
}
