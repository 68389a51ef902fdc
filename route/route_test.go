package route

import (
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		sql  string
		want Shape
	}{
		{"SELECT * FROM t WHERE id = $1", Shape{Read}},
		{"select count(*), now(), random() from t join u using (id)", Shape{Read}},
		{"EXPLAIN SELECT 1", Shape{Read}},
		{"EXPLAIN ANALYZE DELETE FROM t", Shape{Write}},
		{"SELECT * FROM t FOR UPDATE", Shape{Write}},
		{"SELECT * FROM t FOR SHARE", Shape{Write}},
		{"SELECT * INTO t2 FROM t", Shape{Write}},
		{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Shape{Write}},
		{"SELECT nextval('s')", Shape{Write}},
		{"SELECT currval('s')", Shape{Write}},
		{"SELECT my_func(1)", Shape{Write}},
		{"SELECT public.f()", Shape{Write}},
		{"SELECT pg_advisory_lock(1)", Shape{Write}},
		{"SELECT txid_current()", Shape{Write}},
		{"SELECT pg_current_wal_lsn()", Shape{Write}},
		{"SELECT set_config('default_transaction_read_only', 'off', false)", Shape{Write}},
		{"INSERT INTO t VALUES (1)", Shape{Write}},
		{"BEGIN READ ONLY", Shape{BeginReadOnly}},
		{"START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Shape{BeginReadOnly}},
		{"BEGIN", Shape{Begin}},
		{"BEGIN READ WRITE", Shape{Write}},
		{"SET TRANSACTION READ ONLY", Shape{SetReadOnly}},
		{"SET TRANSACTION READ WRITE", Shape{Write}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Shape{Write}},
		{"COMMIT", Shape{Neutral}},
		{"SET search_path = app", Shape{Neutral}},
		{"SHOW search_path", Shape{Neutral}},
		{"", Shape{Neutral}},
		{"BEGIN; SET TRANSACTION READ ONLY; SELECT 1; COMMIT", Shape{Begin, SetReadOnly, Read, Neutral}},
		{"SELEC oops", Shape{Write}},
		{"LISTEN ch", Shape{Write}},
		{"CALL p()", Shape{Write}},
		{"DO $$BEGIN END$$", Shape{Write}},
	}
	c := NewClassifier(64)
	for _, tc := range cases {
		for i := 0; i < 2; i++ { // parsed, then cached
			got := c.ClassifyBytes([]byte(tc.sql))
			if len(got) != len(tc.want) {
				t.Errorf("%q: %v, want %v", tc.sql, got, tc.want)
				break
			}
			for j := range got {
				if got[j] != tc.want[j] {
					t.Errorf("%q: %v, want %v", tc.sql, got, tc.want)
					break
				}
			}
		}
	}
}

func TestChunk(t *testing.T) {
	shape := func(sqls ...string) []Shape {
		var out []Shape
		for _, s := range sqls {
			out = append(out, Classify(s))
		}
		return out
	}
	cases := []struct {
		name      string
		shapes    []Shape
		defaultRO bool
		unsure    bool
		replica   bool
		mayWrite  bool
	}{
		{"single read", shape("SELECT 1"), false, false, true, false},
		{"reads in one query", shape("SELECT 1; SELECT 2"), false, false, true, false},
		{"extended read", shape("SELECT $1::int"), false, false, true, false},
		{"read-only transaction", shape("BEGIN READ ONLY", "SELECT 1"), false, false, true, false},
		{"set transaction read only after begin", shape("BEGIN", "SET TRANSACTION READ ONLY", "SELECT 1"), false, false, true, false},
		{"set transaction read only too late", shape("BEGIN", "SELECT 1", "SET TRANSACTION READ ONLY"), false, false, false, false},
		{"read-write transaction", shape("BEGIN", "SELECT 1"), false, false, false, false},
		{"begin alone", shape("BEGIN"), false, false, false, false},
		{"begin with default_transaction_read_only", shape("BEGIN", "SELECT 1"), true, false, true, false},
		{"write", shape("INSERT INTO t VALUES (1)"), false, false, false, true},
		{"read then write", shape("SELECT 1", "UPDATE t SET a = 1"), false, false, false, true},
		{"write inside a read-only transaction", shape("BEGIN READ ONLY", "INSERT INTO t VALUES (1)"), false, false, true, false},
		{"neutral only", shape("SET search_path = a"), false, false, false, false},
		{"unsure", shape("SELECT 1"), false, true, false, true},
	}
	for _, tc := range cases {
		var c Chunk
		for _, s := range tc.shapes {
			c.Add(s, tc.defaultRO)
		}
		if tc.unsure {
			c.Unsure()
		}
		if c.ReplicaEligible() != tc.replica || c.MayWrite() != tc.mayWrite {
			t.Errorf("%s: replica %v, may write %v; want %v, %v", tc.name, c.ReplicaEligible(), c.MayWrite(), tc.replica, tc.mayWrite)
		}
	}
}

