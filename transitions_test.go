// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Transitions that meet (issue 10, item 6): one transition of a process runs
// at a time, and Caddy's exit during one stops every instance.

// gatedWeb is a blue/green process of the example upstream that boots in
// 300 ms; while a gate is closed (see newGate), an instance that starts
// stays in its boot until the gate opens.
func gatedWeb(s *sink, g gate, release string) map[string]any {
	script := `if [ -p "$GATE" ]; then echo "waiting at the gate"; read _ < "$GATE"; fi; exec "$UPSTREAM" -events "$EVENTS" -delay 300ms`
	return map[string]any{
		"name": "web", "command": []string{"sh", "-c", script}, "port": "auto",
		"ready": map[string]any{"http": ""}, "ready_timeout": "60s", "stop_timeout": "2s", "restart": "always",
		"env": map[string]string{"GATE": string(g), "RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()},
	}
}

// gate is a path where a named pipe stands while the gate is closed: a
// process that reads it waits until the test opens the gate.
type gate string

func newGate(t testing.TB) gate { return gate(filepath.Join(t.TempDir(), "gate")) }

func (g gate) close(t testing.TB) {
	t.Helper()
	if err := syscall.Mkfifo(string(g), 0o600); err != nil {
		t.Fatal(err)
	}
}

// open lets the process waiting at the gate go on (its read sees EOF), and
// removes the gate. It blocks until a process waits at it.
func (g gate) open(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(string(g), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(string(g))
	f.Close()
}

// An admin restart and a reload of the same process are serialised: a
// reload that comes during a restart waits for it and then replaces the
// instance the restart started; a restart that comes during a reload's
// replacement gets 409. Afterwards the admin API, the metrics and the
// dynamic upstream name the same instance; every replaced instance is
// gone; no request failed.
func TestAdminRestartAndReloadSerialised(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	g := newGate(t)
	cfg, c, up, l := serveUnderLoad(t, s, httpPort, gatedWeb(s, g, "v1"), 8)
	withRelease := func(release string) map[string]any {
		next := proxyToSupervised(t, httpPort, "web", gatedWeb(s, g, release))
		next["admin"] = cfg["admin"]
		return next
	}

	// a reload during an admin restart waits for it
	g.close(t)
	restarted := make(chan Status, 1)
	go func() {
		var st Status
		if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &st); code != 200 {
			t.Errorf("admin restart: %d", code)
		}
		restarted <- st
	}()
	c.waitLogCount(`"msg":"starting a new instance"`, 1, 5*time.Second)
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		if code, body := c.tryLoad(t, withRelease("v2")); code != 200 {
			t.Errorf("reload during a restart: %d %s", code, body)
		}
	}()
	c.waitLog(`"msg":"waiting at the gate"`, 5*time.Second)
	c.waitLog(`"msg":"waiting for the restart of the process that runs"`, 5*time.Second)
	if got := len(c.logs.lines(`"msg":"starting a new instance"`)); got != 1 {
		t.Errorf("%d instances started while the restart's instance boots, want 1", got)
	}
	g.open(t)
	byRestart := s.next(t, 10*time.Second)
	byReload := s.next(t, 10*time.Second)
	<-reloaded
	if st := <-restarted; st.PID != byRestart.ppidOrSelf() {
		t.Errorf("the restart answered %+v, want its new instance %d", st, byRestart.ppidOrSelf())
	}
	// (the answers can overtake Caddy's log, which comes through a pipe)
	c.waitLogCount(`"msg":"the new instance is ready and serves"`, 2, 5*time.Second)
	readyAt := logTimes(t, c.logs.lines(`"msg":"the new instance is ready and serves"`))
	startedAt := logTimes(t, c.logs.lines(`"msg":"starting a new instance"`))
	if len(readyAt) != 2 || len(startedAt) != 2 || startedAt[1].Before(readyAt[0]) {
		t.Errorf("the reload's instance started at %v, before the restart's was ready (%v)", startedAt, readyAt)
	}
	up.dead(t, 5*time.Second)
	byRestart.dead(t, 5*time.Second)

	// a restart during a reload's replacement gets 409
	g.close(t)
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		if code, body := c.tryLoad(t, withRelease("v3")); code != 200 {
			t.Errorf("reload: %d %s", code, body)
		}
	}()
	c.waitLogCount(`"msg":"waiting at the gate"`, 2, 5*time.Second)
	var apiErr struct{ Error string }
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr); code != 409 || !strings.Contains(apiErr.Error, "a restart or a reload of it runs") {
		t.Errorf("a restart during a reload: %d %q, want 409", code, apiErr.Error)
	}
	g.open(t)
	byReload3 := s.next(t, 10*time.Second)
	<-reloadDone
	byReload.dead(t, 5*time.Second)

	// everyone agrees on the instance that serves
	st := status(t, cfg, "web")
	if st.PID != byReload3.ppidOrSelf() || st.State != stateReady {
		t.Errorf("status %+v, want pid %d ready", st, byReload3.ppidOrSelf())
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", byReload3.pid))
	if started := metricValue(t, cfg, `caddy_supervise_process_start_time_seconds{name="web"}`); st.StartedAt == nil ||
		started != float64(st.StartedAt.UnixNano())/1e9 {
		t.Errorf("metrics: start time %f, want %v", started, st.StartedAt)
	}
	finishUnderLoad(t, c, l, 0, 10*time.Second)
}

