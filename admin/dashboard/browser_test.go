package dashboard_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgguard/pgguard/config"
	"github.com/pgguard/pgguard/internal/localpg"
)

// browser starts Debian's chromium headless, with a fresh profile and the
// flags a machine without internet needs, until the test ends. It returns
// the tab's context and the console messages seen so far. Without chromium
// the test is skipped, or fails when CI is set.
func browser(t *testing.T) (context.Context, func() []chromedp.ConsoleMessage) {
	t.Helper()
	path, err := osexec.LookPath("chromium")
	if err != nil {
		path, err = osexec.LookPath("chromium-browser")
	}
	localpg.Require(t, err)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser process to exit
	})
	var mu sync.Mutex
	var msgs []chromedp.ConsoleMessage
	console := chromedp.Console(ctx) // starts the browser and subscribes
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range console {
			if err != nil {
				return
			}
			mu.Lock()
			msgs = append(msgs, m)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ctx, func() []chromedp.ConsoleMessage {
		mu.Lock()
		defer mu.Unlock()
		return append([]chromedp.ConsoleMessage(nil), msgs...)
	}
}

// do runs browser actions, failing the test on an error.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitJS waits until the expression is truthy in the page.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(20*time.Second), chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
}

// Expressions reading the page.
const (
	jsPoolQueries = `Number(document.querySelector('[data-db="app"] [data-k="queries"] b')?.textContent.replace(/,/g, '') || -1)`
	jsProbeCalls  = `Number([...document.querySelectorAll('#queries tr[data-fp]')].find((tr) => tr.querySelector('td.q').textContent.includes('browser_probe'))?.querySelector('[data-k="calls"]').textContent.replace(/,/g, '') ?? -1)`
)

// artifacts is where the screenshot goes: $PGGUARD_ARTIFACTS, else
// test-artifacts/ at the top of the repository.
func artifacts(t *testing.T) string {
	dir := os.Getenv("PGGUARD_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// load runs a small mixed workload through pgguard until ctx ends: a web
// application, a polling worker, a slow report, an occasional error, and a
// script that leaves its transaction open.
func load(ctx context.Context, t *testing.T, e *env) *sync.WaitGroup {
	setup := e.connect(t, "setup")
	mustExec(t, setup, "CREATE TABLE IF NOT EXISTS dash_items (id int PRIMARY KEY, name text)")
	mustExec(t, setup, "INSERT INTO dash_items SELECT g, 'item ' || g FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING")
	leaky := e.connect(t, "nightly-script")
	mustExec(t, leaky, "BEGIN")
	mustExec(t, leaky, "SELECT count(*) FROM dash_items")
	var wg sync.WaitGroup
	run := func(app string, every time.Duration, sql func(i int) string) {
		conn := e.connect(t, app)
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				exec(conn, sql(i)) // errors are part of the load
				time.Sleep(every)
			}
		})
	}
	for w := range 3 {
		run("web", 10*time.Millisecond, func(i int) string {
			if i%200 == 199 {
				return "SELECT 1/0"
			}
			return fmt.Sprintf("SELECT id, name FROM dash_items WHERE id = %d", (i*7+w)%1000+1)
		})
	}
	run("web", 20*time.Millisecond, func(i int) string { return "SELECT count(*) FROM dash_items WHERE name LIKE 'item 1%'" })
	run("availability-worker", 100*time.Millisecond, func(i int) string { return "SELECT count(*) FROM dash_items WHERE id > 990" })
	run("reports", 400*time.Millisecond, func(i int) string { return "SELECT pg_sleep(0.03)" })
	return &wg
}

