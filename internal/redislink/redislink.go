// Package redislink is the limiter's and the result cache's way to Redis:
// a client whose every call is bounded by a short timeout, and which, at
// the first error, says so once, goes down (callers fall back to
// per-instance state) and probes in the background with backoff until
// Redis answers again.
package redislink

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pgguard/pgguard/config"
)

// Options configure a Link.
type Options struct {
	Key      string        // the config key of the URL, for errors
	Timeout  time.Duration // per call
	RetryMin time.Duration // first probe after an error
	RetryMax time.Duration // probe backoff cap
	Log      *slog.Logger
	Gauge    prometheus.Gauge // 1 while up
	Stop     <-chan struct{}  // closed when the owner closes: the probe ends
	// DownMsg and BackMsg are logged when Redis goes (WARN) and returns (INFO).
	DownMsg, BackMsg string
	// Down, if set, runs once per outage as it starts; Back, if set, runs
	// in the probe once Redis answers, before the link is up again (an
	// error keeps it down and probing).
	Down func()
	Back func(context.Context) error
}

// Link is a Redis client and whether it is usable (Up).
type Link struct {
	C  *redis.Client
	Up atomic.Bool
	o  Options

	mu      sync.Mutex // guards probing, closed; wg.Add
	probing bool
	closed  bool
	wg      sync.WaitGroup
}

// New builds a link to rawURL; nothing is dialled until Start.
func New(rawURL string, o Options) (*Link, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v", o.Key, config.RedactURL(rawURL), err)
	}
	opt.DialTimeout = o.Timeout
	opt.ReadTimeout = o.Timeout
	opt.WriteTimeout = o.Timeout
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1 // a retry would blow the time budget; the probe retries
	opt.DialerRetries = 1
	opt.Protocol = 2 // no HELLO round trip, no push notifications
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return &Link{C: redis.NewClient(opt), o: o}, nil
}

// Timeout is the bound of one call.
func (l *Link) Timeout() time.Duration { return l.o.Timeout }

// Start pings once (within the call timeout) and is up if Redis answers,
// else down with the probe running.
func (l *Link) Start() {
	ctx, cancel := context.WithTimeout(context.Background(), l.o.Timeout)
	err := l.C.Ping(ctx).Err()
	cancel()
	l.Up.Store(true)
	if err == nil {
		l.o.Gauge.Set(1)
		return
	}
	l.Fail(err) // logs and starts the probe
}

// Fail goes down after a Redis error: logs once per outage, sets the
// gauge, runs Down and starts the probe.
func (l *Link) Fail(err error) {
	if !l.Up.CompareAndSwap(true, false) {
		return
	}
	l.o.Gauge.Set(0)
	l.o.Log.Warn(l.o.DownMsg, "err", err)
	if l.o.Down != nil {
		l.o.Down()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.probing || l.closed {
		return
	}
	l.probing = true
	l.wg.Add(1)
	go l.probe()
}

// Failed calls Fail for an error of a call made with ctx, unless ctx itself
// ended (the caller gave up: Redis is not to blame), and returns err.
func (l *Link) Failed(ctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil {
		l.Fail(err)
	}
	return err
}

// probe pings with backoff until Redis answers and Back succeeds, or Stop.
func (l *Link) probe() {
	defer l.wg.Done()
	d := l.o.RetryMin
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-l.o.Stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.o.Timeout)
		err := l.C.Ping(ctx).Err()
		if err == nil && l.o.Back != nil {
			err = l.o.Back(ctx)
		}
		cancel()
		if err == nil {
			l.mu.Lock()
			l.probing = false
			l.mu.Unlock()
			l.Up.Store(true)
			l.o.Gauge.Set(1)
			l.o.Log.Info(l.o.BackMsg)
			return
		}
		d = min(2*d, l.o.RetryMax)
		t.Reset(d)
	}
}

// Close waits for the probe (its owner closed Stop first) and closes the client.
func (l *Link) Close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
	_ = l.C.Close()
}