// metricValue reads one series from the admin endpoint's /metrics.
func metricValue(t testing.TB, cfg map[string]any, series string) float64 {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/metrics", nil)
	req.Close = true // as adminDo
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", series)
	return 0
}

// Caddy's exit (SIGTERM) during a reload that waits for a new instance, and
// during an admin restart: the new instance, which serves nothing yet, is
// stopped at once and the reload or restart fails; the instance that
// serves gets the exit sequence once (drain, then its stop signal), for the
// config that is current; Caddy exits without waiting for ready_timeout;
// no request failed, and nothing is left behind (TestMain checks).
func TestExitDuringTransition(t *testing.T) {
	for _, how := range []string{"reload", "admin restart"} {
		t.Run(how, func(t *testing.T) {
			s := newSink(t)
			httpPort := freePort(t)
			g := newGate(t)
			cfg, c, up, l := serveUnderLoad(t, s, httpPort, gatedWeb(s, g, "v1"), 4)
			g.close(t)
			admin := "http://" + cfg["admin"].(map[string]any)["listen"].(string)
			answer := inBackground(func() (*http.Response, error) {
				if how == "reload" {
					next := proxyToSupervised(t, httpPort, "web", gatedWeb(s, g, "v2"))
					next["admin"] = cfg["admin"]
					var buf strings.Builder
					writeJSONTo(t, &buf, next)
					return http.Post(admin+"/load", "application/json", strings.NewReader(buf.String()))
				}
				return http.Post(admin+"/supervise/web/restart", "", nil)
			})
			c.waitLog(`"msg":"waiting at the gate"`, 5*time.Second)
			c.signal(syscall.SIGTERM)
			up.expect(t, "signal", 10*time.Second)
			up.expect(t, "exit", 10*time.Second)
			if code := c.wait(10 * time.Second); code != 0 {
				t.Errorf("caddy exit code %d", code)
			}
			want := "400 "
			if how == "admin restart" {
				want = "409 "
			}
			if got := <-answer; !strings.HasPrefix(got, want) || !strings.Contains(got, "Caddy is exiting") {
				t.Errorf("the %s answered %q, want %q and Caddy is exiting", how, got, want)
			}
			if n := len(c.logs.lines(fmt.Sprintf(`"msg":"stopping process","pid":%d`, up.pid))); n != 1 {
				t.Errorf("the serving instance was stopped %d times, want once", n)
			}
			drained := c.logs.lines(`"msg":"drain over"`)
			stopped := c.logs.lines(fmt.Sprintf(`"msg":"stopping process","pid":%d`, up.pid))
			if len(drained) != 1 || len(stopped) != 1 || logTimes(t, stopped)[0].Before(logTimes(t, drained)[0]) {
				t.Errorf("the serving instance was not stopped once after the drain:\n%v\n%v", drained, stopped)
			}
			if st := l.stop(); len(st.failures) > 0 {
				t.Errorf("%d requests failed; first: %s", len(st.failures), st.failures[0])
			}
			noFailedRequests(t, c)
		})
	}
}

