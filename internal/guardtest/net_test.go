package guardtest

import (
	"io"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/faultnet"
)

// TestNets: PGGUARD_TEST_NET narrows the networks; anything else runs both.
func TestNets(t *testing.T) {
	for env, want := range map[string]string{"": "direct,split", "direct": "direct", "split": "split", "bogus": "direct,split"} {
		t.Setenv(EnvNet, env)
		var names []string
		for _, n := range Nets() {
			names = append(names, n.Name)
		}
		if got := strings.Join(names, ","); got != want {
			t.Errorf("%s=%q: %s, want %s", EnvNet, env, got, want)
		}
	}
	if Direct.Splits() || !Split.Splits() {
		t.Error("Splits is wrong")
	}
}

// TestRoute puts a relay in front of every upstream on Split, none on
// Direct, and the relay reaches the upstream.
func TestRoute(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an upstream that says hello
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from upstream"))
			c.Close()
		}
	}()
	primary := "postgres://u:p@" + ln.Addr().String() + "/app?sslmode=disable"
	cfg := func() *config.Config {
		return &config.Config{Databases: map[string]*config.Database{"app": {Primary: primary}}}
	}

	c := cfg()
	if rs := Direct.Route(t, c); len(rs) != 0 || c.Databases["app"].Primary != primary {
		t.Fatalf("Direct changed the config: %v %s", rs, c.Databases["app"].Primary)
	}
	c = cfg()
	rs := Split.Route(t, c)
	if len(rs) != 1 {
		t.Fatalf("%d relays for one upstream", len(rs))
	}
	u, err := url.Parse(c.Databases["app"].Primary)
	if err != nil || u.Host != rs[0].Addr() || u.User.String() != "u:p" || u.Path != "/app" || u.RawQuery != "sslmode=disable" {
		t.Fatalf("routed URL %s, relay %s", c.Databases["app"].Primary, rs[0].Addr())
	}
	if c.Databases["app"].Fallback != "" {
		t.Errorf("an empty fallback got a relay: %s", c.Databases["app"].Fallback)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello from upstream" {
		t.Fatalf("through the relay: %q %v", got, err)
	}
	if st := rs[0].Stats(); st.Pieces[faultnet.Down] <= st.Reads[faultnet.Down] {
		t.Errorf("not split: %+v", st)
	}
}
