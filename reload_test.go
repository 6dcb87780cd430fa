// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// load posts a new config to Caddy's admin endpoint, as `caddy reload` does.
func (c *caddyProc) load(t testing.TB, cfg map[string]any) {
	t.Helper()
	if code, body := c.tryLoad(t, cfg); code != 200 {
		t.Fatalf("POST /load: %d: %s", code, body)
	}
}

// tryLoad posts a new config and returns the answer.
func (c *caddyProc) tryLoad(t testing.TB, cfg map[string]any) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	writeJSONTo(t, &buf, cfg)
	admin := cfg["admin"].(map[string]any)["listen"].(string)
	resp, err := http.Post("http://"+admin+"/load", "application/json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// A reload keeps an unchanged process running; a changed definition stops
// the old process before its replacement starts; a removed one is stopped.
func TestReload(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	cfg := testConfig(t, httpPort, upPort, upstreamProc(s, "web", upPort))
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)

	// unchanged process, changed config (another route): same child
	srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)
	srv["routes"] = append([]any{map[string]any{
		"match":  []any{map[string]any{"path": []string{"/health"}}},
		"handle": []any{map[string]any{"handler": "static_response", "body": "ok"}},
	}}, srv["routes"].([]any)...)
	c.load(t, cfg)
	c.waitLog("process kept running across config change", 5*time.Second)
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))

	// a config that fails to load changes nothing
	procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
	procs[0]["stop_signal"] = "SIGNOPE"
	raw, _ := json.Marshal(cfg)
	resp, err := http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/load", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !bytes.Contains(body, []byte(`stop_signal \"SIGNOPE\"`)) {
		t.Fatalf("loading a bad config: %s %s", resp.Status, body)
	}
	delete(procs[0], "stop_signal")
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))

	// changed definition: the old one is gone before the new one starts
	procs[0]["command"] = append(procs[0]["command"].([]string), "-linger", "200ms")
	c.load(t, cfg)
	up.expect(t, "signal", 10*time.Second)
	oldExit := up.expect(t, "exit", 10*time.Second)
	next := s.next(t, 10*time.Second)
	up.dead(t, time.Second)
	if next.readyAt.Before(oldExit.time()) {
		t.Errorf("new process was ready at %s, before the old one exited at %s", next.readyAt, oldExit.time())
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", next.pid))

	// removed: stopped
	cfg["apps"].(map[string]any)["supervise"] = map[string]any{}
	c.load(t, cfg)
	next.dead(t, 5*time.Second)

	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}

func assertGet(t *testing.T, url, want string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(want)) {
		t.Fatalf("GET %s: %s %q, want 200 with %q", url, resp.Status, body, want)
	}
}

