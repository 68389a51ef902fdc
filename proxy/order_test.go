package proxy_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pgguard/pgguard/cache"
	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/guardtest"
	"github.com/pgguard/pgguard/internal/localpg"
	"github.com/pgguard/pgguard/proxy"
)

// Issue 24, finding 1: a client's replies leave in the order of its
// requests, however long Redis takes to store a miss or invalidate a
// commit.

// slowRedis starts a relay to a Redis at target whose commands that write
// (HINCRBY of an invalidation, SET of a store) reach Redis delay later, as
// with a remote Redis; reads pass at once. Each connection's bytes keep
// their order.
func slowRedis(t testing.TB, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	pipe := func(dst, src net.Conn, slow func([]byte) bool) {
		defer wg.Done()
		defer dst.Close()
		type chunk struct {
			at time.Time
			p  []byte
		}
		ch := make(chan chunk, 1024)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				time.Sleep(time.Until(c.at))
				if _, err := dst.Write(c.p); err != nil {
					return
				}
			}
		}()
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p := bytes.Clone(buf[:n])
				at := time.Now()
				if slow != nil && slow(p) {
					at = at.Add(delay)
				}
				ch <- chunk{at, p}
			}
			if err != nil {
				return
			}
		}
	}
	writes := func(p []byte) bool {
		return bytes.Contains(p, []byte("HINCRBY")) || bytes.Contains(p, []byte("\r\nSET\r\n")) || bytes.Contains(p, []byte("\r\nset\r\n"))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go pipe(up, c, writes)
			go pipe(c, up, nil)
		}
	}()
	return "redis://" + ln.Addr().String() + "/0"
}

// queryMsg is a simple-protocol Query message.
func queryMsg(sql string) []byte {
	msg := []byte{'Q', 0, 0, 0, 0}
	msg = append(append(msg, sql...), 0)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
	return msg
}

// extendedMsgs is Parse/Bind/Describe/Execute/Sync of sql (unnamed, no parameters).
func extendedMsgs(sql string) []byte {
	msg := func(typ byte, body []byte) []byte {
		m := []byte{typ, 0, 0, 0, 0}
		m = append(m, body...)
		binary.BigEndian.PutUint32(m[1:], uint32(len(m)-1))
		return m
	}
	var out []byte
	out = append(out, msg('P', append(append([]byte{0}, sql...), 0, 0, 0))...)
	out = append(out, msg('B', []byte{0, 0, 0, 0, 0, 0, 0, 0})...)
	out = append(out, msg('D', []byte{'P', 0})...)
	out = append(out, msg('E', []byte{0, 0, 0, 0, 0})...)
	return append(out, msg('S', nil)...)
}

// TestCacheRepliesInClientOrder pipelines a write and cached reads, in
// the simple and the extended protocol, through pgguard with a Redis whose
// writes take 20 ms, in both pool modes over both networks: every reply
// equals a direct connection's, byte for byte and in order.
func TestCacheRepliesInClientOrder(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	r, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	redisURL := slowRedis(t, r.Addr(), 20*time.Millisecond)
	sel := func(id int) string {
		return fmt.Sprintf("SELECT tenant_id, name, color, logo FROM cache_branding WHERE tenant_id = %d", id)
	}
	guardtest.EachNet(t, func(t *testing.T, n guardtest.Net) {
		for _, mode := range []string{"transaction", "session"} {
			t.Run(mode, func(t *testing.T) {
				freshBranding(t)
				cfg := testConfig(mode)
				cfg.Cache = []config.CacheRule{brandingRule()}
				cfg.CacheStore.RedisURL = redisURL
				g := startGuardOver(t, n, cfg, func(p *proxy.Proxy) { p.Cache = newCacheFor(t, cfg) })
				via := newRawConn(t, g.url("app"))
				direct := newRawConn(t, pg.URL("app"))
				for round := range 10 {
					// Entries for tenants 3 and 4, then: a write, a read
					// it invalidated (a miss, stored), a hit.
					for _, id := range []int{3, 4} {
						via.roundTrip(t, queryMsg(sel(id)))
						via.roundTrip(t, extendedMsgs(sel(id)))
					}
					color := fmt.Sprintf("#%03d", round)
					update := fmt.Sprintf("UPDATE cache_branding SET color = '%s' WHERE tenant_id = 3", color)
					for _, batch := range [][]byte{
						catMsgs(queryMsg(update), queryMsg(sel(3)), queryMsg(sel(4))),
						catMsgs(queryMsg(update+" AND color <> '"+color+"'"), extendedMsgs(sel(3)), extendedMsgs(sel(4))),
						catMsgs(queryMsg(sel(4)), queryMsg(sel(3)), extendedMsgs(sel(4)), extendedMsgs(sel(3))),
					} {
						got := pipelined(t, via, batch)
						want := pipelined(t, direct, batch)
						if !bytes.Equal(got, want) {
							t.Fatalf("round %d: pgguard answered\n%q\ndirect connection\n%q", round, got, want)
						}
						if !bytes.Contains(got, []byte(color)) {
							t.Fatalf("round %d: the read after the write lacks %s: %q", round, color, got)
						}
					}
				}
			})
		}
	})
}

func catMsgs(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// pipelined writes each sync point's messages of msgs in a write of its
// own, 2 ms apart, without waiting for replies, and returns every reply up
// to the last ReadyForQuery: pgguard reads each request alone, while the
// ones before it are still being answered.
func pipelined(t *testing.T, s *rawConn, msgs []byte) []byte {
	t.Helper()
	done := make(chan []byte, 1)
	go func() { done <- s.replies(t, msgs) }()
	for b := msgs; len(b) >= 5; {
		end := 0
		for end < len(b) {
			typ := b[end]
			end += 1 + int(binary.BigEndian.Uint32(b[end+1:]))
			if typ == 'S' || typ == 'Q' {
				break
			}
		}
		if _, err := s.Write(b[:end]); err != nil {
			t.Fatal(err)
		}
		b = b[end:]
		time.Sleep(2 * time.Millisecond)
	}
	return <-done
}

// newCacheFor builds the result cache of cfg until the test ends.
func newCacheFor(t testing.TB, cfg *config.Config) *cache.Cache {
	t.Helper()
	rc, err := cache.New(cfg, guardtest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}
