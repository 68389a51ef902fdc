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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pgguard/pgguard/internal/redislink"
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

// redisStore is the fleet-wide store, in the limiter's style (redislink):
// every call is bounded by a short timeout, and the first error switches
// the cache to per-instance state (Up = false) and starts a background
// probe that switches back once Redis answers and the invalidations made
// meanwhile are written (back).
type redisStore struct {
	*redislink.Link
	log   *slog.Logger
	watch genWatch
}

// genWatch remembers the highest generation this instance has seen of each
// field under the current epoch. Generations only grow; one found lower
// means Redis went back in time (restored from a snapshot, or failed over
// to a replica that lagged), and entries stored since could match again.
type genWatch struct {
	mu    sync.Mutex
	epoch uint64
	max   map[string]uint64 // guarded by mu
}

// maxWatched bounds the fields remembered; past it the watch starts over.
const maxWatched = 100_000

// observe records gens of fields (fields[0] the epoch) and reports whether
// one is older than seen before under the same epoch.
func (w *genWatch) observe(fields []string, gens []uint64) (older bool) {
	if len(fields) == 0 || fields[0] != fieldEpoch || len(gens) != len(fields) {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if gens[0] != w.epoch || w.max == nil || len(w.max) > maxWatched {
		w.epoch, w.max = gens[0], map[string]uint64{}
	}
	for i := 1; i < len(fields); i++ {
		f, g := fields[i], gens[i]
		if seen, ok := w.max[f]; ok && g < seen {
			older = true
		} else if !ok || g > seen {
			w.max[f] = g
		}
	}
	if older {
		w.max = nil
	}
	return older
}

// newRedisStore links to rawURL; down runs as an outage starts, back in the
// probe before the store is fleet-wide again.
func newRedisStore(rawURL string, log *slog.Logger, o options, gauge prometheus.Gauge, stop <-chan struct{}, down func(), back func(context.Context) error) (*redisStore, error) {
	l, err := redislink.New(rawURL, redislink.Options{
		Key: "cache_store.redis_url", Timeout: o.redisTimeout, RetryMin: o.retryMin, RetryMax: o.retryMax,
		Log: log, Gauge: gauge, Stop: stop, Down: down, Back: back,
		DownMsg: "redis unreachable, the result cache is per instance (entries live at most cache_store.degraded_ttl) until it returns",
		BackMsg: "redis reachable again, the result cache is fleet-wide",
	})
	if err != nil {
		return nil, err
	}
	return &redisStore{Link: l, log: log}, nil
}

// bounded returns ctx with the call timeout; an error of a call made with
// it, other than the caller's own ctx ending, switches to per-instance
// state (Failed).
func (s *redisStore) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.Timeout())
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
	pipe := s.C.Pipeline()
	hm := pipe.HMGet(cctx, redisGensKey, fields...)
	var get *redis.StringCmd
	if withEntry {
		get = pipe.Get(cctx, redisEntryKey(digest))
	}
	if _, err := pipe.Exec(cctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, s.Failed(ctx, err)
	}
	vals, err := hm.Result()
	if err != nil || len(vals) != len(fields) {
		return nil, nil, s.Failed(ctx, fmt.Errorf("HMGET returned %d values for %d fields: %v", len(vals), len(fields), err))
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
			s.C.Del(cctx, redisGensKey)
			cancel()
			return nil, nil, errNoEpoch
		}
	}
	if s.watch.observe(fields, gens) {
		if err := s.rewound(ctx); err != nil {
			return nil, nil, err
		}
		return nil, nil, errNoEpoch
	}
	if withEntry {
		b, err := get.Bytes()
		if err == nil {
			value = b
		} else if !errors.Is(err, redis.Nil) {
			return nil, nil, s.Failed(ctx, err)
		}
	}
	return gens, value, nil
}

// initEpoch creates the generations' epoch if it is missing.
func (s *redisStore) initEpoch(ctx context.Context) error {
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	return s.Failed(ctx, s.C.HSetNX(cctx, redisGensKey, fieldEpoch, newEpoch()).Err())
}

// store writes an entry's value with its time to live.
func (s *redisStore) store(ctx context.Context, digest [32]byte, value []byte, ttl time.Duration) error {
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	return s.Failed(ctx, s.C.Set(cctx, redisEntryKey(digest), value, ttl).Err())
}

// bump increments the generations of fields (creating the epoch first if
// the hash was lost) in one round trip.
func (s *redisStore) bump(ctx context.Context, fields []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	pipe := s.C.Pipeline()
	pipe.HSetNX(cctx, redisGensKey, fieldEpoch, newEpoch())
	incrs := make([]*redis.IntCmd, len(fields))
	for i, f := range fields {
		incrs[i] = pipe.HIncrBy(cctx, redisGensKey, f, 1)
	}
	epoch := pipe.HGet(cctx, redisGensKey, fieldEpoch)
	if _, err := pipe.Exec(cctx); err != nil {
		return s.Failed(ctx, err)
	}
	// The new values count as seen: a Redis that later answers lower ones
	// went back in time (genWatch).
	seen := append([]string{fieldEpoch}, fields...)
	gens := make([]uint64, len(seen))
	gens[0], _ = epoch.Uint64()
	for i, c := range incrs {
		gens[i+1] = uint64(c.Val())
	}
	if s.watch.observe(seen, gens) {
		return s.rewound(ctx)
	}
	return nil
}

// rewound starts a new epoch after Redis went back in time (genWatch): it
// makes every entry stored under the old one a miss, here and on every
// instance.
func (s *redisStore) rewound(ctx context.Context) error {
	s.log.Warn("cache generations are older than this instance has seen (redis restored, or failed over to a lagging replica); starting a new epoch: every entry is forgotten")
	cctx, cancel := s.bounded(ctx)
	defer cancel()
	return s.Failed(ctx, s.C.HSet(cctx, redisGensKey, fieldEpoch, newEpoch()).Err())
}

// newEpoch returns a random epoch; 0 is never one.
func newEpoch() uint64 {
	for {
		if e := rand.Uint64() >> 1; e != 0 { // fits HINCRBY's int64
			return e
		}
	}
}
