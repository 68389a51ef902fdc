package neonsim

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/internal/faultnet"
)

// stream is a few messages of different lengths, an empty body included.
func stream() ([]byte, [][]byte) {
	msgs := [][]byte{
		{'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0},
		{'H', 0, 0, 0, 4},
		{'Z', 0, 0, 0, 5, 'T'},
		append([]byte{'D', 0, 0, 1, 4}, bytes.Repeat([]byte{7}, 256)...),
	}
	return bytes.Join(msgs, nil), msgs
}

// chunked reads b in pieces cut at the given offsets.
type chunked struct {
	b    []byte
	cuts []int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := len(c.b)
	if len(c.cuts) > 0 {
		n, c.cuts = c.cuts[0], c.cuts[1:]
	}
	n = min(n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

func readAll(t *testing.T, r io.Reader) [][]byte {
	t.Helper()
	fr := frameReader{r: bufio.NewReaderSize(r, 16)}
	var out [][]byte
	for {
		m, err := fr.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(m))
	}
}

// TestFrameReaderChunking: every cut of the stream into two pieces, and one
// byte at a time, gives the same messages.
func TestFrameReaderChunking(t *testing.T) {
	b, want := stream()
	check := func(name string, got [][]byte) {
		if len(got) != len(want) {
			t.Fatalf("%s: %d messages, want %d", name, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: message %d = %q, want %q", name, i, got[i], want[i])
			}
		}
	}
	for cut := 1; cut < len(b); cut++ {
		check("cut", readAll(t, &chunked{b: b, cuts: []int{cut}}))
		for cut2 := cut + 1; cut2 < len(b); cut2 += 7 {
			check("cuts", readAll(t, &chunked{b: b, cuts: []int{cut, cut2 - cut}}))
		}
	}
	check("one byte", readAll(t, iotest.OneByteReader(bytes.NewReader(b))))
	// A stream cut inside a message is an unexpected EOF, not a message.
	fr := frameReader{r: bufio.NewReader(bytes.NewReader(b[:len(b)-3]))}
	for range 3 {
		fr.next()
	}
	if _, err := fr.next(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated: %v", err)
	}
}

// TestSplitNetwork runs queries through a relay that splits both
// directions into 1-5 byte pieces, and compares the rows with a direct
// connection to the PostgreSQL underneath.
func TestSplitNetwork(t *testing.T) {
	s := start(t, Options{SuspendAfter: time.Minute})
	shape := faultnet.Shape{MaxPiece: 5, Pause: 100 * time.Microsecond, PauseChance: 0.05}
	r, err := faultnet.Listen(faultnet.Options{Target: s.Addr(), Seed: 1, Up: shape, Down: shape})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cfg, err := pgconn.ParseConfig(s.URL(ep, "app", "secret", "app"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	_, port, _ := splitHostPort(r.Addr())
	cfg.Port = port
	c, err := pgconn.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	direct, err := pgconn.Connect(context.Background(), pg.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	const sql = "SELECT g, repeat(md5(g::text), g % 20) FROM generate_series(1, 150) g; SELECT 'x'"
	got, err := c.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want, err := direct.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(got[0].Rows) != len(want[0].Rows) {
		t.Fatalf("%d results, %d rows; want %d, %d", len(got), len(got[0].Rows), len(want), len(want[0].Rows))
	}
	for i := range want[0].Rows {
		if !bytes.Equal(got[0].Rows[i][1], want[0].Rows[i][1]) {
			t.Fatalf("row %d differs", i)
		}
	}
	if l := s.Endpoint(ep).Ledger(); l.Queries != 1 || l.Sessions != 1 {
		t.Errorf("ledger over the split network: %d queries, %d sessions", l.Queries, l.Sessions)
	}
	if st := r.Stats(); st.Pieces[faultnet.Down] <= st.Reads[faultnet.Down] {
		t.Errorf("nothing was split: %+v", st)
	}
}