// inBackground runs an HTTP request in the background; the channel gets
// "STATUS BODY", or the error.
func inBackground(do func() (*http.Response, error)) <-chan string {
	answer := make(chan string, 1)
	go func() {
		resp, err := do()
		if err != nil {
			answer <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answer <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	return answer
}

// Issue 18's defects, each a test that fails on the engine before it.

// A replaced instance that dies while it retires (after a blue/green
// reload, it finishes the old config's requests) ends nothing: with the
// defaults (restart never, on_end stop_caddy), Caddy stays up, nothing is
// restarted, the new instance serves (defect 1).
func TestRetiringInstanceDeathEndsNothing(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	web := func(release string) map[string]any {
		return map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr()}, "port": "auto",
			"ready": map[string]any{"http": ""}, "env": map[string]string{"RELEASE": release}}
	}
	cfg := proxyToSupervised(t, httpPort, "web", web("v1"))
	c := startCaddy(t, cfg)
	old := s.next(t, 10*time.Second)
	c.waitLog(`"to":"ready"`, 10*time.Second)
	// a request of the old config keeps its servers, and the old instance, busy
	slow := inBackground(func() (*http.Response, error) {
		return http.Get(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=5s&report", httpPort))
	})
	old.expect(t, "request", 5*time.Second)
	next := proxyToSupervised(t, httpPort, "web", web("v2"))
	next["admin"] = cfg["admin"]
	c.load(t, next)
	up := s.next(t, 10*time.Second)
	select {
	case e := <-old.events:
		t.Fatalf("the replaced instance got %+v while the old config's request runs", e)
	default: // it retires: it finishes the old config's request
	}
	if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil { // the OOM killer, say
		t.Fatal(err)
	}
	old.dead(t, 5*time.Second)
	<-slow // it was inside the killed instance
	c.waitLog(fmt.Sprintf(`"msg":"process exited","pid":%d`, old.pid), 5*time.Second)
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))
	if st := status(t, next, "web"); st.PID != up.pid || st.State != stateReady {
		t.Errorf("after the retiring instance died: %+v, want the new one %d ready", st, up.pid)
	}
	for _, msg := range []string{"process ended", "restarting process", "exited unexpectedly"} {
		if lines := c.logs.lines(msg); len(lines) > 0 {
			t.Errorf("the retiring instance's death counted: %s", lines[0])
		}
	}
	assertAdminUp(t, c)
	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
}

// SIGTERM during a reload that replaces a fixed-port process in place: the
// old instance is gone, the new one is booting. It boots on and serves the
// exit's drain: under load no request fails; the reload fails with "Caddy
// is exiting" (defect 2c).
func TestExitDuringInPlaceReload(t *testing.T) {
	s := newSink(t)
	httpPort, appPort := freePort(t), freePort(t)
	web := func(release string) map[string]any {
		return map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-delay", "1s"},
			"port": strconv.Itoa(appPort), "ready": map[string]any{"tcp": ""}, "stop_timeout": "5s",
			"env": map[string]string{"RELEASE": release}}
	}
	cfg, c, old, l := serveUnderLoad(t, s, httpPort, web("v1"), 8)
	next := proxyToSupervised(t, httpPort, "web", web("v2"))
	next["admin"] = cfg["admin"]
	answer := inBackground(func() (*http.Response, error) {
		var buf strings.Builder
		writeJSONTo(t, &buf, next)
		return http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/load", "application/json", strings.NewReader(buf.String()))
	})
	old.dead(t, 10*time.Second)
	c.waitLog(`"msg":"starting a new instance"`, 5*time.Second)
	c.signal(syscall.SIGTERM) // while the new instance boots
	if got := <-answer; !strings.Contains(got, "Caddy is exiting") {
		t.Errorf("the reload answered %q, want Caddy is exiting", got)
	}
	booted := s.next(t, 10*time.Second)
	booted.expect(t, "signal", 15*time.Second)
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	st := l.stop()
	t.Logf("%d ok, %d refused after Caddy closed its listener", st.ok, st.refused)
	if len(st.failures) > 0 {
		t.Errorf("%d requests failed; first: %s", len(st.failures), st.failures[0])
	}
	noFailedRequests(t, c)
	drained := logTimes(t, c.logs.lines(`"msg":"drain over"`))
	stopped := logTimes(t, c.logs.lines(fmt.Sprintf(`"msg":"stopping process","pid":%d`, booted.pid)))
	if len(drained) != 1 || len(stopped) != 1 || stopped[0].Before(drained[0]) {
		t.Errorf("the booted instance was not stopped once after the drain: %v %v", drained, stopped)
	}
}

