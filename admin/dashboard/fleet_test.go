package dashboard_test

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/fleet"
	"github.com/pgguard/pgguard/internal/localpg"
)

// TestBrowserFleet: the Fleet panel lists the three instances on the
// fleet's Redis and their total against fleet_max_connections, and the
// admin's click on "Turn on fleet-wide" reaches the other two instances.
func TestBrowserFleet(t *testing.T) {
	localpg.Require(t, localpg.RedisAvailable())
	rd, err := localpg.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })
	cfg := testConfig()
	cfg.Databases["app"].FleetMaxConnections = 12
	cfg.Fleet.RedisURL, cfg.Fleet.InstanceID = rd.URL(), "a"
	cfg.Fleet.Heartbeat = config.D(100 * time.Millisecond)
	e := start(t, cfg)

	// Two more instances on the same Redis, each with 4 server connections.
	var mu sync.Mutex
	flips := map[string]time.Time{} // when each instance applied a switch turned on
	for _, id := range []string{"b", "c"} {
		oc := *cfg
		oc.Fleet.InstanceID = id
		f, err := fleet.New(&oc, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		f.Describe = func() fleet.Instance {
			return fleet.Instance{Version: "test", Region: "ams", Clients: 60, Pools: []fleet.Pool{{Database: "app", ServerConns: 4, Clients: 60}}}
		}
		f.Switch = func(name string, on bool, who string) {
			if on {
				mu.Lock()
				flips[id+" "+name] = time.Now()
				mu.Unlock()
			}
		}
		f.Start()
		t.Cleanup(f.Close)
	}
	conn := e.connect(t, "fleet-test")
	mustExec(t, conn, "SELECT 1") // a's pool opens a server connection

	ctx, _ := browser(t)
	do(t, ctx, "load the page", chromedp.Navigate(e.http.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#fleet [data-fleet-db="app"]`)))
	waitJS(t, ctx, "three instances and the total", `document.querySelectorAll('#fleet tr[data-instance]').length === 3 && `+
		`document.querySelector('#fleet [data-fleet-db="app"] [data-k="fleet_conns"]').textContent === '9' && `+
		`document.querySelector('#fleet [data-fleet-db="app"]').textContent.includes('of fleet_max_connections 12')`)

	do(t, ctx, "click Turn on fleet-wide", chromedp.Click(chromedp.CSS(`[data-fleet-switch="read_only"] button[data-action="on"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#login`)))
	do(t, ctx, "sign in as admin", chromedp.SetValue(chromedp.CSS(`#login-user`), adminUser), chromedp.SetValue(chromedp.CSS(`#login-pass`), adminPass),
		chromedp.Click(chromedp.CSS(`#login-go`)))
	clicked := time.Now()
	waitJS(t, ctx, "the fleet-wide switch on in the page", `document.querySelector('[data-fleet-switch="read_only"]').textContent.includes('ON') && `+
		`document.querySelector('#badges').textContent.includes('READ-ONLY')`)
	var reached []time.Duration
	for _, id := range []string{"b", "c"} {
		for {
			mu.Lock()
			at, ok := flips[id+" read_only"]
			mu.Unlock()
			if ok {
				reached = append(reached, at.Sub(clicked))
				break
			}
			if time.Since(clicked) > 3*time.Second {
				t.Fatalf("the fleet-wide flip from the page did not reach %s", id)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("read_only flipped fleet-wide from the page: applied by b after %s, by c after %s (heartbeat 100ms)",
		reached[0].Round(time.Millisecond), reached[1].Round(time.Millisecond))
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(artifacts(t), "dashboard-fleet.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if !e.ReadOnly() {
		t.Fatal("read_only is off on the instance whose page flipped it fleet-wide")
	}
}
