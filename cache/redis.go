package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pgguard/pgguard/config"
)

// Redis layout (one Redis, any number of pgguard instances):
//
//	pgguard:cache:v1:gens       hash: epoch, reset, and one generation per
//	                            (database, table) and per database (*)
//	pgguard:cache:v1:e:<hex>    an entry, by its key's digest, expiring with its ttl
//
// A hit reads the entry (unless the in-process LRU has it) and the
// generations of its tables in one round trip, and is a hit only if they
// are those the entry was stored with. A write's commit increments its
// tables' generations.
const (
	redisPrefix  = "pgguard:cache:v1:"
	redisGensKey = redisPrefix + "gens"
)

func redisEntryKey(digest [32]byte) string { return redisPrefix + "e:" + hex.EncodeToString(digest[:]) }

// redisStore is the fleet-wide store, in the limiter's style: every call is
// bounded by a short timeout, and the first error switches the cache to
// per-instance state (up = false) and starts a background probe that
// switches back once Redis answers and the invalidations made meanwhile
// are written.
type redisStore struct {
	c       *redis.Client
	log     *slog.Logger
	timeout time.Duration // per call
	min     time.Duration // probe backoff
	max     time.Duration
	gauge   prometheus.Gauge
	stop    <-chan struct{}
	down    func()                      // called once per outage, when it starts
	back    func(context.Context) error // called by the probe before going fleet-wide again

	up atomic.Bool

	mu      sync.Mutex // guards probing, closed; wg.Add
	probing bool
	closed  bool
	wg      sync.WaitGroup
}

func newRedisStore(rawURL string, log *slog.Logger, o options, gauge prometheus.Gauge, stop <-chan struct{}) (*redisStore, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("cache_store.redis_url %s: %v", config.RedactURL(rawURL), err)
	}
	opt.DialTimeout = o.redisTimeout
	opt.ReadTimeout = o.redisTimeout
	opt.WriteTimeout = o.redisTimeout
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1 // a retry would blow the time budget; the probe retries
	opt.DialerRetries = 1
	opt.Protocol = 2 // no HELLO round trip, no push notifications
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return &redisStore{
		c: redis.NewClient(opt), log: log, gauge: gauge, stop: stop,
		timeout: o.redisTimeout, min: o.retryMin, max: o.retryMax,
	}, nil
}

// start pings once (within the call timeout) and goes fleet-wide if Redis
// answers, else per instance with the probe running.
func (s *redisStore) start() {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	err := s.c.Ping(ctx).Err()
	cancel()
	if err == nil {
		s.up.Store(true)
		s.gauge.Set(1)
		return
	}
	s.up.Store(true) // so that fail logs and starts the probe
	s.fail(err)
}

// fail switches to per-instance state after a Redis error: logs once per
// outage, sets the gauge, starts the probe.
func (s *redisStore) fail(err error) {
	if !s.up.CompareAndSwap(true, false) {
		return
	}
	s.gauge.Set(0)
	s.log.Warn("redis unreachable, the result cache is per instance (entries live at most cache_store.degraded_ttl) until it returns", "err", err)
	if s.down != nil {
		s.down()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.probing || s.closed {
		return
	}
	s.probing = true
	s.wg.Add(1)
	go s.probe()
}

// probe pings with backoff until Redis answers and back succeeds, or the
// cache closes.
func (s *redisStore) probe() {
	defer s.wg.Done()
	d := s.min
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err := s.c.Ping(ctx).Err()
		if err == nil && s.back != nil {
			err = s.back(ctx)
		}
		cancel()
		if err == nil {
			s.mu.Lock()
			s.probing = false
			s.mu.Unlock()
			s.up.Store(true)
			s.gauge.Set(1)
			s.log.Info("redis reachable again, the result cache is fleet-wide")
			return
		}
		d = min(2*d, s.max)
		t.Reset(d)
	}
}

func (s *redisStore) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	_ = s.c.Close()
}

// bounded returns ctx with the call timeout; an error of a call made with
// it, other than the caller's own ctx ending, switches to per-instance state.
func (s *redisStore) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func (s *redisStore) failed(ctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil {
		s.fail(err)
	}
	return err
}

// errNoEpoch: the generations hash is missing (new, or lost).
var errNoEpoch = errors.New("cache generations have no epoch")

// fetch reads the generations of fields and, with withEntry, the entry
// stored under digest (nil when absent), in one round trip.
func (s *redisStore) fetch(ctx context.Context, fields []string, digest [32]byte, withEntry bool) (gens []uint64, value []byte, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	pipe := s.c.Pipeline()
	hm := pipe.HMGet(cctx, redisGensKey, fields...)
	var get *redis.StringCmd
	if withEntry {
		get = pipe.Get(cctx, redisEntryKey(digest))
	}
	if _, err := pipe.Exec(cctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, s.failed(ctx, err)
	}
	vals, err := hm.Result()
	if err != nil || len(vals) != len(fields) {
		return nil, nil, s.failed(ctx, fmt.Errorf("HMGET returned %d values for %d fields: %v", len(vals), len(fields), err))
	}
	gens = make([]uint64, len(vals))
	for i, v := range vals {
		if v == nil {
			if i == 0 {
				return nil, nil, errNoEpoch
			}
			continue // never bumped
		}
		str, _ := v.(string)
		if gens[i], err = strconv.ParseUint(str, 10, 64); err != nil {
			// Garbage in the hash: no generation can be trusted; a
			// write's HINCRBY fails too, so start over.
			s.log.Warn("cache generations hold garbage; forgetting them", "field", fields[i], "value", str)
			cctx, cancel := s.bounded(ctx)
			s.c.Del(cctx, redisGensKey)
			cancel()
			return nil, nil, errNoEpoch
		}
	}
	if withEntry {
		b, err := get.Bytes()
		if err == nil {
			value = b
		} else if !errors.Is(err, redis.Nil) {
			return nil, nil, s.failed(ctx, err)
		}
	}
	return gens, value, nil
}

// initEpoch creates the generations' epoch if it is missing.
func (s *redisStore) initEpoch(ctx context.Context) error {
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	return s.failed(ctx, s.c.HSetNX(cctx, redisGensKey, fieldEpoch, newEpoch()).Err())
}

// store writes an entry's value with its time to live.
func (s *redisStore) store(ctx context.Context, digest [32]byte, value []byte, ttl time.Duration) error {
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	return s.failed(ctx, s.c.Set(cctx, redisEntryKey(digest), value, ttl).Err())
}

// bump increments the generations of fields (creating the epoch first if
// the hash was lost) in one round trip.
func (s *redisStore) bump(ctx context.Context, fields []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	pipe := s.c.Pipeline()
	pipe.HSetNX(cctx, redisGensKey, fieldEpoch, newEpoch())
	for _, f := range fields {
		pipe.HIncrBy(cctx, redisGensKey, f, 1)
	}
	_, err := pipe.Exec(cctx)
	return s.failed(ctx, err)
}

// newEpoch returns a random epoch; 0 is never one.
func newEpoch() uint64 {
	for {
		if e := rand.Uint64() >> 1; e != 0 { // fits HINCRBY's int64
			return e
		}
	}
}