// An admin restart in place whose new child fails at boot puts the
// process back, as a reload does, and Caddy stays up, with the defaults
// (restart never, on_end stop_caddy); the restart answers with the child's
// error (defect 3).
func TestAdminRestartInPlaceFailureRevives(t *testing.T) {
	s := newSink(t)
	httpPort, appPort := freePort(t), freePort(t)
	count := filepath.Join(t.TempDir(), "starts")
	script := `n=$(( $(cat "$COUNT" 2>/dev/null || echo 0) + 1 )); echo $n > "$COUNT"; ` +
		`if [ $n = 2 ]; then echo "boom: the second start fails"; exit 3; fi; exec "$UPSTREAM" -events "$EVENTS" -listen "127.0.0.1:$PORT"`
	web := map[string]any{"name": "web", "command": []string{"sh", "-c", script}, "port": strconv.Itoa(appPort),
		"ready": map[string]any{"tcp": ""}, "env": map[string]string{"COUNT": count, "UPSTREAM": upstreamBin, "EVENTS": s.addr()}}
	cfg, c, first, l := serveUnderLoad(t, s, httpPort, web, 8)
	var apiErr struct{ Error string }
	code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr)
	want := `the new instance exited before it was ready (exit status 3; last output: boom: the second start fails)`
	if code != 500 || !strings.Contains(apiErr.Error, want) || !strings.Contains(apiErr.Error, "started again") {
		t.Errorf("restart: %d %q, want 500 with %q and that it was started again", code, apiErr.Error, want)
	}
	first.dead(t, 5*time.Second)
	third := s.next(t, 10*time.Second)
	c.waitLog(fmt.Sprintf(`"to":"ready","pid":%d`, third.pid), 10*time.Second)
	if st := status(t, cfg, "web"); st.PID != third.pid || st.State != stateReady {
		t.Errorf("after the failed restart: %+v, want the revived instance %d ready", st, third.pid)
	}
	l.waitOK(t, l.ok.Load()+50, 10*time.Second)
	assertAdminUp(t, c)
	finishUnderLoad(t, c, l, 0, 10*time.Second)
}

// What a process remembers survives its replacements: exits_total and
// restarts_total never go down across a blue/green reload, and a crash
// loop interrupted by a reload ends at max_restarts restarts in all
// (defect 6).
func TestHistorySurvivesReplacement(t *testing.T) {
	t.Run("counters", func(t *testing.T) {
		s := newSink(t)
		httpPort := freePort(t)
		web := func(release string) map[string]any {
			return map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr()}, "port": "auto",
				"ready": map[string]any{"http": ""}, "restart": "on_failure", "env": map[string]string{"RELEASE": release}}
		}
		cfg := proxyToSupervised(t, httpPort, "web", web("v1"))
		c := startCaddy(t, cfg)
		up := s.next(t, 10*time.Second)
		c.waitLog(`"to":"ready"`, 10*time.Second)
		if err := syscall.Kill(up.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		s.next(t, 10*time.Second)
		c.waitLogCount(`"to":"ready"`, 2, 10*time.Second)
		series := []string{`caddy_supervise_process_exits_total{name="web",status="137"}`, `caddy_supervise_process_restarts_total{name="web"}`}
		for _, m := range series {
			if v := metricValue(t, cfg, m); v != 1 {
				t.Fatalf("%s = %v before the reload, want 1", m, v)
			}
		}
		next := proxyToSupervised(t, httpPort, "web", web("v2"))
		next["admin"] = cfg["admin"]
		c.load(t, next)
		for _, m := range series {
			if v := metricValue(t, cfg, m); v != 1 {
				t.Errorf("%s = %v after a blue/green reload, want 1", m, v)
			}
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	})
	t.Run("max_restarts across a reload", func(t *testing.T) {
		crasher := func(release string) map[string]any {
			return map[string]any{"name": "crasher", "command": []string{"sh", "-c", "sleep 0.2; exit 1"}, "restart": "on_failure",
				"max_restarts": 3, "on_end": "keep_running", "env": map[string]string{"RELEASE": release}}
		}
		cfg := testConfig(t, 0, 0, crasher("v1"))
		c := startCaddy(t, cfg)
		c.waitLogCount(`"msg":"process started"`, 2, 10*time.Second) // one restart
		next := testConfig(t, 0, 0, crasher("v2"))
		next["admin"] = cfg["admin"]
		c.load(t, next)
		c.waitLog("process ended for good", 20*time.Second)
		// 1 + the reload's + 3 restarts by the policy in all
		if n := len(c.logs.lines(`"msg":"process started"`)); n != 5 {
			t.Errorf("%d starts, want 5: max_restarts counts the restarts before the reload", n)
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	})
}
