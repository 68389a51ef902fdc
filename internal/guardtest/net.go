package guardtest

import (
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/faultnet"
)

// EnvNet narrows the networks EachNet runs a test over: "direct" or
// "split"; unset or empty runs both.
const EnvNet = "PGGUARD_TEST_NET"

// EnvSeed seeds the split network's relays (default 1).
const EnvSeed = "PGGUARD_TEST_SEED"

// Net is the network between pgguard and PostgreSQL in a test.
type Net struct {
	// Name is the subtest name: "direct" or "split".
	Name string
	// Relay, when set, puts a faultnet relay with these shapes in front of
	// every upstream (Up: pgguard to PostgreSQL, Down: back).
	Relay *Shapes
}

// Shapes are a relay's two directions.
type Shapes struct{ Up, Down faultnet.Shape }

// SplitDown is the split network's shape for server bytes: every write cut
// into 1-5 byte pieces, with a pause of up to 200 µs after one piece in 20,
// so that pgguard's reads end anywhere inside a message, as they do over a
// WAN. pgguard's own writes to the server pass unsplit: PostgreSQL's reader
// is not under test, and bulk COPY would crawl.
var SplitDown = faultnet.Shape{MaxPiece: 5, Pause: 200 * time.Microsecond, PauseChance: 0.05}

var (
	// Direct is loopback, as it is: a read almost never ends inside a message.
	Direct = Net{Name: "direct"}
	// Split relays every upstream connection with its server bytes in
	// SplitDown's pieces.
	Split = Net{Name: "split", Relay: &Shapes{Down: SplitDown}}
)

// Splits reports whether n splits server bytes: such tests may run a
// smaller workload, since every byte costs a write and a read.
func (n Net) Splits() bool { return n.Relay != nil && n.Relay.Down.MaxPiece > 0 }

// Nets returns the networks integration tests run over: Direct and Split,
// or only the one $PGGUARD_TEST_NET names.
func Nets() []Net {
	switch os.Getenv(EnvNet) {
	case Direct.Name:
		return []Net{Direct}
	case Split.Name:
		return []Net{Split}
	}
	return []Net{Direct, Split}
}

// EachNet runs f as a subtest named after each network of Nets.
func EachNet(t *testing.T, f func(t *testing.T, n Net)) {
	t.Helper()
	for _, n := range Nets() {
		t.Run(n.Name, func(t *testing.T) { f(t, n) })
	}
}

// Seed is the seed for relays: $PGGUARD_TEST_SEED, or 1.
func Seed() uint64 {
	if s, err := strconv.ParseUint(os.Getenv(EnvSeed), 10, 64); err == nil {
		return s
	}
	return 1
}

// Relay starts a faultnet relay to target until the test ends; at the end
// it logs what the relay did.
func Relay(t testing.TB, target string, s Shapes) *faultnet.Relay {
	t.Helper()
	r, err := faultnet.Listen(faultnet.Options{Target: target, Seed: Seed(), Up: s.Up, Down: s.Down})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st := r.Stats()
		r.Close()
		for _, d := range []faultnet.Direction{faultnet.Up, faultnet.Down} {
			if sh := r.Shape(d); sh.MaxPiece > 0 && st.Bytes[d] > int64(sh.MaxPiece) && st.Pieces[d] <= st.Reads[d] {
				t.Errorf("faultnet %s: %d bytes %s in %d pieces from %d reads: nothing was split", r.Addr(), st.Bytes[d], d, st.Pieces[d], st.Reads[d])
			}
		}
		t.Logf("faultnet %s -> %s: %d connections (%d reset by the relay); down %d bytes in %d pieces, up %d bytes in %d pieces",
			r.Addr(), target, st.Accepted, st.Resets, st.Bytes[faultnet.Down], st.Pieces[faultnet.Down], st.Bytes[faultnet.Up], st.Pieces[faultnet.Up])
	})
	return r
}

// URL returns rawURL (a postgres:// URL) as pgguard should dial it over n:
// unchanged on Direct; else with its host:port replaced by a new relay's,
// which is returned too and closed when the test ends.
func (n Net) URL(t testing.TB, rawURL string) (string, *faultnet.Relay) {
	t.Helper()
	if n.Relay == nil || rawURL == "" {
		return rawURL, nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("upstream URL: %v", err)
	}
	r := Relay(t, u.Host, *n.Relay)
	u.Host = r.Addr()
	return u.String(), r
}

// Route makes every upstream of cfg (primaries, fallbacks, replicas) go over n,
// and returns the relays it started, if any.
func (n Net) Route(t testing.TB, cfg *config.Config) []*faultnet.Relay {
	t.Helper()
	var rs []*faultnet.Relay
	for _, db := range cfg.Databases {
		us := []*string{&db.Primary, &db.Fallback}
		for i := range db.Replicas {
			us = append(us, &db.Replicas[i])
		}
		for _, u := range us {
			var r *faultnet.Relay
			if *u, r = n.URL(t, *u); r != nil {
				rs = append(rs, r)
			}
		}
	}
	return rs
}