// A reload (POST /load, as `caddy reload` does, and SIGUSR1) that changes a
// `port auto` + `ready` process is blue/green: the new instance starts
// beside the old one, the dynamic upstream switches once it is ready, and
// only then does the old one get its stop signal. Under
// load: no failed request, none slower than the app's request time + 0.5 s.
// A broken release (it exits at boot, or never gets ready) fails the reload
// with its exit status and last output; the old instance (same PID) serves
// on and Caddy keeps running.
func TestReloadBlueGreen(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	script := `if [ "$RELEASE" = broken ]; then echo "boom: broken release"; exit 3; fi; ` +
		`if [ "$RELEASE" = hangs ]; then echo "booting forever"; exec sleep 60; fi; ` +
		`exec "$UPSTREAM" -events "$EVENTS" -delay 300ms`
	web := func(release string) map[string]any {
		return map[string]any{
			"name": "web", "command": []string{"sh", "-c", script}, "port": "auto",
			"ready": map[string]any{"http": ""}, "ready_timeout": "2s", "restart": "always",
			"env": map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()},
		}
	}
	cfg, c, up, l := serveUnderLoad(t, s, httpPort, web("v1"), 8)

	// a good release through SIGUSR1, which reloads the config file (Caddy
	// forgets the file once a config came through the admin API: first)
	cfg["apps"].(map[string]any)["supervise"] = map[string]any{"processes": []any{web("v2")}}
	writeJSON(t, c.config, cfg)
	c.signal(syscall.SIGUSR1)
	next := s.next(t, 10*time.Second)
	up.expect(t, "signal", 5*time.Second)
	up.dead(t, 5*time.Second)
	if st := status(t, cfg, "web"); st.PID != next.pid || st.State != stateReady {
		t.Errorf("after SIGUSR1: %+v, want the new instance %d ready", st, next.pid)
	}
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)
	up = next

	// a good release through POST /load, as `caddy reload` does
	cfg["apps"].(map[string]any)["supervise"] = map[string]any{"processes": []any{web("v3")}}
	c.load(t, cfg)
	next = s.next(t, 5*time.Second) // ready before the load returned
	sig := up.expect(t, "signal", 5*time.Second)
	up.dead(t, 5*time.Second)
	if st := status(t, cfg, "web"); st.PID != next.pid || st.State != stateReady {
		t.Errorf("after the reload: %+v, want the new instance %d ready", st, next.pid)
	}
	if starts := logTimes(t, c.logs.lines(`"msg":"the new instance is ready and serves"`)); len(starts) != 2 || sig.time().Before(starts[1]) {
		t.Errorf("the old instance got its signal at %v, before the new one was ready (%v)", sig.time(), starts)
	}
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)
	up = next

	// broken releases
	for _, tc := range []struct{ release, want string }{
		{"broken", `exit status 3; last output: boom: broken release`},
		{"hangs", `the new instance was not ready within ready_timeout 2s`},
	} {
		cfg["apps"].(map[string]any)["supervise"] = map[string]any{"processes": []any{web(tc.release)}}
		code, body := c.tryLoad(t, cfg)
		if code == 200 || !strings.Contains(body, tc.want) || !strings.Contains(body, `process \"web\"`) {
			t.Errorf("reload of a %s release: %d %s, want an error with %q", tc.release, code, body, tc.want)
		}
		if st := status(t, cfg, "web"); st.PID != up.pid || st.State != stateReady {
			t.Errorf("after the failed reload: %+v, want the old instance %d ready", st, up.pid)
		}
		l.waitOK(t, l.ok.Load()+50, 10*time.Second)
	}
	finishUnderLoad(t, c, l, 20*time.Millisecond+500*time.Millisecond, 10*time.Second)
}

// A reload that fails elsewhere (a new site's port is busy: the http app's
// Start fails) leaves a blue/green process as it was: same PID, still
// routed to, whichever app Caddy started first (repeated until both orders
// ran).
func TestReloadFailingElsewhereKeepsProcess(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	web := func(release string) map[string]any {
		return map[string]any{
			"name": "web", "command": []string{upstreamBin, "-events", s.addr()}, "port": "auto",
			"ready": map[string]any{"http": ""}, "env": map[string]string{"RELEASE": release},
		}
	}
	cfg, c, up, l := serveUnderLoad(t, s, httpPort, web("v1"), 4)

	failElsewhereUntilBothOrders(t, c, cfg, httpPort, web, func(attempt int, ranFirst bool) {
		if ranFirst {
			s.next(t, 5*time.Second).dead(t, 5*time.Second) // the candidate, stopped
		}
		if st := status(t, cfg, "web"); st.PID != up.pid || st.State != stateReady {
			t.Fatalf("attempt %d (supervise started first: %v): %+v, want the old instance %d ready", attempt, ranFirst, st, up.pid)
		}
		l.waitOK(t, l.ok.Load()+20, 10*time.Second)
	})
	noFailedRequests(t, c)
	l.stopNoFailures(t)
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// failElsewhereUntilBothOrders reloads Caddy (running cfg) to configs that
// change the process "web" (web(release)) and add a site on a busy port, so
// that the http app's Start fails: at least 10 times, and until both orders
// in which Caddy starts its apps ran (at most 40 times). Each reload must
// fail; after(attempt, ranFirst) checks what is left, ranFirst telling
// whether supervise started its new instance before the failure.
func failElsewhereUntilBothOrders(t *testing.T, c *caddyProc, cfg map[string]any, httpPort int,
	web func(release string) map[string]any, after func(attempt int, ranFirst bool)) {
	t.Helper()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	orders := map[bool]int{}
	for attempt := 1; attempt <= 40 && (orders[true] == 0 || orders[false] == 0 || attempt <= 10); attempt++ {
		bad := proxyToSupervised(t, httpPort, "web", web(fmt.Sprintf("failing-%d", attempt)))
		bad["admin"] = cfg["admin"]
		servers := bad["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
		servers["busy"] = map[string]any{"listen": []string{busy.Addr().String()}}
		candidatesBefore := len(c.logs.lines(`"msg":"starting a new instance"`))
		if code, body := c.tryLoad(t, bad); code == 200 {
			t.Fatalf("a reload onto a busy port succeeded: %s", body)
		}
		ranFirst := len(c.logs.lines(`"msg":"starting a new instance"`)) > candidatesBefore
		orders[ranFirst]++
		after(attempt, ranFirst)
	}
	t.Logf("failed reloads: supervise started first %d times, after the failure %d times", orders[true], orders[false])
	if orders[true] == 0 || orders[false] == 0 {
		t.Errorf("only one app order ran: %v", orders)
	}
}

// status is the admin API's status of one process.
func status(t testing.TB, cfg map[string]any, name string) Status {
	t.Helper()
	var st Status
	if code := adminDo(t, cfg, "GET", "/supervise/"+name, &st); code != 200 {
		t.Fatalf("GET /supervise/%s: %d", name, code)
	}
	return st
}

// serveUnderLoad starts Caddy proxying to the supervised process web (named
// "web", reporting to s), waits until it is ready, and puts it under load
// of 20 ms requests from clients, for reloads.
func serveUnderLoad(t testing.TB, s *sink, httpPort int, web map[string]any, clients int) (map[string]any, *caddyProc, *peer, *load) {
	t.Helper()
	cfg := proxyToSupervised(t, httpPort, "web", web)
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)
	c.waitLog(`"to":"ready"`, 10*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), clients)
	l.waitOK(t, 50, 10*time.Second)
	// each reload swaps Caddy's listening socket: the kernel resets the
	// connections queued on the old one, which Caddy never saw (see
	// TestReloadUnderLoadKeepsChild); the tests check Caddy's log for
	// failed requests instead
	l.churn.Store(true)
	return cfg, c, up, l
}

