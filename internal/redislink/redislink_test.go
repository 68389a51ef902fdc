package redislink

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgguard/pgguard/internal/localpg"
)

// TestOutageAndReturn: a call that fails takes the link down once (Down
// runs once, the gauge reads 0, later failures say nothing), and the probe
// brings it back once Redis answers and Back succeeds.
func TestOutageAndReturn(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "up"})
	var downs, backs atomic.Int32
	stop := make(chan struct{})
	l, err := New(r.URL(), Options{
		Key: "test.redis_url", Timeout: 50 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler), Gauge: gauge, Stop: stop, DownMsg: "down", BackMsg: "back",
		Down: func() { downs.Add(1) },
		Back: func(context.Context) error { backs.Add(1); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { close(stop); l.Close() }()
	l.Start()
	if !l.Up.Load() || testutil.ToFloat64(gauge) != 1 {
		t.Fatal("not up with Redis running")
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, l.Timeout())
		l.Failed(ctx, l.C.Ping(cctx).Err())
		cancel()
	}
	if l.Up.Load() || testutil.ToFloat64(gauge) != 0 || downs.Load() != 1 {
		t.Fatalf("after failed calls: up %v, gauge %v, Down ran %d times (want false, 0, 1)", l.Up.Load(), testutil.ToFloat64(gauge), downs.Load())
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !l.Up.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the probe did not bring the link back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if testutil.ToFloat64(gauge) != 1 || backs.Load() != 1 {
		t.Fatalf("back: gauge %v, Back ran %d times", testutil.ToFloat64(gauge), backs.Load())
	}
	// A caller's own deadline is not Redis's fault.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	l.Failed(cctx, cctx.Err())
	if !l.Up.Load() {
		t.Fatal("a cancelled caller took the link down")
	}
}
