package supervise

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Pools (`instances`), rolling restarts, recycling and liveness, with
// Debian's Node.js (a single-threaded server: testdata/pool/server.js) and
// the example upstream, under 16 clients of load.

// poolApp is testdata/pool/server.js: n instances (a number or "auto") on
// port auto, the release in its env, BROKEN_FILE (while it exists, a new
// instance exits at boot; if it holds a number, only that instance does).
func poolApp(t testing.TB, n any, release, broken string, extra map[string]any) map[string]any {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("nodejs is not installed (scripts/deps.sh installs it)")
	}
	dir, err := filepath.Abs("testdata/pool")
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]any{
		"name": "web", "dir": dir, "port": "auto", "instances": n,
		"env":     map[string]string{"RELEASE": release, "BROKEN_FILE": broken, "INSTANCE": "{supervise.instance}"},
		"command": []string{node, "server.js"}, "ready": map[string]any{"http": "/up"},
		"drain_timeout": "10s", "stop_timeout": "5s",
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// servePool starts Caddy with the pool and waits until n instances are
// ready; then 16 clients request path in a loop.
func servePool(t testing.TB, web map[string]any, n int, path string) (map[string]any, *caddyProc, *load) {
	t.Helper()
	httpPort := freePort(t)
	cfg := proxyToSupervised(t, httpPort, "web", web)
	c := startCaddy(t, cfg)
	c.waitLogCount(`"msg":"process state","from":"starting","to":"ready"`, n, 30*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), 16)
	l.waitOK(t, 100, 10*time.Second)
	return cfg, c, l
}

// peakInstances is the most instances of web that ran at once, from
// Caddy's log in order: "process started" is logged before the service
// takes its next event, an exit after the group is gone.
func peakInstances(c *caddyProc) int {
	live, peak := 0, 0
	for _, line := range strings.Split(c.logs.String(), "\n") {
		if !strings.Contains(line, `"logger":"supervise.web"`) {
			continue
		}
		switch {
		case strings.Contains(line, `"msg":"process started"`):
			live++
		case strings.Contains(line, `"msg":"process exited`), strings.Contains(line, `"msg":"the new instance exited before it was ready"`):
			live--
		}
		peak = max(peak, live)
	}
	return peak
}

// serving is the PIDs of the serving instances, by index.
func serving(t testing.TB, cfg map[string]any) map[int]int {
	t.Helper()
	pids := map[int]int{}
	for _, in := range status(t, cfg, "web").Instances {
		if in.Serving {
			pids[in.Instance] = in.PID
		}
	}
	return pids
}

// releases asks the pool n times and returns what answered: "release
// instance" → count.
func releases(t testing.TB, cfg map[string]any, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)
	url := "http://" + srv["listen"].([]string)[0] + "/"
	for range n {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var pid, inst int
		var rel string
		if _, err := fmt.Sscanf(string(b), "pid %d instance %d release %s", &pid, &inst, &rel); err != nil {
			t.Fatalf("answer %q: %v", b, err)
		}
		seen[rel]++
	}
	return seen
}