// Without port auto, a changed process must stop before the new one can
// bind its port. If the new one then fails (it exits at boot, or is never
// ready), or the reload fails elsewhere, the old definition is started again
// and the site comes back by itself; the reload fails. Requests meanwhile
// wait (lb_try_duration) instead of failing.
func TestReloadFixedPortRevives(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	script := `echo "release $RELEASE"; if [ "$RELEASE" = broken ]; then exit 3; fi; ` +
		`if [ "$RELEASE" = hangs ]; then exec sleep 60; fi; exec "$UPSTREAM" -events "$EVENTS" -listen "127.0.0.1:$PORT"`
	web := func(release string) map[string]any {
		return map[string]any{
			"name": "web", "command": []string{"sh", "-c", script}, "port": strconv.Itoa(upPort),
			"ready": map[string]any{"tcp": ""}, "ready_timeout": "2s", "restart": "always",
			"env": map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()},
		}
	}
	cfg, c, _, l := serveUnderLoad(t, s, httpPort, web("v1"), 4)
	// the busy-port failure is repeated until both app orders ran
	orders := map[bool]int{} // did the process stop for the new definition before the reload failed?
	type reload struct {
		release string
		busy    bool
	}
	reloads := []reload{{"broken", false}, {"hangs", false}}
	for i := 0; i < len(reloads) || (i < 40 && (orders[true] < 3 || orders[false] == 0 || i < 8)); i++ {
		if i >= len(reloads) {
			reloads = append(reloads, reload{fmt.Sprintf("v%d", i), true})
		}
		tc := reloads[i]
		next := proxyToSupervised(t, httpPort, "web", web(tc.release))
		next["admin"] = cfg["admin"]
		if tc.busy {
			servers := next["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
			servers["busy"] = map[string]any{"listen": []string{busy.Addr().String()}}
		}
		stopsBefore, revivedBefore := len(c.logs.lines(`"msg":"previous process stopped; starting the new definition"`)), countRevived(c)
		code, body := c.tryLoad(t, next)
		if code == 200 {
			t.Fatalf("reload %d (%s) succeeded: %s", i, tc.release, body)
		}
		if len(c.logs.lines(`"msg":"previous process stopped; starting the new definition"`)) == stopsBefore {
			orders[false]++ // the http app failed first: the process was not touched
			continue
		}
		orders[true]++
		if !tc.busy && !strings.Contains(body, "the previous definition was started again") {
			t.Errorf("reload %d (%s): %s, want an error that says the previous definition runs again", i, tc.release, body)
		}
		// the old definition runs again, and gets ready
		line := c.waitLogCount(`"msg":"the new definition did not take over: the previous one was started again"`, revivedBefore+1, 15*time.Second)
		var revived struct{ PID int }
		if err := json.Unmarshal([]byte(line), &revived); err != nil || revived.PID == 0 {
			t.Fatalf("%v: %s", err, line)
		}
		c.waitLog(fmt.Sprintf(`"to":"ready","pid":%d`, revived.PID), 10*time.Second)
		if st := status(t, cfg, "web"); st.PID != revived.PID {
			t.Errorf("after the failed reload %d: %+v, want the revived instance %d", i, st, revived.PID)
		}
		l.waitOK(t, l.ok.Load()+20, 15*time.Second)
	}
	t.Logf("failed reloads: the process was replaced first %d times, untouched %d times", orders[true], orders[false])
	noFailedRequests(t, c)
	if orders[true] < 3 || orders[false] == 0 {
		t.Errorf("only one app order ran: %v", orders)
	}
	l.stopNoFailures(t)
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

func countRevived(c *caddyProc) int {
	return len(c.logs.lines(`"msg":"the new definition did not take over: the previous one was started again"`))
}

// finishUnderLoad ends a test that ran Caddy under load: no request failed
// or was refused, none took longer than maxSlowest (if set), Caddy logged
// no failed request, and Caddy exits with 0 on SIGTERM within exitWithin.
// It logs the load's figures.
func finishUnderLoad(t testing.TB, c *caddyProc, l *load, maxSlowest, exitWithin time.Duration) {
	t.Helper()
	st := l.stopNoFailures(t)
	slowest := time.Duration(l.slowest.Load())
	t.Logf("load: %d ok, %d reset by Caddy's own listener swap, slowest %s", st.ok, st.unaccepted, slowest)
	if maxSlowest > 0 && slowest > maxSlowest {
		t.Errorf("the slowest request took %s", slowest)
	}
	noFailedRequests(t, c)
	c.signal(syscall.SIGTERM)
	if code := c.wait(exitWithin); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
}

// noFailedRequests fails the test if Caddy logged a failed request.
func noFailedRequests(t testing.TB, c *caddyProc) {
	t.Helper()
	if errs := c.logs.lines(`"http.log.error"`); len(errs) > 0 {
		t.Errorf("caddy logged %d failed requests; first: %s", len(errs), errs[0])
	}
}

// A reload that drops one process and adds another on the same fixed port
// (a default name that changed, `node` to `npm`) stops the dropped one
// before the new one starts; if the new one fails, the dropped one comes
// back and the reload fails.
func TestReloadPortMovesToAnotherName(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	proc := func(name, release string) map[string]any {
		script := `if [ "$RELEASE" = broken ]; then exit 3; fi; exec "$UPSTREAM" -events "$EVENTS" -listen "127.0.0.1:$PORT"`
		return map[string]any{
			"name": name, "command": []string{"sh", "-c", script}, "port": strconv.Itoa(upPort),
			"ready": map[string]any{"tcp": ""}, "ready_timeout": "2s",
			"env": map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()},
		}
	}
	cfg := proxyToSupervised(t, httpPort, "node", proc("node", "v1"))
	c := startCaddy(t, cfg)
	node := s.next(t, 10*time.Second)

	// the new one is broken: node comes back, the reload fails
	broken := proxyToSupervised(t, httpPort, "npm", proc("npm", "broken"))
	broken["admin"] = cfg["admin"]
	if code, body := c.tryLoad(t, broken); code == 200 {
		t.Fatalf("the reload to a broken npm succeeded: %s", body)
	}
	node.dead(t, 5*time.Second) // stopped to free the port
	revived := s.next(t, 10*time.Second)
	if st := status(t, cfg, "node"); st.PID != revived.pid {
		t.Errorf("after the failed reload: %+v, want node again (pid %d)", st, revived.pid)
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), "")

	// a good one: node stops first, npm binds the port
	good := proxyToSupervised(t, httpPort, "npm", proc("npm", "v2"))
	good["admin"] = cfg["admin"]
	c.load(t, good)
	revived.dead(t, 5*time.Second)
	npm := s.next(t, 10*time.Second)
	if st := status(t, good, "npm"); st.PID != npm.pid || st.State != stateReady {
		t.Errorf("after the reload: %+v, want npm (pid %d) ready", st, npm.pid)
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), "")
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}
