package failover

import (
	"testing"
	"time"
)

// TestSplitPolicyRefuse: with split_policy = "refuse", an instance whose
// primary fails while another instance reaches it stays off its fallback
// (Refusing, not serving); once no other instance reaches it, it fails
// over; a stale view counts for nothing; a probe success ends the refusal.
func TestSplitPolicyRefuse(t *testing.T) {
	cfg := testFailover()
	cfg.SplitPolicy = "refuse"
	r := newRig(t, cfg, true)
	r.probe.set(Primary, errRefused)
	r.m.SetPeers(PeerView{Known: true, Up: 2, At: r.clock.Now()})
	r.fail(3)
	if r.m.Active() != Primary || !r.m.Refusing() || r.m.Serving() || !r.m.State().Isolated {
		t.Fatalf("refuse with peers up: active %s, refusing %v, serving %v, state %+v", r.m.Active(), r.m.Refusing(), r.m.Serving(), r.m.State())
	}
	// The others lose it too: fail over.
	r.m.SetPeers(PeerView{Known: true, Down: 2, At: r.clock.Now()})
	if r.m.Active() != Fallback || r.m.Refusing() {
		t.Fatalf("no peer reaches the primary: active %s", r.m.Active())
	}
	// One reaches it again: back to refusing, still probing.
	r.m.SetPeers(PeerView{Known: true, Up: 1, Down: 1, At: r.clock.Now()})
	if r.m.Active() != Primary || !r.m.Refusing() || r.m.State().NextProbe.IsZero() {
		t.Fatalf("a peer reaches the primary again: active %s, refusing %v, state %+v", r.m.Active(), r.m.Refusing(), r.m.State())
	}
	// A view older than StaleAfter is not acted on.
	r.clock.Advance(StaleAfter + time.Second)
	if r.m.Refusing() {
		t.Fatal("refusing on a stale view")
	}
	// A probe success: the primary serves again.
	r.m.SetPeers(PeerView{Known: true, Up: 1, At: r.clock.Now()})
	r.probe.set(Primary, nil)
	r.clock.Advance(5 * time.Minute)
	if r.m.Active() != Primary || r.m.Refusing() || !r.m.Serving() || r.m.State().Isolated {
		t.Fatalf("after a successful probe: %+v", r.m.State())
	}
}

// TestSplitPolicyFailOver: the default fails over alone, and says it is isolated.
func TestSplitPolicyFailOver(t *testing.T) {
	cfg := testFailover()
	cfg.SplitPolicy = "fail_over"
	r := newRig(t, cfg, true)
	r.m.SetPeers(PeerView{Known: true, Up: 1, At: r.clock.Now()})
	r.fail(3)
	if st := r.m.State(); st.Active != Fallback || !st.Isolated {
		t.Fatalf("fail_over with a peer up: %+v", st)
	}
}