// Four instances of a single-threaded server all take requests; each has
// its index, its own port, and is counted in the admin API and metrics.
func TestPoolSpreadsRequests(t *testing.T) {
	cfg, c, l := servePool(t, poolApp(t, 4, "v1", "", nil), 4, "/?burn=2")
	l.waitOK(t, 400, 20*time.Second)
	st := status(t, cfg, "web")
	var ports, indexes []int
	for _, in := range st.Instances {
		if !in.Serving || in.State != stateReady {
			t.Errorf("instance %+v does not serve", in)
		}
		if in.Requests < 20 {
			t.Errorf("instance %d (pid %d) got %d requests of %d", in.Instance, in.PID, in.Requests, l.ok.Load())
		}
		ports, indexes = append(ports, in.Port), append(indexes, in.Instance)
	}
	slices.Sort(indexes)
	if len(st.Instances) != 4 || !slices.Equal(indexes, []int{0, 1, 2, 3}) || len(slices.Compact(slices.Sorted(slices.Values(ports)))) != 4 {
		t.Errorf("instances %+v: want 4, indexes 0-3, 4 ports", st.Instances)
	}
	if v := metricValue(t, cfg, `caddy_supervise_process_instances_serving{name="web"}`); v != 4 {
		t.Errorf("instances_serving = %v", v)
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// A rolling restart through the admin API and a rolling reload replace the
// four instances one at a time beside their predecessors: no request fails,
// never more than five instances run. A broken release stops the roll at
// its first instance: the reload fails, and the four old instances serve
// on, untouched.
func TestPoolRollingRestartAndReload(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	cfg, c, l := servePool(t, poolApp(t, 4, "v1", broken, nil), 4, "/?burn=2")
	before := serving(t, cfg)

	var st Status
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &st); code != 200 {
		t.Fatalf("restart: %d", code)
	}
	after := serving(t, cfg)
	for i, pid := range before {
		if after[i] == 0 || after[i] == pid {
			t.Errorf("instance %d: pid %d before, %d after the restart", i, pid, after[i])
		}
	}
	if n := len(c.logs.lines(`"msg":"starting a new instance"`)); n != 4 {
		t.Errorf("the restart started %d new instances", n)
	}

	l.churn.Store(true) // a reload swaps Caddy's listener (see serveUnderLoad)
	v2 := poolApp(t, 4, "v2", broken, nil)
	c.load(t, withProcs(cfg, v2))
	if got := releases(t, cfg, 40); got["v2"] != 40 {
		t.Errorf("after the rolling reload: %v", got)
	}
	if peak := peakInstances(c); peak > 5 {
		t.Errorf("%d instances ran at once", peak)
	}

	// a broken release: the roll stops at its first instance
	v2pids := serving(t, cfg)
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	started := len(c.logs.lines(`"msg":"starting a new instance"`))
	code, body := c.tryLoad(t, withProcs(cfg, poolApp(t, 4, "v3", broken, nil)))
	if code == 200 || !strings.Contains(body, "the roll stopped at instance 0: 0 of 4 replaced") || !strings.Contains(body, "exit status 3") {
		t.Errorf("broken reload: %d %s", code, body)
	}
	if n := len(c.logs.lines(`"msg":"starting a new instance"`)) - started; n != 1 {
		t.Errorf("the broken roll started %d new instances, not 1", n)
	}
	var apiErr struct{ Error string }
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr); code != 500 || !strings.Contains(apiErr.Error, "0 of 4 replaced") {
		t.Errorf("broken restart: %d %s", code, apiErr.Error)
	}
	if now := serving(t, cfg); !mapsEqual(now, v2pids) {
		t.Errorf("after the broken release: %v, before %v", now, v2pids)
	}
	if got := releases(t, cfg, 40); got["v2"] != 40 {
		t.Errorf("after the broken release: %v", got)
	}
	if peak := peakInstances(c); peak > 5 {
		t.Errorf("%d instances ran at once", peak)
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// A release that fails on the third instance of a roll: the reload fails,
// and the two instances it had replaced are put back on the old release,
// beside the new ones; no request fails.
func TestPoolRollFailsMidwayPutsBack(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	cfg, c, l := servePool(t, poolApp(t, 4, "v1", broken, nil), 4, "/?burn=2")
	if err := os.WriteFile(broken, []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	l.churn.Store(true)
	code, body := c.tryLoad(t, withProcs(cfg, poolApp(t, 4, "v2", broken, nil)))
	if code == 200 || !strings.Contains(body, "the roll stopped at instance 2: 2 of 4 replaced") {
		t.Fatalf("reload: %d %s", code, body)
	}
	c.waitLog(`"msg":"rolling restart done","why":"the new config did not take over"`, 30*time.Second)
	if got := releases(t, cfg, 40); got["v1"] != 40 {
		t.Errorf("after the failed reload: %v", got)
	}
	if peak := peakInstances(c); peak > 5 {
		t.Errorf("%d instances ran at once", peak)
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// A reload that changes only `instances` adds or removes instances and
// leaves the others running; with the example upstream.
func TestPoolResizeByReload(t *testing.T) {
	web := func(n int) map[string]any {
		return map[string]any{"name": "web", "port": "auto", "instances": n, "command": []string{upstreamBin}, "drain_timeout": "5s"}
	}
	cfg, c, l := servePool(t, web(2), 2, "/")
	two := serving(t, cfg)
	l.churn.Store(true)
	c.load(t, withProcs(cfg, web(4)))
	c.waitLogCount(`"msg":"process state","from":"starting","to":"ready"`, 4, 10*time.Second)
	four := serving(t, cfg)
	if len(four) != 4 || four[0] != two[0] || four[1] != two[1] {
		t.Errorf("2 → 4: %v → %v", two, four)
	}
	c.load(t, withProcs(cfg, web(1)))
	one := serving(t, cfg)
	if len(one) != 1 || one[0] != two[0] {
		t.Errorf("4 → 1: %v → %v", four, one)
	}
	c.waitLogCount(`"msg":"process exited"`, 3, 20*time.Second)
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// An instance that leaks memory is recycled at max_memory: replaced beside
// itself, counted, and no request fails. The request-count limit and
// max_lifetime recycle the same way, one instance at a time.
func TestPoolRecycling(t *testing.T) {
	for _, tc := range []struct {
		name   string
		extra  map[string]any
		path   string
		reason string
	}{
		{"max_memory", map[string]any{"max_memory": "120MiB"}, "/?leak=512", "max_memory"},
		{"max_lifetime_requests", map[string]any{"max_lifetime_requests": 300}, "/", "max_lifetime_requests"},
		{"max_lifetime", map[string]any{"max_lifetime": "3s"}, "/", "max_lifetime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, c, l := servePool(t, poolApp(t, 2, "v1", "", tc.extra), 2, tc.path)
			first := serving(t, cfg)
			c.waitLogCount(`"msg":"recycling an instance: it is replaced beside itself"`, 2, 60*time.Second)
			c.waitLogCount(`"msg":"the new instance is ready and serves"`, 2, 30*time.Second)
			st := status(t, cfg, "web")
			if st.Recycles[tc.reason] < 2 {
				t.Errorf("recycles %v", st.Recycles)
			}
			if now := serving(t, cfg); now[0] == first[0] && now[1] == first[1] {
				t.Errorf("no instance was replaced: %v", now)
			}
			if got := len(c.logs.lines(`"reason":"` + tc.reason + `"`)); got < 2 {
				t.Errorf("the recycles were logged %d times", got)
			}
			if peak := peakInstances(c); peak > 3 {
				t.Errorf("%d instances ran at once: several were recycled at once", peak)
			}
			finishUnderLoad(t, c, l, 0, 20*time.Second)
		})
	}
}

// A recycle whose new instance fails (a release that breaks on instance
// 1) leaves the instance serving and is tried again with a back-off; once
// the release boots again, the retry replaces it. No request fails.
func TestPoolRecycleFailureRetries(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	cfg, c, l := servePool(t, poolApp(t, 2, "v1", broken, map[string]any{"max_lifetime_requests": 300}), 2, "/")
	first := serving(t, cfg)
	if err := os.WriteFile(broken, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitLogCount(`"msg":"recycling the instance failed; trying again later"`, 2, 30*time.Second)
	if now := serving(t, cfg); now[1] != first[1] {
		t.Errorf("instance 1 after failed recycles: pid %d, before %d", now[1], first[1])
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	c.waitLog(fmt.Sprintf(`"old_pid":%d,"instance":1`, first[1]), 40*time.Second) // the next retry
	if now := serving(t, cfg); now[1] == first[1] {
		t.Errorf("instance 1 still %d after its recycle", now[1])
	}
	if st := status(t, cfg, "web"); st.Recycles["max_lifetime_requests"] < 2 {
		t.Errorf("recycles %v", st.Recycles)
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// A hung instance (SIGSTOP) fails its health check: it leaves the upstream
// at once, is replaced beside itself and then killed; requests it held
// are retried elsewhere (GETs), and none waits much longer than the
// detection time.
func TestPoolLiveness(t *testing.T) {
	health := map[string]any{"http": "/up", "interval": "200ms", "timeout": "200ms", "fails": 2}
	cfg, c, l := servePool(t, poolApp(t, 4, "v1", "", map[string]any{"health": health}), 4, "/")
	hung := serving(t, cfg)[1]
	if err := syscall.Kill(hung, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	c.waitLog(`"msg":"instance failed its health check: it leaves the upstream, and is replaced, then killed"`, 5*time.Second)
	c.waitLog(`"msg":"killing the instance that failed its health check"`, 10*time.Second)
	c.waitLog(fmt.Sprintf(`"pid":%d,"exit_status":137`, hung), 10*time.Second)
	now := serving(t, cfg)
	if len(now) != 4 || now[1] == hung {
		t.Errorf("after the hang: %v", now)
	}
	if st := status(t, cfg, "web"); st.Recycles["health"] != 1 {
		t.Errorf("recycles %v", st.Recycles)
	}
	l.waitOK(t, l.ok.Load()+200, 10*time.Second)
	// detection: 2 failed checks 200 ms apart, each up to 200 ms; then the
	// replacement boots; a request held by the hung instance waits that long
	finishUnderLoad(t, c, l, 3*time.Second, 20*time.Second)
}

// Caddy's exit during a roll: the new instance that boots stops, the old
// ones serve the drain, the restart fails, Caddy exits in its time.
func TestPoolExitDuringRoll(t *testing.T) {
	web := map[string]any{"name": "web", "port": "auto", "instances": 3, "command": []string{upstreamBin, "-delay", "3s"},
		"drain_timeout": "5s", "ready_timeout": "20s"}
	cfg, c, l := servePool(t, web, 3, "/")
	restarted := inBackground(func() (*http.Response, error) {
		return http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/supervise/web/restart", "", nil)
	})
	c.waitLog(`"msg":"starting a new instance"`, 5*time.Second)
	l.churn.Store(true)
	c.signal(syscall.SIGTERM)
	if got := <-restarted; !strings.Contains(got, "Caddy is exiting") {
		t.Errorf("restart: %s", got)
	}
	st := l.stop() // (once Caddy closed its listener, connections are refused)
	if len(st.failures) > 0 {
		t.Errorf("%d requests failed; first %v", len(st.failures), st.failures[:min(3, len(st.failures))])
	}
	t.Logf("load: %d ok, %d refused after Caddy closed its listener", st.ok, st.refused)
	noFailedRequests(t, c)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
}

// withProcs sets the supervised processes of cfg, for a reload.
func withProcs(cfg map[string]any, procs ...map[string]any) map[string]any {
	cfg["apps"].(map[string]any)["supervise"] = map[string]any{"processes": procs}
	return cfg
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