func TestDecide(t *testing.T) {
	now := time.Now()
	fresh := ReplicaView{Up: true, Replayed: 100, Measured: now}
	cases := []struct {
		name string
		in   Input
		want Decision
	}{
		{"not read-only", Input{Replicas: []ReplicaView{fresh}}, Decision{Replica: -1, Why: "not_read_only"}},
		{"read", Input{ReadOnly: true, Replicas: []ReplicaView{fresh}}, Decision{Replica: 0, Why: "replica"}},
		{"replayed past the need", Input{ReadOnly: true, Need: 100, Replicas: []ReplicaView{fresh}}, Decision{Replica: 0, Why: "replica"}},
		{"needs a newer position", Input{ReadOnly: true, Need: 101, Replicas: []ReplicaView{fresh}}, Decision{Replica: 0, Check: true, Why: "replica"}},
		{"position pending", Input{ReadOnly: true, Pending: true, Replicas: []ReplicaView{fresh}}, Decision{Replica: -1, Why: "ryw_pending"}},
		{"stale measurement", Input{ReadOnly: true, Remeasure: time.Second, Now: now.Add(2 * time.Second), Replicas: []ReplicaView{fresh}}, Decision{Replica: 0, Check: true, Why: "replica"}},
		{"down", Input{ReadOnly: true, Replicas: []ReplicaView{{Up: false}}}, Decision{Replica: -1, Why: "replicas_down"}},
		{"none", Input{ReadOnly: true}, Decision{Replica: -1, Why: "replicas_down"}},
		{"lagging, measured lately", Input{ReadOnly: true, Remeasure: time.Second, Now: now, Replicas: []ReplicaView{{Up: true, Lagging: true, Measured: now}}}, Decision{Replica: -1, Why: "replicas_lagging"}},
		{"lagging, measured long ago: measure on this read", Input{ReadOnly: true, Remeasure: time.Second, Now: now.Add(time.Minute), Replicas: []ReplicaView{{Up: true, Lagging: true, Measured: now}}}, Decision{Replica: 0, Check: true, Why: "replica"}},
		{"skips the lagging one", Input{ReadOnly: true, Remeasure: time.Second, Now: now, Replicas: []ReplicaView{{Up: true, Lagging: true, Measured: now}, fresh}}, Decision{Replica: 1, Why: "replica"}},
		{"skips the down one", Input{ReadOnly: true, Seed: 0, Remeasure: time.Second, Now: now, Replicas: []ReplicaView{{Up: false}, fresh}}, Decision{Replica: 1, Why: "replica"}},
	}
	for _, tc := range cases {
		if tc.in.Now.IsZero() {
			tc.in.Now, tc.in.Remeasure = now, time.Hour
		}
		if got := Decide(tc.in); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	// Round robin over healthy replicas.
	seen := map[int]bool{}
	for seed := uint32(0); seed < 4; seed++ {
		seen[Decide(Input{ReadOnly: true, Seed: seed, Now: now, Remeasure: time.Hour, Replicas: []ReplicaView{fresh, fresh}}).Replica] = true
	}
	if !seen[0] || !seen[1] {
		t.Errorf("reads went to %v; want both replicas", seen)
	}
}

func TestPositionsPerInstance(t *testing.T) {
	p := &Positions{TTL: time.Minute}
	if lsn, pending := p.Need("s:1"); lsn != 0 || pending {
		t.Fatalf("empty: %v %v", lsn, pending)
	}
	p.Begin("u:app:alice")
	if _, pending := p.Need("u:app:alice"); !pending {
		t.Error("a commit being learned is not pending")
	}
	p.Learned("u:app:alice", 500)
	p.Begin("u:app:alice")
	p.Learned("u:app:alice", 300) // an older position never lowers it
	if lsn, pending := p.Need("u:app:alice"); lsn != 500 || pending {
		t.Errorf("need %v pending %v; want 500, false", lsn, pending)
	}
	p.Learned("s:2", 0) // unknown: no replica reaches it
	if lsn, _ := p.Need("s:2"); lsn < 1<<62 {
		t.Errorf("unknown position %v", lsn)
	}
}

func TestLSN(t *testing.T) {
	l, err := ParseLSN("16/B374D848")
	if err != nil || l != 0x16B374D848 || l.String() != "16/B374D848" {
		t.Errorf("%v %v %s", l, err, l)
	}
	for _, bad := range []string{"", "16", "x/1", "1/y"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
