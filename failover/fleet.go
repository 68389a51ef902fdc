package failover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgguard/pgguard/internal/redislink"
)

// Fleet-aware failover. Instances sharing a Redis (limiter.redis_url)
// publish, every PublishEvery, what each sees of each database's primary,
// in the hash pgguard:failover:DB (field: instance id, value:
// "up|down UNIXMS"), and read what the others publish. An entry older than
// StaleAfter is not counted (that instance is gone or cut off from Redis).
// What the others see is given to each database's Monitor (SetPeers):
// it logs and shows an instance that alone cannot reach its primary, and
// with failover.split_policy = "refuse" keeps such an instance off its
// fallback while another still reaches the primary. Without Redis, or
// while it is unreachable, nothing is known of the others and every
// instance decides alone, as without a fleet.

// ErrRefused wraps the dial error of a database whose instance refuses to
// serve its fallback while other instances reach its primary
// (split_policy = "refuse").
var ErrRefused = errors.New("this instance cannot reach the primary while other instances can (failover.split_policy = \"refuse\")")

// PublishEvery is how often an instance publishes and reads the fleet's view.
const PublishEvery = time.Second

// StaleAfter is how old another instance's entry may be and still count.
const StaleAfter = 5 * time.Second

// PeerView is what the other live instances sharing the Redis see of a
// database's primary.
type PeerView struct {
	// Known is false without a Redis, or while it is unreachable.
	Known bool `json:"known"`
	// Up and Down count the other instances that reach the primary, and
	// that do not.
	Up   int `json:"peers_up"`
	Down int `json:"peers_down"`
	// At is when the view was read.
	At time.Time `json:"at,omitzero"`
}

// fresh reports whether v is known and recent enough to act on.
func (v PeerView) fresh(now time.Time) bool { return v.Known && now.Sub(v.At) < StaleAfter }

// Fleet publishes this instance's view of every database's primary and
// gives each Monitor the others' (see above). Create with NewFleet; a nil
// *Fleet does nothing.
type Fleet struct {
	link     *redislink.Link
	instance string
	log      *slog.Logger
	stop     chan struct{}
	done     sync.WaitGroup
	once     sync.Once
}

// NewFleet returns a Fleet on the Redis at rawURL (the key named key, for
// errors), or nil for an empty URL. Nothing is dialled until Start.
func NewFleet(rawURL, key string, log *slog.Logger, reg prometheus.Registerer) (*Fleet, error) {
	if rawURL == "" {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	up := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgguard_failover_fleet_redis_up",
		Help: "1 while this instance shares its view of the primaries with the fleet through Redis (failover.split_policy), 0 while Redis is unreachable and it decides alone.",
	})
	if reg != nil {
		if err := reg.Register(up); err != nil {
			return nil, err
		}
	}
	f := &Fleet{instance: instanceID(), log: log, stop: make(chan struct{})}
	l, err := redislink.New(rawURL, redislink.Options{
		Key: key, Timeout: 200 * time.Millisecond, RetryMin: time.Second, RetryMax: 30 * time.Second,
		Log: log, Gauge: up, Stop: f.stop,
		DownMsg: "redis unreachable: this instance decides failover alone until it returns",
		BackMsg: "redis reachable again: failover sees the fleet",
	})
	if err != nil {
		return nil, err
	}
	f.link = l
	return f, nil
}

// Instance is this instance's id in the fleet's hashes.
func (f *Fleet) Instance() string {
	if f == nil {
		return ""
	}
	return f.instance
}

// instanceID is host:pid:random, unique per process.
func instanceID() string {
	host, _ := os.Hostname()
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Start publishes and reads every PublishEvery until Close. monitors
// returns the databases' monitors by name (it may change on reload).
func (f *Fleet) Start(monitors func() map[string]*Monitor) {
	if f == nil {
		return
	}
	f.link.Start()
	f.done.Add(1)
	go func() {
		defer f.done.Done()
		t := time.NewTicker(PublishEvery)
		defer t.Stop()
		for {
			f.round(monitors())
			select {
			case <-f.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// Close stops publishing; other instances stop counting this one after StaleAfter.
func (f *Fleet) Close() {
	if f == nil {
		return
	}
	f.once.Do(func() {
		close(f.stop)
		f.done.Wait()
		f.link.Close()
	})
}

func fleetKey(db string) string { return "pgguard:failover:" + db }

// round publishes this instance's view of each primary and hands each
// monitor the others'.
func (f *Fleet) round(monitors map[string]*Monitor) {
	if !f.link.Up.Load() {
		for _, m := range monitors {
			m.SetPeers(PeerView{})
		}
		return
	}
	now := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), f.link.Timeout())
	defer cancel()
	pipe := f.link.C.Pipeline()
	type pending struct {
		m   *Monitor
		key string
		all interface{ Val() map[string]string }
	}
	var reads []pending
	for name, m := range monitors {
		view := "up"
		if m.PrimaryDown() {
			view = "down"
		}
		key := fleetKey(name)
		pipe.HSet(ctx, key, f.instance, view+" "+strconv.FormatInt(now.UnixMilli(), 10))
		pipe.Expire(ctx, key, time.Hour)
		reads = append(reads, pending{m, key, pipe.HGetAll(ctx, key)})
	}
	if len(reads) == 0 {
		return
	}
	if _, err := pipe.Exec(ctx); err != nil {
		f.link.Failed(ctx, err)
		for _, r := range reads {
			r.m.SetPeers(PeerView{})
		}
		return
	}
	var gone []string
	for _, r := range reads {
		v := PeerView{Known: true, At: now}
		gone = gone[:0]
		for inst, val := range r.all.Val() {
			state, ms, _ := strings.Cut(val, " ")
			at, err := strconv.ParseInt(ms, 10, 64)
			if err != nil || now.Sub(time.UnixMilli(at)) > forgetAfter {
				gone = append(gone, inst) // an instance long gone
			}
			if inst == f.instance || err != nil || now.Sub(time.UnixMilli(at)) > StaleAfter {
				continue
			}
			if state == "up" {
				v.Up++
			} else {
				v.Down++
			}
		}
		r.m.SetPeers(v)
		if len(gone) > 0 {
			f.link.Failed(ctx, f.link.C.HDel(ctx, r.key, gone...).Err())
		}
	}
}

// forgetAfter is when an instance's entry is removed from the hash.
const forgetAfter = 10 * time.Minute