// TestBrowser drives the page in a real browser: it loads without and with
// credentials, shows live data that follows the queries run, flips
// read-only as an admin and is refused without credentials, and leaves the
// console free of errors.
func TestBrowser(t *testing.T) {
	cfg := testConfig()
	cfg.Pool.LeakWarnAfter = config.D(time.Second)
	e := start(t, cfg)
	ctx, console := browser(t)
	lctx, stop := context.WithCancel(context.Background())
	wg := load(lctx, t, e)
	defer func() { stop(); wg.Wait() }()

	// Loopback, admin.http_auth = "auto": the page loads without credentials.
	do(t, ctx, "load the page", chromedp.Navigate(e.http.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`[data-db="app"]`)))
	probe := e.connect(t, "browser-test")
	for i := range 5 {
		mustExec(t, probe, fmt.Sprintf("SELECT id AS browser_probe FROM dash_items WHERE id = %d", i+1))
	}
	waitJS(t, ctx, "the probe shape, the pool and the budget", jsProbeCalls+` === 5 && `+jsPoolQueries+` > 0 && `+
		`document.querySelector('#budget [data-k="cu_hours"]')?.textContent.includes('of 100') && !!document.querySelector('#budget svg[data-chart="budget"]') && `+
		`/[1-9]/.test(document.querySelector('#budget [data-k="awake"]').textContent)`)

	// The result cache's rule counts its hits.
	for range 5 {
		mustExec(t, probe, "SELECT name FROM dash_items WHERE id = 1")
	}
	waitJS(t, ctx, "4 hits and a miss in the cache panel", `document.querySelector('#cache tr[data-rule="items"] [data-k="hits"]')?.textContent === '4' && !document.querySelector('#cache').hidden`)

	// Counts rise after more queries.
	before := eval[int](t, ctx, jsPoolQueries)
	for i := range 20 {
		mustExec(t, probe, fmt.Sprintf("SELECT id AS browser_probe FROM dash_items WHERE id = %d", i+1))
	}
	waitJS(t, ctx, "25 probe calls and more pool queries", fmt.Sprintf(`%s === 25 && %s >= %d`, jsProbeCalls, jsPoolQueries, before+20))
	waitJS(t, ctx, "the charts and the applications", `document.querySelector('svg[data-chart="qps"] polyline')?.getAttribute('points').split(' ').length > 5 && `+
		`!!document.querySelector('#apps tr[data-app="availability-worker"]') && !!document.querySelector('#pollers tr[data-app="availability-worker"]') && `+
		`document.querySelector('#leaks').textContent.includes('nightly-script')`)

	// Read-only from the page: refused without credentials, then with a
	// wrong password, then flipped by the admin.
	do(t, ctx, "click Turn on", chromedp.Click(chromedp.CSS(`[data-switch="read_only"] button[data-action="on"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#login`)))
	waitJS(t, ctx, "the refusal", `document.querySelector('#switch-msg').textContent.startsWith('refused')`)
	if e.ReadOnly() {
		t.Fatal("the page flipped read-only without credentials")
	}
	do(t, ctx, "sign in with a wrong password", chromedp.SetValue(chromedp.CSS(`#login-user`), adminUser), chromedp.SetValue(chromedp.CSS(`#login-pass`), "wrong"),
		chromedp.Click(chromedp.CSS(`#login-go`)))
	waitJS(t, ctx, "the second refusal", `document.querySelector('#login-why').textContent.startsWith('Refused')`)
	if e.ReadOnly() {
		t.Fatal("the page flipped read-only with a wrong password")
	}
	do(t, ctx, "sign in as admin", chromedp.SetValue(chromedp.CSS(`#login-user`), adminUser), chromedp.SetValue(chromedp.CSS(`#login-pass`), adminPass),
		chromedp.Click(chromedp.CSS(`#login-go`)))
	waitJS(t, ctx, "read-only on in the page", `document.querySelector('#badges').textContent.includes('READ-ONLY') && !!document.querySelector('[data-switch="read_only"] button[data-action="off"]')`)
	if !e.ReadOnly() {
		t.Fatal("read-only is off after the admin turned it on")
	}
	if err := exec(probe, "CREATE TABLE browser_ro (id int)"); err == nil || !strings.Contains(err.Error(), "25006") {
		t.Errorf("a write after the page turned read-only on: %v, want 25006", err)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(artifacts(t), "dashboard.png")
	if err := os.WriteFile(file, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d KiB)", file, len(shot)>>10)
	weight := eval[[]float64](t, ctx, `(() => { const r = performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'));
		const first = r.filter((e) => !e.name.includes('/dashboard/state') && !e.name.includes('/switches/'));
		const state = r.filter((e) => e.name.includes('/dashboard/state?since='));
		const st = state.map((e) => e.serverTiming.find((s) => s.name === 'build')?.duration || 0).sort((a, b) => a - b);
		return [first.reduce((n, e) => n + e.transferSize, 0), first.reduce((n, e) => n + e.decodedBodySize, 0),
			state.reduce((n, e) => n + e.transferSize, 0) / Math.max(state.length, 1), st[Math.floor(st.length / 2)] || 0, st[st.length - 1] || 0, state.length]; })()`)
	t.Logf("page: %.0f bytes transferred (%.0f decoded) for HTML, script and style; updates: %.0f bytes each on average, server time median %.2f ms, max %.2f ms over %.0f updates",
		weight[0], weight[1], weight[2], weight[3], weight[4], weight[5])

	// With the credentials kept in memory, turning it off needs no form.
	do(t, ctx, "click Turn off", chromedp.Click(chromedp.CSS(`[data-switch="read_only"] button[data-action="off"]`)))
	waitJS(t, ctx, "read-only off in the page", `!!document.querySelector('[data-switch="read_only"] button[data-action="on"]')`)
	if e.ReadOnly() {
		t.Fatal("read-only still on")
	}

	// admin.http_auth = "always": no page without credentials; with them,
	// the page loads, and the browser's credentials flip the switch.
	always := *e.Config()
	always.Admin.HTTPAuth = "always"
	if _, err := e.Reload(&always); err != nil {
		t.Fatal(err)
	}
	// A headless browser cannot show the login dialog: the challenge ends
	// the navigation with ERR_INVALID_AUTH_CREDENTIALS, and no page loads.
	if err := chromedp.Do(ctx, chromedp.Navigate(e.http.URL+"/")); err == nil || !strings.Contains(err.Error(), "ERR_INVALID_AUTH_CREDENTIALS") {
		t.Fatalf("load without credentials under http_auth = always: %v, want the auth challenge to fail the navigation", err)
	}
	if eval[bool](t, ctx, `!!document.querySelector('#pools')`) {
		t.Fatal("the dashboard shows without credentials under http_auth = always")
	}
	u, _ := url.Parse(e.http.URL)
	u.User = url.UserPassword(adminUser, adminPass)
	do(t, ctx, "load with credentials", chromedp.Navigate(u.String()+"/"), chromedp.WaitVisible(chromedp.CSS(`[data-db="app"]`)))
	before = eval[int](t, ctx, jsProbeCalls)
	mustExec(t, probe, "SELECT id AS browser_probe FROM dash_items WHERE id = 1")
	waitJS(t, ctx, "live data with credentials", fmt.Sprintf(`%s === %d`, jsProbeCalls, before+1))
	do(t, ctx, "click Turn on as admin", chromedp.Click(chromedp.CSS(`[data-switch="read_only"] button[data-action="on"]`)))
	waitJS(t, ctx, "read-only on", `document.querySelector('#badges').textContent.includes('READ-ONLY')`)
	if !e.ReadOnly() || eval[bool](t, ctx, `!document.querySelector('#login').hidden`) {
		t.Fatalf("read-only %t after a click with the browser's admin credentials", e.ReadOnly())
	}

	// The console: no exception, no console.error, no warning; the only
	// errors are the three refusals this test provoked (two POSTs, one page).
	refusals := 0
	for _, m := range console() {
		switch {
		case m.Type == chromedp.ConsoleError && m.Source == "network" && strings.Contains(m.Text, "401"):
			refusals++
		case m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException():
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
	if refusals != 3 {
		t.Errorf("console: %d 401 refusals, want 3: %v", refusals, console())
	}
}

// TestBrowserAdvice: the Advice panel shows the advisor's findings for the
// traffic run (a cacheable read run on every "page load", a worker's N+1
// loop) and copies a rule's TOML.
func TestBrowserAdvice(t *testing.T) {
	e := start(t, testConfig())
	ctx, console := browser(t)
	setup := e.connect(t, "setup")
	mustExec(t, setup, "CREATE TABLE IF NOT EXISTS advice_branding (tenant_id int PRIMARY KEY, color text)")
	mustExec(t, setup, "INSERT INTO advice_branding SELECT g, 'blue' FROM generate_series(1, 5) g ON CONFLICT DO NOTHING")
	web := e.connect(t, "web")
	for i := range 24 { // page loads, apart: no burst, no loop
		mustExec(t, web, fmt.Sprintf("SELECT color FROM advice_branding WHERE tenant_id = %d", i%5+1))
		time.Sleep(110 * time.Millisecond)
	}
	worker := e.connect(t, "availability-worker")
	for range 3 {
		mustExec(t, worker, "SELECT tenant_id FROM advice_branding ORDER BY tenant_id")
		for id := 1; id <= 5; id++ {
			mustExec(t, worker, fmt.Sprintf("UPDATE advice_branding SET color = 'blue' WHERE tenant_id = %d", id))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the query log's writer hands the records over every 20 ms

	do(t, ctx, "load the page", chromedp.Navigate(e.http.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#advice .body table`)))
	waitJS(t, ctx, "the cache candidate and the loop", `document.querySelector('#advice tr[data-fp] td.q')?.textContent === 'SELECT color FROM advice_branding WHERE tenant_id = $1' && `+
		`[...document.querySelectorAll('#advice tr[data-loop]')].length === 1 && document.querySelector('#advice tr[data-loop]').textContent.startsWith('availability-workerUPDATE advice_branding') && `+
		`document.querySelector('#advice tr[data-loop]').textContent.includes('SELECT tenant_id FROM advice_branding ORDER BY tenant_id (5 rows)')`)
	// Copy the candidate's rule: the clipboard gets the TOML shown.
	do(t, ctx, "click Copy", chromedp.Evaluate[chromedp.Void](`window.copied = null; navigator.clipboard.writeText = (s) => { window.copied = s; return Promise.resolve(); }`),
		chromedp.Click(chromedp.CSS(`#advice [data-copy="cache"]`)))
	waitJS(t, ctx, "the copied rule", `window.copied !== null && document.querySelector('#advice [data-copy="cache"]').textContent === 'Copied'`)
	copied := eval[string](t, ctx, `window.copied`)
	if shown := eval[string](t, ctx, `document.querySelector('#advice [data-copy="cache"] + pre').textContent`); copied != shown ||
		!strings.Contains(copied, "[[cache]]\n") || !strings.Contains(copied, `query = "SELECT color FROM advice_branding WHERE tenant_id = $1"`) {
		t.Errorf("copied %q, shown %q", copied, shown)
	}
	// Pasted into a config file, it loads as one more [[cache]] rule.
	file := filepath.Join(t.TempDir(), "pgguard.toml")
	os.WriteFile(file, []byte("[databases.app]\nprimary = \"postgres://app:pw@127.0.0.1/app\"\n\n"+copied), 0o600)
	if cfg, err := config.Load(file, func(string) string { return "" }); err != nil || len(cfg.Cache) != 1 || cfg.Cache[0].Query != "SELECT color FROM advice_branding WHERE tenant_id = $1" {
		t.Errorf("the copied rule does not load: %v", err)
	}
	for _, m := range console() {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
}
