package limiter

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/internal/redislink"
)

// bucketScript is bucket.take and bucket.refund run atomically on one hash
// per rule, so that every instance draws from the same tokens. Times are the
// callers' clocks in ms (instances are assumed NTP-close; a clock behind the
// stored timestamp refills nothing).
var bucketScript = redis.NewScript(`
-- KEYS[1]: the rule's hash {t1, t2, t3: tokens per rate kind (second, minute, hour); ts: last refill, ms}
-- ARGV: now_ms, max_wait_ms, cost (1 take, -1 refund), ttl_ms, burst, then tokens per ms of the three kinds (0 = unused)
-- Returns {ok, wait_ms, bind}: ok = 1 when a token of every kind was taken
-- (available after wait_ms), 0 when refused; bind is the kind that waits longest (0-based), -1 if none.
local now, maxwait, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local burst = tonumber(ARGV[5])
local v = redis.call('HMGET', KEYS[1], 't1', 't2', 't3', 'ts')
local ts = tonumber(v[4]) or now
local dt = math.max(0, now - ts)
local tok, need, bind = {}, 0, -1
for i = 1, 3 do
  local r = tonumber(ARGV[5 + i])
  local t = tonumber(v[i]) or burst
  if r > 0 then
    t = math.min(burst, t + dt * r)
    if t < 1 - 1e-9 and (1 - t) / r > need then need, bind = (1 - t) / r, i - 1 end
  else
    t = burst
  end
  tok[i] = t
end
if cost > 0 and need > maxwait then return {0, math.ceil(need), bind} end
for i = 1, 3 do
  if tonumber(ARGV[5 + i]) > 0 then
    if cost > 0 then tok[i] = tok[i] - 1 else tok[i] = math.min(burst, tok[i] + 1) end
  end
end
redis.call('HSET', KEYS[1], 't1', tok[1], 't2', tok[2], 't3', tok[3], 'ts', math.max(now, ts))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if cost < 0 then return {1, 0, -1} end
return {1, math.ceil(need), bind}
`)

// awakeScript merges awake spans into a month's bitmap (bit i: second i of
// the month awake) and counts the awake seconds so far. A union of bits
// cannot double count: two instances seeing queries in the same minute set
// the same bits, and spans may arrive late or out of order.
var awakeScript = redis.NewScript(`
-- KEYS[1]: the endpoint's bitmap for the month
-- ARGV: now (second of the month; bits before it are counted, none if <= 0), ttl_s, then start, end pairs (seconds, end exclusive)
local key = KEYS[1]
for i = 3, #ARGV, 2 do
  local a, b = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  while a < b and a % 8 ~= 0 do redis.call('SETBIT', key, a, 1); a = a + 1 end
  while b > a and b % 8 ~= 0 do b = b - 1; redis.call('SETBIT', key, b, 1) end
  if b > a then redis.call('SETRANGE', key, a / 8, string.rep('\255', (b - a) / 8)) end
end
if #ARGV > 2 then redis.call('EXPIRE', key, ARGV[2]) end
local now = tonumber(ARGV[1])
if now <= 0 then return 0 end
local full = math.floor(now / 8)
local n = 0
if full > 0 then n = redis.call('BITCOUNT', key, 0, full - 1) end
for i = full * 8, now - 1 do n = n + redis.call('GETBIT', key, i) end
return n
`)

// awakeTTL keeps a month's bitmap (330 kB) for two months.
const awakeTTL = 62 * 24 * 3600

// redisStore is the fleet-wide state. Every call is bounded by a short
// timeout; the first error switches the limiter to per-instance state (Up =
// false) and starts a background probe that switches back once Redis
// answers (redislink).
type redisStore struct {
	*redislink.Link
}

func newRedisStore(rawURL string, log *slog.Logger, o options, gauge prometheus.Gauge, stop <-chan struct{}) (*redisStore, error) {
	l, err := redislink.New(rawURL, redislink.Options{
		Key: "limiter.redis_url", Timeout: o.redisTimeout, RetryMin: o.retryMin, RetryMax: o.retryMax,
		Log: log, Gauge: gauge, Stop: stop,
		DownMsg: "redis unreachable, limits are per instance until it returns",
		BackMsg: "redis reachable again, limits are fleet-wide",
	})
	if err != nil {
		return nil, err
	}
	return &redisStore{l}, nil
}

// call runs a script within the timeout; an error other than the caller's
// own ctx ending switches to per-instance state.
func (s *redisStore) call(ctx context.Context, sc *redis.Script, key string, args ...any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.Timeout())
	v, err := sc.Run(cctx, s.C, []string{key}, args...).Result()
	cancel()
	return v, s.Failed(ctx, err)
}

// take runs the bucket script for rule r: cost 1 takes a token, -1 refunds one.
func (s *redisStore) take(ctx context.Context, r *rule, now time.Time, cost int) (wait time.Duration, bind int, ok bool, err error) {
	fill := 0.0 // seconds to fill the bucket from empty: the key's idle lifetime
	for _, v := range r.rates {
		if v > 0 {
			fill = max(fill, r.burst/v)
		}
	}
	ttl := int64(math.Ceil(fill*1000)) + r.maxDelay.Milliseconds() + 60_000
	if cost < 0 {
		ctx = context.WithoutCancel(ctx)
	}
	v, err := s.call(ctx, bucketScript, r.st.redisKey, now.UnixMilli(), r.maxDelay.Milliseconds(), cost, ttl,
		r.burst, r.rates[0]/1000, r.rates[1]/1000, r.rates[2]/1000)
	if err != nil {
		return 0, 0, false, err
	}
	res, _ := v.([]any)
	if len(res) != 3 {
		err = fmt.Errorf("bucket script returned %v", v)
		s.Fail(err)
		return 0, 0, false, err
	}
	okN, _ := res[0].(int64)
	ms, _ := res[1].(int64)
	b, _ := res[2].(int64)
	return time.Duration(ms) * time.Millisecond, int(b), okN == 1, nil
}

// mergeAwake adds spans to the endpoint's month bitmaps (splitting them at
// month boundaries) and returns the fleet's awake time in month up to now.
func (s *redisStore) mergeAwake(ctx context.Context, endpoint string, month time.Time, spans []span, now time.Time) (time.Duration, error) {
	byMonth := map[time.Time][]any{}
	for _, sp := range spans {
		for a := sp.a; a.Before(sp.b); {
			ms := monthStart(a)
			next := ms.AddDate(0, 1, 0)
			b := earlier(sp.b, next)
			lo, hi := secondOf(ms, a), secondOf(ms, b)
			if hi > lo {
				byMonth[ms] = append(byMonth[ms], lo, hi)
			}
			a = b
		}
	}
	for ms, pairs := range byMonth {
		if ms.Equal(month) {
			continue
		}
		args := append([]any{0, awakeTTL}, pairs...)
		if _, err := s.call(ctx, awakeScript, awakeKey(endpoint, ms), args...); err != nil {
			return 0, err
		}
	}
	args := append([]any{secondOf(month, now), awakeTTL}, byMonth[month]...)
	v, err := s.call(ctx, awakeScript, awakeKey(endpoint, month), args...)
	if err != nil {
		return 0, err
	}
	n, _ := v.(int64)
	return time.Duration(n) * time.Second, nil
}

func awakeKey(endpoint string, month time.Time) string {
	return "pgguard:limiter:awake:" + endpoint + ":" + month.Format("2006-01")
}

// secondOf is t's second within the month starting at ms, rounded.
func secondOf(ms, t time.Time) int64 { return int64(t.Sub(ms).Round(time.Second) / time.Second) }
