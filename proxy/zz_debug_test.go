package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestZZDebugStats(t *testing.T) {
	primary := startCluster(t, map[string]string{"autovacuum": "off"})
	ctx := context.Background()
	mon, _ := pgx.Connect(ctx, primary.SuperURL("postgres"))
	q := func() int64 {
		var n int64
		mon.QueryRow(ctx, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'app'").Scan(&n)
		return n
	}
	t.Log("start", q())
	c, _ := pgx.Connect(ctx, primary.URL("app"))
	t.Log("after connect", q())
	time.Sleep(1100 * time.Millisecond)
	t.Log("after sleep", q())
	c.Exec(ctx, "SELECT 1")
	for i := 0; i < 14; i++ {
		t.Log(i, q())
		time.Sleep(time.Second)
	}
	c.Exec(ctx, "SELECT 1")
	for i := 0; i < 3; i++ {
		t.Log("b", i, q())
		time.Sleep(time.Second)
	}
}
