// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adminDo calls Caddy's admin endpoint and decodes the JSON answer.
func adminDo(t testing.TB, cfg map[string]any, method, path string, into any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+cfg["admin"].(map[string]any)["listen"].(string)+path, nil)
	// a connection of its own: a reload (a failed one too) may replace
	// Caddy's admin server, which resets the connections it kept alive
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if into != nil {
		if err := json.Unmarshal(body, into); err != nil {
			t.Fatalf("%s %s: %s: %v: %s", method, path, resp.Status, err, body)
		}
	}
	return resp.StatusCode
}

func TestAdminAPI(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	web := map[string]any{
		"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-linger", "300ms"},
		"port": "auto", "ready": map[string]any{"http": ""}, "restart": "always",
	}
	workerPort := freePort(t)
	worker := upstreamProc(s, "worker", workerPort)
	once := map[string]any{"name": "once", "command": []string{"true"}, "restart": "never", "on_end": "keep_running"}
	cfg := proxyToSupervised(t, httpPort, "web", web, worker, once)
	c := startCaddy(t, cfg)
	a, b := s.next(t, 10*time.Second), s.next(t, 10*time.Second)
	webPeer, workerPeer := a, b
	if a.addr == fmt.Sprintf("127.0.0.1:%d", workerPort) {
		webPeer, workerPeer = b, a
	}
	c.waitLog(`"logger":"supervise.web","msg":"process state","from":"starting","to":"ready"`, 10*time.Second)
	c.waitLog(`"logger":"supervise.worker","msg":"process state","from":"","to":"ready"`, 10*time.Second)
	c.waitLog("Caddy keeps running", 10*time.Second) // once ended

	var list []Status
	if code := adminDo(t, cfg, "GET", "/supervise/", &list); code != 200 || len(list) != 3 || list[1].Name != "web" || list[2].Name != "worker" {
		t.Fatalf("GET /supervise/: %d %+v", code, list)
	}
	if list[1].PID != webPeer.pid || list[1].State != "ready" || !list[1].Ready || list[1].StartedAt == nil || list[1].Port == 0 {
		t.Errorf("web status %+v", list[1])
	}
	var one Status
	if code := adminDo(t, cfg, "GET", "/supervise/worker", &one); code != 200 || one.PID != workerPeer.pid {
		t.Errorf("GET /supervise/worker: %d %+v", code, one)
	}
	var apiErr struct{ Error string }
	for _, tc := range []struct {
		method, path string
		code         int
		msg          string
	}{
		{"GET", "/supervise/nope", 404, `no supervised process named "nope"`},
		{"GET", "/supervise/web/restart", 405, "use POST"},
		{"POST", "/supervise/web/signal/NOPE", 400, `signal "NOPE": unknown signal`},
		{"GET", "/supervise/web/bogus", 404, "not an endpoint"},
		{"POST", "/supervise/once/restart", 409, `process "once": not running`},
		{"POST", "/supervise/once/signal/HUP", 409, `process "once": not running`},
	} {
		apiErr.Error = ""
		if code := adminDo(t, cfg, tc.method, tc.path, &apiErr); code != tc.code || !strings.Contains(apiErr.Error, tc.msg) {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, code, apiErr.Error, tc.code, tc.msg)
		}
	}

	// a signal on demand: the worker notes USR1 and keeps running
	if code := adminDo(t, cfg, "POST", "/supervise/worker/signal/USR1", nil); code != 200 {
		t.Errorf("POST signal: %d", code)
	}
	if e := workerPeer.expect(t, "usr", 5*time.Second); e.Sig != "user defined signal 1" {
		t.Errorf("worker got %q", e.Sig)
	}

	// a graceful restart under load: a new instance on a new port, then the
	// old one stops; no request fails
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), 8)
	l.waitOK(t, 100, 10*time.Second)
	var restarted Status
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &restarted); code != 200 {
		t.Fatalf("POST restart: %d", code)
	}
	newPeer := s.next(t, 5*time.Second)
	webPeer.expect(t, "signal", 5*time.Second)
	webPeer.dead(t, 5*time.Second)
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)
	st := l.stop()
	t.Logf("restart under load: %d ok", st.ok)
	if len(st.failures) > 0 || st.refused > 0 || st.unaccepted > 0 {
		t.Errorf("%d failed (first %v), %d refused, %d reset", len(st.failures), st.failures[:min(3, len(st.failures))], st.refused, st.unaccepted)
	}
	if restarted.PID != newPeer.pid || restarted.Port == list[1].Port || restarted.Restarts != 1 {
		t.Errorf("after the restart: %+v (before: %+v)", restarted, list[1])
	}

	// a restart in place (no port auto): stop, then start again at once
	var worker2 Status
	if code := adminDo(t, cfg, "POST", "/supervise/worker/restart", &worker2); code != 200 {
		t.Fatalf("POST restart worker: %d", code)
	}
	workerPeer.expect(t, "signal", 5*time.Second)
	workerPeer.dead(t, 5*time.Second)
	if next := s.next(t, 5*time.Second); worker2.PID != next.pid || worker2.Restarts != 1 || worker2.State != "ready" {
		t.Errorf("worker after its restart: %+v, new pid %d", worker2, next.pid)
	}

	// restarts_total never decreases: after the blue/green restart (1), a
	// crash of the new instance and its restart make 2
	if code := adminDo(t, cfg, "POST", "/supervise/web/signal/KILL", nil); code != 200 {
		t.Errorf("POST signal KILL: %d", code)
	}
	newPeer.dead(t, 5*time.Second)
	s.next(t, 10*time.Second)
	c.waitLogCount(`"logger":"supervise.web","msg":"process state","from":"starting","to":"ready"`, 3, 10*time.Second) // at start, the replacement, after the crash
	var web3 Status
	if code := adminDo(t, cfg, "GET", "/supervise/web", &web3); code != 200 || web3.Restarts != 2 {
		t.Errorf("web after a crash of its replacement: %d %+v, want 2 restarts", code, web3)
	}

	// metrics
	resp, err := http.Get("http://" + cfg["admin"].(map[string]any)["listen"].(string) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`caddy_supervise_process_up{name="web"} 1`,
		`caddy_supervise_process_ready{name="web"} 1`,
		`caddy_supervise_process_restarts_total{name="web"} 2`,
		`caddy_supervise_process_up{name="worker"} 1`,
		`caddy_supervise_process_restarts_total{name="worker"} 1`,
		`caddy_supervise_process_exits_total{name="worker",status="0"} 1`,
		`caddy_supervise_process_start_time_seconds{name="worker"}`,
		`caddy_supervise_process_last_drain_seconds{name="worker"} 0`, // set at Caddy's exit only
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// the stop of the worker's restart took some time, less than stop_timeout
	var stopSecs float64
	for _, l := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(l, `caddy_supervise_process_last_stop_seconds{name="worker"} `); ok {
			fmt.Sscan(v, &stopSecs)
		}
	}
	if stopSecs <= 0 || stopSecs > 10 {
		t.Errorf("last_stop_seconds of the worker: %v", stopSecs)
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// A blue/green restart whose new instance is broken (it exits at boot, or
// never gets ready) fails with an error that names its exit status and its
// last output; the old instance serves on, under load, and Caddy keeps
// running (the new instance's restart and on_end do not apply to it). A
// second restart while one runs gets 409.
func TestAdminRestartBrokenRelease(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	dir := t.TempDir()
	broken, hangs := filepath.Join(dir, "broken"), filepath.Join(dir, "hangs")
	script := `if [ -e "$BROKEN" ]; then echo "boom: broken release"; exit 3; fi; ` +
		`if [ -e "$HANGS" ]; then echo "booting forever"; exec sleep 60; fi; ` +
		`exec "$UPSTREAM" -events "$EVENTS"`
	web := map[string]any{
		"name": "web", "command": []string{"sh", "-c", script}, "port": "auto",
		"ready": map[string]any{"http": ""}, "ready_timeout": "2s", "stop_timeout": "1s",
		"env": map[string]string{"BROKEN": broken, "HANGS": hangs, "UPSTREAM": upstreamBin, "EVENTS": s.addr()},
	}
	cfg := proxyToSupervised(t, httpPort, "web", web)
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)
	c.waitLog(`"to":"ready"`, 10*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), 8)
	l.waitOK(t, 100, 10*time.Second)

	for i, tc := range []struct{ file, want string }{
		{broken, `exit status 3; last output: boom: broken release`},
		{hangs, `the new instance was not ready within ready_timeout 2s (exit status 143; last output: booting forever)`},
	} {
		if err := os.WriteFile(tc.file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var apiErr struct{ Error string }
		second := make(chan int, 1)
		go func() {
			c.waitLogCount(`"msg":"starting a new instance"`, i+1, 10*time.Second)
			second <- adminDo(t, cfg, "POST", "/supervise/web/restart", nil)
		}()
		if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr); code != 500 || !strings.Contains(apiErr.Error, tc.want) || !strings.Contains(apiErr.Error, "the old instance still serves") {
			t.Errorf("restart with %s: %d %q, want 500 and %q", filepath.Base(tc.file), code, apiErr.Error, tc.want)
		}
		if code := <-second; code != 409 {
			t.Errorf("a second restart while one runs: %d, want 409", code)
		}
		os.Remove(tc.file)
		var st Status
		if code := adminDo(t, cfg, "GET", "/supervise/web", &st); code != 200 || st.PID != up.pid || st.State != stateReady {
			t.Errorf("after the failed restart: %d %+v, want the old instance (pid %d) ready", code, st, up.pid)
		}
		l.waitOK(t, l.ok.Load()+50, 10*time.Second)
	}
	l.stopNoFailures(t)
	select {
	case <-c.done:
		t.Fatal("Caddy exited")
	default:
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// How an instance's requests ended, as supervise_streams sees them: the
// app answered (below 500), answered 5xx, or gave no answer (a connection
// cut), each attempt of reverse_proxy's counted, a retried 503 as 5xx; a
// client that went away counts as none. In the admin API and the metrics.
func TestInstanceResponses(t *testing.T) {
	httpPort := freePort(t)
	web := map[string]any{"name": "web", "command": []string{upstreamBin}, "port": "auto", "ready": map[string]any{"http": ""}}
	cfg := proxyToSupervised(t, httpPort, "web", web)
	srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)
	srv["logs"] = map[string]any{} // access log: each request's end
	route := srv["routes"].([]any)[0].(map[string]any)
	handlers := route["handle"].([]any)
	// one retry, on a connection error and on a 503 (as a canary's will)
	handlers[0].(map[string]any)["load_balancing"] = map[string]any{"retries": 1,
		"retry_match": []any{map[string]any{"expression": "{http.reverse_proxy.status_code} == 503"}}}
	route["handle"] = append([]any{map[string]any{"handler": "supervise_streams"}}, handlers...)
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 10*time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	for path, want := range map[string]int{"/": 200, "/status?code=404": 404, "/status?code=503": 503, "/status?code=500": 500, "/drop": 502} {
		n := 2
		if path == "/" {
			n = 3
		}
		for range n {
			if resp, _ := httpGet(t, base+path); resp.StatusCode != want {
				t.Errorf("GET %s: %s, want %d", path, resp.Status, want)
			}
		}
	}
	// a client that goes away while the app works
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sleep?d=2s", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Error("a request whose client left after 300 ms got an answer")
	}
	cancel()
	c.waitLog(`"uri":"/sleep?d=2s"`, 5*time.Second) // its access line: the request has ended
	st := status(t, cfg, "web")
	if len(st.Instances) != 1 {
		t.Fatalf("instances: %+v", st.Instances)
	}
	got := st.Instances[0].Responses
	// a 503: two attempts (lb_retries 1), both answered 5xx; a 500 is not
	// retried; /drop: no answer, not retried either (with lb_retry_match,
	// a connection cut after the request went out is retried only if it
	// matches, and this one speaks of responses)
	if want := map[string]int64{"ok": 5, "5xx": 6, "failed": 2}; !maps.Equal(got, want) {
		t.Errorf("responses %v, want %v (requests %d)", got, want, st.Instances[0].Requests)
	}
	resp, err := http.Get("http://" + cfg["admin"].(map[string]any)["listen"].(string) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pid := st.Instances[0].PID
	for outcome, n := range got {
		want := fmt.Sprintf(`caddy_supervise_instance_responses_total{instance="0",name="web",outcome="%s",pid="%d"} %d`, outcome, pid, n)
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}
