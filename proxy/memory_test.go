package proxy

import (
	"testing"
	"time"
)

// Memory goes back once per burst of connections, a second after the last
// one, and only when the burst allocated enough to matter.
func TestMemReleaseDue(t *testing.T) {
	var r memRelease
	var allocated uint64
	heap := func() uint64 { return allocated }
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	if r.due(at(0), 0, heap) {
		t.Fatal("released with no connection")
	}
	// A burst of 3 connections that allocates 8 MiB.
	for i := uint64(1); i <= 3; i++ {
		if r.due(at(time.Duration(i)*100*time.Millisecond), i, heap) {
			t.Fatal("released during the burst")
		}
		allocated += releaseMin * 2 / 3
	}
	if r.due(at(1200*time.Millisecond), 3, heap) {
		t.Fatal("released before the burst was quiet for releaseQuiet")
	}
	if !r.due(at(1400*time.Millisecond), 3, heap) {
		t.Fatal("not released after the burst")
	}
	if r.due(at(5*time.Second), 3, heap) {
		t.Fatal("released twice for one burst")
	}
	// A small burst: no release.
	r.due(at(6*time.Second), 4, heap)
	allocated += releaseMin / 2
	if r.due(at(8*time.Second), 4, heap) {
		t.Fatal("released after a burst that allocated little")
	}
}
