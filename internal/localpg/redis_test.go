package localpg

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// quietRedis drops go-redis's log lines, expected here while Redis is down.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func TestRedis(t *testing.T) {
	Require(t, RedisAvailable())
	redis.SetLogger(quietRedis{})
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	ctx := testContext(t)
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	if opts.Addr != r.Addr() {
		t.Errorf("URL %s has address %s, want %s", r.URL(), opts.Addr, r.Addr())
	}
	opts.MaxRetries = -1
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if got, err := rdb.Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Error("PING succeeded after Kill")
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if err := rdb.Get(ctx, "k").Err(); err != redis.Nil {
		t.Errorf("GET after Restart = %v, want redis.Nil (nothing persisted)", err)
	}

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if r.Restart() == nil {
		t.Error("Restart after Stop succeeded")
	}
}
