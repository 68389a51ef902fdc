package limiter

import (
	"context"
	"math"
	"time"
)

// bucket is a rule's per-instance token bucket: one token count per rate kind
// (second, minute, hour), all refilled from one timestamp and all burst deep.
// A query takes a token of every kind. Tokens may go negative: a delayed
// query reserves a future token, and the next one waits behind it. Guarded by
// ruleState.mu.
type bucket struct {
	tokens [nRates]float64
	rates  [nRates]float64 // tokens per second; 0 = kind unused
	burst  float64
	last   time.Time
}

// reshape applies new rates and depth, keeping the tokens of kinds in use
// before and after; a kind that starts being limited starts full.
func (b *bucket) reshape(rates [nRates]float64, burst float64, now time.Time) {
	if !b.last.IsZero() {
		b.refill(now)
	}
	for i := range b.tokens {
		if b.last.IsZero() || b.rates[i] == 0 {
			b.tokens[i] = burst
		}
		b.tokens[i] = min(b.tokens[i], burst)
	}
	b.rates, b.burst, b.last = rates, burst, now
}

func (b *bucket) refill(now time.Time) {
	dt := now.Sub(b.last).Seconds()
	if dt <= 0 {
		return
	}
	for i, r := range b.rates {
		if r > 0 {
			b.tokens[i] = min(b.burst, b.tokens[i]+dt*r)
		}
	}
	b.last = now
}

// take reserves one token of every kind if the last of them is at most
// maxWait away. It returns that wait, and the binding rate kind (the one
// that waits longest, -1 if none waits).
func (b *bucket) take(now time.Time, maxWait time.Duration) (wait time.Duration, bind int, ok bool) {
	b.refill(now)
	need, bind := 0.0, -1
	for i, r := range b.rates {
		if r > 0 && b.tokens[i] < 1-tokenEpsilon {
			if w := (1 - b.tokens[i]) / r; w > need {
				need, bind = w, i
			}
		}
	}
	wait = time.Duration(math.Ceil(need * float64(time.Second)))
	if wait > maxWait {
		return wait, bind, false
	}
	for i, r := range b.rates {
		if r > 0 {
			b.tokens[i]--
		}
	}
	return wait, bind, true
}

// refund returns a token taken by take whose query did not run.
func (b *bucket) refund(now time.Time) {
	b.refill(now)
	for i, r := range b.rates {
		if r > 0 {
			b.tokens[i] = min(b.burst, b.tokens[i]+1)
		}
	}
}

// level is the fullest-constrained token count, for /status.
func (b *bucket) level(now time.Time) float64 {
	b.refill(now)
	lv := math.Inf(1)
	for i, r := range b.rates {
		if r > 0 {
			lv = min(lv, b.tokens[i])
		}
	}
	if math.IsInf(lv, 1) {
		return 0
	}
	return lv
}

// tokenEpsilon absorbs the rounding of many small refills, so that a token
// due at an instant is there at that instant.
const tokenEpsilon = 1e-9

// reservation is a token taken for one rule, kept until the query is sure
// to run so that it can be given back.
type reservation struct {
	r      *rule
	remote bool // taken from the Redis bucket
}

// Admit is called before each query (session mode) or transaction (transaction
// mode). It takes a token from the bucket of every matched rule with a rate.
// For action "delay" it waits up to the rule's max_delay for one (a query
// whose token is further away is refused at once rather than held and then
// refused); for action "reject" it refuses at once. While the budget is
// exhausted with on_exhausted = "reject_low_priority", sessions of priority 0
// or less are refused too, and while the worker kill switch is on, so are
// sessions a worker = true rule binds. A refusal is a *LimitError. No-op for a
// nil Session or one without rules. Admit is AdmitQuery(ctx, false).
func (s *Session) Admit(ctx context.Context) error { return s.AdmitQuery(ctx, false) }

// AdmitQuery is Admit for a query that may continue a transaction:
// inTransaction says the client is inside a transaction block (session
// mode), which the worker kill switch lets finish.
func (s *Session) AdmitQuery(ctx context.Context, inTransaction bool) error {
	if s == nil {
		return nil
	}
	s.refresh()
	if s.worker != nil && !inTransaction && s.l.workersOff.Load() {
		s.worker.st.rejected.Add(1)
		s.worker.st.mRejected.Inc()
		return s.worker.workersError()
	}
	if s.l.budget.refuseLow.Load() && s.priority <= 0 {
		return s.l.budget.refusal()
	}
	if len(s.rated) == 0 {
		return nil
	}
	return s.admitRated(ctx)
}

// AdmitCached is Admit for a query the result cache answers: it costs the
// primary nothing, so neither rates nor the budget hold it up; only the
// worker kill switch, which stops workers whatever they ask, refuses it.
func (s *Session) AdmitCached() error {
	if s == nil {
		return nil
	}
	s.refresh()
	if s.worker != nil && s.l.workersOff.Load() {
		s.worker.st.rejected.Add(1)
		s.worker.st.mRejected.Inc()
		return s.worker.workersError()
	}
	return nil
}

func (s *Session) admitRated(ctx context.Context) error {
	l := s.l
	var buf [4]reservation
	res := buf[:0]
	now := l.clock.Now()
	var wait time.Duration
	var slowest *rule
	for _, r := range s.rated {
		w, bind, ok, remote := l.take(ctx, r, now)
		if !ok {
			l.giveBack(res, now)
			r.st.rejected.Add(1)
			r.st.mRejected.Inc()
			return r.rateError(bind, w)
		}
		res = append(res, reservation{r: r, remote: remote})
		if w > wait || slowest == nil {
			wait, slowest = max(wait, w), r
		}
	}
	if wait > 0 {
		if err := l.clock.Sleep(ctx, wait); err != nil {
			l.giveBack(res, l.clock.Now())
			slowest.st.rejected.Add(1)
			slowest.st.mRejected.Inc()
			return &LimitError{
				Rule:    slowest.name,
				Setting: "limits." + rateKeys[slowest.firstRate()],
				Message: `rate limit "` + slowest.name + `": query held for its turn (` + roundDur(wait).String() +
					`, max_delay = ` + slowest.maxDelay.String() + `) and the wait was cut short; raise limits.` +
					rateKeys[slowest.firstRate()] + ` or lower the client's query rate`,
				Cause: err,
			}
		}
	}
	for _, v := range res {
		if wait > 0 {
			v.r.st.delayed.Add(1)
			v.r.st.mDelayed.Inc()
		}
		v.r.st.admitted.Add(1)
	}
	return nil
}

// take reserves a token from rule r: from Redis while it answers, else from
// the local bucket.
func (l *Limiter) take(ctx context.Context, r *rule, now time.Time) (wait time.Duration, bind int, ok, remote bool) {
	if rs := l.redis; rs != nil && rs.Up.Load() {
		if wait, bind, ok, err := rs.take(ctx, r, now, 1); err == nil {
			return wait, bind, ok, true
		}
	}
	r.st.mu.Lock()
	wait, bind, ok = r.st.bucket.take(now, r.maxDelay)
	r.st.mu.Unlock()
	return wait, bind, ok, false
}

// giveBack refunds reservations whose query will not run.
func (l *Limiter) giveBack(res []reservation, now time.Time) {
	for _, v := range res {
		if v.remote && l.redis != nil {
			_, _, _, _ = l.redis.take(context.Background(), v.r, now, -1)
			continue
		}
		v.r.st.mu.Lock()
		v.r.st.bucket.refund(now)
		v.r.st.mu.Unlock()
	}
}
