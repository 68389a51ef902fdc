package localpg

import (
	"context"
	"testing"
	"time"
)

// TestStandby: a standby started from a cluster streams its writes and
// refuses its own.
func TestStandby(t *testing.T) {
	c := pg
	ctx := context.Background()
	if err := c.Exec(ctx, "DROP TABLE IF EXISTS sb; CREATE TABLE sb (id int); INSERT INTO sb VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err := c.StartStandby(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	t.Logf("standby started in %v", time.Since(start))
	if err := c.Exec(ctx, "INSERT INTO sb VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, err := s.QueryInt(ctx, "SELECT count(*) FROM sb")
		if err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby has %d rows (%v); want 2", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Exec(ctx, "INSERT INTO sb VALUES (3)"); err == nil {
		t.Error("the standby accepted a write")
	}
}
