// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// The five sequences the engine's simulation found where pools,
// recycling, liveness and streams meet (issue 29, R1–R5), each with a
// real Caddy and real processes. Each failed on 726382b.

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// breakableWeb is the example upstream on port auto, ready over HTTP,
// that cannot boot while the file broken exists if its release is one of
// brokenReleases ("" : every release).
func breakableWeb(broken, release string, extra map[string]any) map[string]any {
	script := `if [ -e "$BROKEN" ] && { [ -z "$BROKEN_RELEASE" ] || [ "$BROKEN_RELEASE" = "$RELEASE" ]; }; then echo "boom: $RELEASE cannot boot now" >&2; exit 3; fi; exec "$UPSTREAM"`
	p := map[string]any{"name": "web", "command": []string{"sh", "-c", script}, "port": "auto",
		"ready": map[string]any{"http": ""}, "ready_timeout": "20s", "stop_timeout": "2s", "drain_timeout": "5s",
		"env": map[string]string{"BROKEN": broken, "RELEASE": release, "UPSTREAM": upstreamBin}}
	for k, v := range extra {
		if k == "broken_release" {
			p["env"].(map[string]string)["BROKEN_RELEASE"] = v.(string)
			continue
		}
		p[k] = v
	}
	return p
}

// R1: a recycle that fails (the release cannot boot now) keeps the
// instance's health check: a hang after it is caught. (The watch reported
// its max_lifetime once and ended; its restart after the failure reported
// the limit again at once and ended too: 0 health checks.)
func TestFailedRecycleKeepsTheHealthCheck(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	httpPort := freePort(t)
	health := map[string]any{"http": "", "interval": "300ms", "timeout": "200ms", "fails": 2}
	cfg := proxyToSupervised(t, httpPort, "web", breakableWeb(broken, "v1", map[string]any{"health": health, "max_lifetime": "2s"}))
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 20*time.Second)
	pid := status(t, cfg, "web").PID
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitLog(`"msg":"recycling the instance failed; trying again later"`, 20*time.Second)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	c.waitLog(fmt.Sprintf(`"msg":"instance failed its health check: it leaves the upstream, and is replaced, then killed","pid":%d`, pid), 5*time.Second)
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	c.waitLog(fmt.Sprintf(`"pid":%d,"exit_status":137`, pid), 30*time.Second) // replaced, then killed
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// R2: a reload of a pool that rolls to v2 and then fails elsewhere puts
// v1 back; when v1 cannot boot then, the put-back is retried until it
// can, and the pool serves v1 again. (The slots kept v2 under config v1,
// for good.)
func TestFailedPutBackIsRetried(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	httpPort := freePort(t)
	web := func(release string) map[string]any {
		return breakableWeb(broken, release, map[string]any{"instances": 2, "broken_release": "v1"})
	}
	cfg := proxyToSupervised(t, httpPort, "web", web("v1"))
	c := startCaddy(t, cfg)
	c.waitLogCount(`"to":"ready"`, 2, 20*time.Second)
	if err := os.WriteFile(broken, nil, 0o644); err != nil { // v1 cannot boot now
		t.Fatal(err)
	}
	busy := freePort(t)
	blocker, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", busy))
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	// a reload to v2 that fails elsewhere (a busy port), until supervise
	// started first and rolled to v2 (Caddy starts its apps in any order)
	for attempt := 1; ; attempt++ {
		bad := withProcs(cfg, web(fmt.Sprintf("v2-%d", attempt)))
		bad["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["busy"] = map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", busy)}}
		rolled := len(c.logs.lines(`"msg":"rolling restart done","why":"its definition changed"`))
		if code, body := c.tryLoad(t, bad); code == 200 {
			t.Fatalf("a reload onto a busy port succeeded: %s", body)
		}
		if len(c.logs.lines(`"msg":"rolling restart done","why":"its definition changed"`)) > rolled {
			break
		}
		if attempt == 30 {
			t.Skip("Caddy never started the supervise app first in 30 reloads")
		}
	}
	c.waitLog(`"msg":"the new instance exited before it was ready"`, 20*time.Second) // the put-back of v1 fails
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	deadline := time.Now().Add(45 * time.Second)
	for {
		st := status(t, cfg, "web")
		v1 := 0
		for _, in := range st.Instances {
			if in.Serving && in.State == stateReady && envRelease(t, in.PID) == "v1" {
				v1++
			}
		}
		if v1 == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("45 s after v1 could boot again, %d of 2 instances serve it: %+v", v1, st.Instances)
		}
		waitForChange(c, time.Second) // (the next log line, or a second)
	}
	assertGet(t, url, "hello from upstream")
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// envRelease is the RELEASE in the environment of process pid.
func envRelease(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, "RELEASE="); ok {
			return v
		}
	}
	return ""
}

// waitForChange waits for Caddy's next log line, at most d.
func waitForChange(c *caddyProc, d time.Duration) {
	c.logs.mu.Lock()
	changed := c.logs.changed
	c.logs.mu.Unlock()
	select {
	case <-changed:
	case <-time.After(d):
	}
}

