package neonsim

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgguard/pgguard/internal/localpg"
)

// These tests talk to the simulator with pgconn directly, never through
// pgguard, so that the simulator cannot agree with pgguard by accident.

var pg *localpg.Cluster

func TestMain(m *testing.M) {
	os.Exit(localpg.Main(m, localpg.Options{User: "app", Password: "secret", Database: "app"}, &pg))
}

const ep = "ep-quiet-sun-123456"

func start(t *testing.T, o Options) *Sim {
	t.Helper()
	o.Upstream = pg.Addr()
	if o.Endpoints == nil {
		o.Endpoints = []string{ep}
	}
	s, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// connect opens a direct pgconn connection to endpoint through s; extra
// are URL query parameters ("application_name=x").
func connect(t *testing.T, s *Sim, endpoint string, extra ...string) (*pgconn.PgConn, error) {
	t.Helper()
	u := s.URL(endpoint, "app", "secret", "app")
	for _, e := range extra {
		u += "&" + e
	}
	cfg, err := pgconn.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LookupFunc = s.LookupHost
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func mustConnect(t *testing.T, s *Sim, extra ...string) *pgconn.PgConn {
	t.Helper()
	c, err := connect(t, s, ep, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func query(c *pgconn.PgConn, sql string) (string, error) {
	rs, err := c.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(rs) == 0 || len(rs[len(rs)-1].Rows) == 0 {
		return "", nil
	}
	r := rs[len(rs)-1].Rows[0]
	return string(r[0]), nil
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRouting(t *testing.T) {
	s := start(t, Options{SuspendAfter: time.Minute})
	c := mustConnect(t, s, "application_name=routing", "search_path=elsewhere", "DateStyle=SQL")
	for sql, want := range map[string]string{
		"SHOW application_name": "routing", // kept
		"SHOW search_path":      `"$user", public`,
		"SHOW DateStyle":        "ISO, MDY", // dropped: the server's default
	} {
		if got, err := query(c, sql); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", sql, got, err, want)
		}
	}

	// Without SNI (an IP address), options=endpoint=... chooses the endpoint
	// and is not passed on; other options are.
	cfg, err := pgconn.ParseConfig("postgres://app:secret@" + s.Addr() + "/app?sslmode=require&options=" +
		"endpoint%3D" + ep + "%20-c%20work_mem%3D7MB")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pgconn.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := query(c2, "SHOW work_mem"); err != nil || got != "7MB" {
		t.Errorf("work_mem via options = %q, %v", got, err)
	}
	c2.Close(context.Background())

	cfg.RuntimeParams["options"] = ""
	_, err = pgconn.ConnectConfig(context.Background(), cfg)
	if pgCode(err) != "XX000" || !strings.Contains(err.Error(), "Endpoint ID is not specified") {
		t.Errorf("no endpoint: %v", err)
	}
	_, err = connect(t, s, "ep-nowhere-000000")
	if pgCode(err) != "XX000" || !strings.Contains(err.Error(), "could not be found") {
		t.Errorf("unknown endpoint: %v", err)
	}
	plain := *cfg
	plain.TLSConfig = nil
	plain.Fallbacks = nil
	plain.RuntimeParams = map[string]string{"options": "endpoint=" + ep}
	if _, err = pgconn.ConnectConfig(context.Background(), &plain); err == nil || !strings.Contains(err.Error(), "insecure") {
		t.Errorf("without TLS: %v", err)
	}
	// The certificate is the test CA's, for the endpoint's name.
	if _, err := connect(t, s, ep); err != nil {
		t.Errorf("verify-full: %v", err)
	}
}

func TestSuspend(t *testing.T) {
	const S = 300 * time.Millisecond
	s := start(t, Options{SuspendAfter: S})
	e := s.Endpoint(ep)

	// An open idle session does not keep the compute awake: it is
	// terminated with 57P01.
	idle := mustConnect(t, s)
	if _, err := query(idle, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a suspend", 5*S, func() bool { return !e.Awake() })
	if _, err := query(idle, "SELECT 1"); pgCode(err) != "57P01" {
		t.Fatalf("query on a suspended compute: %v, want 57P01", err)
	}

	// A running query and a transaction block held open keep it awake.
	c := mustConnect(t, s)
	if _, err := query(c, "SELECT pg_sleep(0.9)"); err != nil {
		t.Fatalf("a query longer than suspend_after: %v", err)
	}
	if _, err := query(c, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * S)
	if !e.Awake() {
		t.Fatal("suspended while a session was idle in a transaction block")
	}
	if _, err := query(c, "COMMIT"); err != nil {
		t.Fatalf("COMMIT after idling in a transaction: %v", err)
	}
	waitFor(t, "a suspend after COMMIT", 5*S, func() bool { return !e.Awake() })
	l := e.Ledger()
	if l.Suspends != 2 || len(l.Wakes) != 2 || l.Sessions != 2 {
		t.Errorf("ledger: %d suspends, %d wakes, %d sessions; want 2, 2, 2", l.Suspends, len(l.Wakes), l.Sessions)
	}
	// The second awake interval covers the pg_sleep, 3 S in a transaction
	// and S after COMMIT.
	if iv := l.Awake[1]; iv.End.Sub(iv.Start) < 900*time.Millisecond+4*S {
		t.Errorf("second awake interval %v, want at least %v", iv.End.Sub(iv.Start), 900*time.Millisecond+4*S)
	}
}

func TestColdStart(t *testing.T) {
	const cold = 400 * time.Millisecond
	s := start(t, Options{SuspendAfter: time.Minute, ColdStart: cold})
	// Five connections arrive together: one wake-up, all wait for it.
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	t0 := time.Now()
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := connect(t, s, ep, "application_name=cold"+string(rune('0'+i)))
			if err == nil {
				_, err = query(c, "SELECT 1")
				c.Close(context.Background())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if d := time.Since(t0); d < cold {
		t.Errorf("connections answered after %v, before the cold start of %v ended", d, cold)
	}
	l := s.Endpoint(ep).Ledger()
	if len(l.Wakes) != 1 || l.Sessions != 5 || l.Wakes[0].ColdStart != cold || !strings.HasPrefix(l.Wakes[0].Application, "cold") {
		t.Errorf("ledger: %+v", l)
	}
	if iv := l.Awake[0]; !iv.Start.Equal(l.Wakes[0].At) {
		t.Errorf("awake from %v, the wake began at %v: the cold start is awake time", iv.Start, l.Wakes[0].At)
	}
	// Awake: the next connection does not wait.
	t1 := time.Now()
	mustConnect(t, s)
	if d := time.Since(t1); d >= cold {
		t.Errorf("a connection to an awake compute took %v", d)
	}
}

func TestLedger(t *testing.T) {
	const S = 250 * time.Millisecond
	s := start(t, Options{SuspendAfter: S, ComputeUnits: 2})
	e := s.Endpoint(ep)
	c := mustConnect(t, s, "application_name=poller", "user=app")
	for range 3 {
		if _, err := query(c, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	// Extended protocol: one Execute each.
	for range 2 {
		if _, err := c.ExecParams(context.Background(), "SELECT $1::int", [][]byte{[]byte("1")}, nil, nil, nil).Close(); err != nil {
			t.Fatal(err)
		}
	}
	tq := time.Now()
	waitFor(t, "a suspend", 10*S, func() bool { return !e.Awake() })
	l := e.Ledger()
	if l.Queries != 5 {
		t.Errorf("queries %d, want 5", l.Queries)
	}
	if len(l.Wakes) != 1 || l.Wakes[0].Cause() != "poller/app" {
		t.Errorf("wakes %+v, want one by poller/app", l.Wakes)
	}
	if l.SessionsBy["poller/app"] != 1 || l.Peak != 1 {
		t.Errorf("sessions by %v, peak %d", l.SessionsBy, l.Peak)
	}
	iv := l.Awake[0]
	if iv.End.Before(tq.Add(S-50*time.Millisecond)) || iv.End.Sub(tq) > S+50*time.Millisecond {
		t.Errorf("suspended %v after the last query, want suspend_after %v", iv.End.Sub(tq), S)
	}
	if want := l.AwakeTime.Seconds() * 2; l.CUSeconds != want || l.AwakeTime != iv.End.Sub(iv.Start) {
		t.Errorf("CU-seconds %v, awake %v; want %v, %v", l.CUSeconds, l.AwakeTime, want, iv.End.Sub(iv.Start))
	}
	// Suspended, the ledger stands still.
	time.Sleep(2 * S)
	if l2 := e.Ledger(); l2.AwakeTime != l.AwakeTime {
		t.Errorf("awake time grew while suspended: %v -> %v", l.AwakeTime, l2.AwakeTime)
	}
}

func TestLimitsAndSwitches(t *testing.T) {
	s := start(t, Options{SuspendAfter: time.Minute, MaxConnections: 2})
	e := s.Endpoint(ep)
	a := mustConnect(t, s)
	mustConnect(t, s)
	if _, err := connect(t, s, ep); pgCode(err) != "53300" || !strings.Contains(err.Error(), MsgTooManyClients) {
		t.Errorf("third connection: %v, want 53300", err)
	}
	for _, sw := range []struct {
		name string
		set  func(bool)
		msg  string
	}{
		{"quota", e.SetQuotaExceeded, MsgQuotaExceeded},
		{"disabled", e.SetDisabled, MsgEndpointDisabled},
		{"project suspended", e.SetProjectSuspended, MsgProjectSuspended},
	} {
		sw.set(true)
		if _, err := query(a, "SELECT 1"); pgCode(err) != "57P01" {
			t.Errorf("%s: open session got %v, want 57P01", sw.name, err)
		}
		_, err := connect(t, s, ep)
		if pgCode(err) != "XX000" || !strings.Contains(err.Error(), sw.msg) {
			t.Errorf("%s: connect got %v", sw.name, err)
		}
		sw.set(false)
		if a, err = connect(t, s, ep); err != nil {
			t.Fatalf("%s cleared: %v", sw.name, err)
		}
		defer a.Close(context.Background())
	}
	if err := s.Refuse(true); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, s, ep); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("refusing: %v, want connection refused", err)
	}
	if err := s.Refuse(false); err != nil {
		t.Fatal(err)
	}
	if _, err := query(a, "SELECT 1"); err != nil {
		t.Errorf("a session open before the refusal: %v", err)
	}
	if c, err := connect(t, s, ep); err != nil {
		t.Errorf("after the refusal: %v", err)
	} else {
		c.Close(context.Background())
	}
}

// TestCancel: a CancelRequest (plain TCP, as libpq and pgconn send it)
// reaches the PostgreSQL under the compute.
func TestCancel(t *testing.T) {
	s := start(t, Options{SuspendAfter: time.Minute})
	c := mustConnect(t, s)
	done := make(chan error, 1)
	go func() {
		_, err := query(c, "SELECT pg_sleep(10)")
		done <- err
	}()
	waitFor(t, "the query to run", 5*time.Second, func() bool { return s.Endpoint(ep).Ledger().Queries == 1 })
	time.Sleep(50 * time.Millisecond)
	if err := c.CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if pgCode(err) != "57014" {
			t.Errorf("cancelled query: %v, want 57014", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancel did not reach the server")
	}
}