// R3: a roll waits for the old instances of the previous one to be gone,
// besides those that serve only streams; when the last ordinary request
// of such an old instance ends (its streams go on), the roll goes on at
// once. (Nothing told it: it waited until drain_timeout.)
func TestRollGoesOnWhenOnlyStreamsAreLeft(t *testing.T) {
	httpPort := freePort(t)
	web := breakableWeb("", "v1", map[string]any{"instances": 2, "roll_batch": 2, "drain_timeout": "40s", "stream_drain_timeout": "5m"})
	cfg := streamsConfig(t, httpPort, web)
	c, addr, _ := serveStreams(t, cfg, httpPort, "")
	c.waitLogCount(`"to":"ready"`, 2, 20*time.Second)
	// on each instance a stream and a request of 6 s (the dynamic upstream
	// sends each request to the instance with the fewest in flight)
	var sse []*sseClient
	for range 2 {
		s, err := openSSE("http://" + addr + "/events")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sse = append(sse, s)
	}
	slow := make([]<-chan string, 2)
	for i := range slow {
		slow[i] = inBackground(func() (*http.Response, error) { return http.Get("http://" + addr + "/sleep?d=6s") })
	}
	waitInstanceRequests(t, cfg, 2)
	began := time.Now()
	var st Status
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &st); code != 200 {
		t.Fatalf("the first restart: %d", code)
	}
	// the old instances retire beside their replacements, keeping their
	// streams and their slow requests; a second restart waits for them
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &st); code != 200 {
		t.Fatalf("the second restart: %d", code)
	}
	took := time.Since(began)
	for _, ch := range slow {
		if got := <-ch; !strings.HasPrefix(got, "200") {
			t.Errorf("a slow request: %s", got)
		}
	}
	if took > 15*time.Second {
		t.Errorf("the second restart took %s: it went on only at drain_timeout (40 s), not when the slow requests ended (6 s)", took)
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// waitInstanceRequests waits until the serving instances of web were sent
// n requests in all.
func waitInstanceRequests(t testing.TB, cfg map[string]any, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var sum int64
		for _, in := range status(t, cfg, "web").Instances {
			sum += in.Requests
		}
		if sum >= n+2 { // (the two streams, too)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the instances got %d requests, want %d", sum, n+2)
		}
		time.Sleep(20 * time.Millisecond) // (nothing tells when a request reached an instance)
	}
}

// R4: the serving instance dies (the OOM killer: two instances in memory)
// while its replacement boots beside it, with `restart never` and `on_end
// stop_caddy`: the booting instance is the process still alive; the
// restart completes and Caddy serves on. (Caddy exited 137.)
func TestOldInstanceDeathDuringBootEndsNothing(t *testing.T) {
	s := newSink(t)
	g := newGate(t)
	httpPort := freePort(t)
	web := gatedWeb(s, g, "v1")
	web["restart"] = "never"
	cfg := proxyToSupervised(t, httpPort, "web", web)
	c := startCaddy(t, cfg)
	old := s.next(t, 20*time.Second)
	c.waitLog(`"to":"ready"`, 20*time.Second) // (a restart beside needs a ready instance)
	g.close(t)
	restart := inBackground(func() (*http.Response, error) {
		return http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/supervise/web/restart", "", nil)
	})
	c.waitLog(`"msg":"waiting at the gate"`, 10*time.Second)
	if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.waitLog(fmt.Sprintf(`"pid":%d,"exit_status":137`, old.pid), 10*time.Second)
	g.open(t)
	if got := <-restart; !strings.HasPrefix(got, "200") {
		t.Errorf("the restart: %s", got)
	}
	fresh := s.next(t, 20*time.Second)
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), "pid "+strconv.Itoa(fresh.pid))
	stillRunsThenExits(t, c)
}

// stillRunsThenExits checks that Caddy still runs, then stops it: it
// exits 0.
func stillRunsThenExits(t *testing.T, c *caddyProc) {
	t.Helper()
	select {
	case <-c.done:
		t.Fatalf("Caddy exited (%d)", c.cmd.ProcessState.ExitCode())
	default:
	}
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Errorf("exit status %d", code)
	}
}

// R5: a reload that adds a process with a readiness probe waits for it:
// one that exits before it is ready fails the reload, the old config
// serves on, and its on_end does not apply. (The reload was accepted, the
// process ended, and `on_end stop_caddy` shut the site down.)
func TestReloadAddingABrokenProcessFails(t *testing.T) {
	httpPort := freePort(t)
	web := map[string]any{"name": "web", "command": []string{upstreamBin}, "port": "auto", "ready": map[string]any{"http": ""}}
	cfg := proxyToSupervised(t, httpPort, "web", web)
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 20*time.Second)
	jobs := map[string]any{"name": "jobs", "command": []string{"sh", "-c", "echo 'boom: the worker cannot start' >&2; sleep 0.3; exit 3"},
		"ready": map[string]any{"tcp": fmt.Sprintf("127.0.0.1:%d", freePort(t))}, "ready_timeout": "10s"}
	code, body := c.tryLoad(t, withProcs(cfg, web, jobs))
	if code == 200 || !strings.Contains(body, `process \"jobs\"`) || !strings.Contains(body, "exit status 3") {
		t.Errorf("a reload that adds a broken process: %d %s", code, body)
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), "hello from upstream")
	if lines := c.logs.lines(`"msg":"process ended; shutting Caddy down`); len(lines) > 0 {
		t.Errorf("the process's on_end applied: %s", lines[0])
	}
	stillRunsThenExits(t, c)
}
