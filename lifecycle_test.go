// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Reloads under load with an unchanged supervise config keep the same
// child, and no request fails.
func TestReloadUnderLoadKeepsChild(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	cfg := testConfig(t, httpPort, upPort, upstreamProc(s, "web", upPort))
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)

	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), 8)
	l.waitOK(t, 50, 10*time.Second)
	l.churn.Store(true) // each reload replaces Caddy's listening socket

	// The reloaded config also writes the supervise logs to a file: the kept
	// process must log there from the reload on.
	logFile := filepath.Join(t.TempDir(), "supervise.log")
	cfg["logging"].(map[string]any)["logs"].(map[string]any)["file"] = map[string]any{
		"writer":  map[string]any{"output": "file", "filename": logFile},
		"include": []string{"supervise"},
	}
	const reloads = 20
	for i := range reloads {
		c.forceLoad(t, cfg)
		// each reload logs that the process was kept; wait for the i+1-th
		c.waitLogCount("process kept running across config change", i+1, 10*time.Second)
	}
	before := l.ok.Load()
	l.waitOK(t, before+50, 10*time.Second) // still serving after the last reload
	st := l.stop()
	t.Logf("%d reloads: %d requests ok, %d failed, %d new connections reset by Caddy's listener swap", reloads, st.ok, len(st.failures), st.unaccepted)
	if len(st.failures) > 0 || st.refused > 0 {
		t.Errorf("requests failed across reloads: %d failures (first %v), %d refused",
			len(st.failures), st.failures[:min(3, len(st.failures))], st.refused)
	}
	if errs := c.logs.lines(`"http.log.error"`); len(errs) > 0 {
		t.Errorf("caddy logged %d failed requests; first: %s", len(errs), errs[0])
	}
	if n := len(c.logs.lines(`"msg":"process started"`)); n != 1 {
		t.Errorf("process started %d times, want once", n)
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))
	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
	b, _ := os.ReadFile(logFile)
	for _, want := range []string{
		`"logger":"supervise.web","msg":"stopping process"`,
		`upstream got terminated`, // the process's own output
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the kept process did not log %q through the new config's logging; its file has:\n%s", want, b)
		}
	}
}

// A crashing process restarts with the documented back-off (250ms, 500ms,
// 1s, ...); max_restarts ends it for good; on_end keep_running leaves Caddy
// running.
func TestRestartBackoffAndLimit(t *testing.T) {
	proc := map[string]any{
		"name": "crasher", "command": []string{"sh", "-c", "exit 1"},
		"restart": "on_failure", "max_restarts": 3, "on_end": "keep_running",
	}
	c := startCaddy(t, testConfig(t, 0, 0, proc))
	c.waitLog("process ended for good", 10*time.Second)
	c.waitLog("Caddy keeps running", time.Second)
	starts := logTimes(t, c.logs.lines(`"msg":"process started"`))
	if len(starts) != 4 {
		t.Fatalf("%d starts, want 1 + max_restarts 3", len(starts))
	}
	for i, want := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second} {
		got := starts[i+1].Sub(starts[i])
		if got < want || got > want+600*time.Millisecond {
			t.Errorf("restart %d came %s after the previous start, want about %s", i+1, got, want)
		}
	}
	if !strings.Contains(c.logs.lines("process ended for good")[0], "max_restarts") {
		t.Error("the end does not say max_restarts")
	}
	assertAdminUp(t, c)
	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}

// A crash loop with restart always costs next to no CPU, and a stop during
// the back-off is prompt.
func TestCrashLoopIsCheap(t *testing.T) {
	proc := map[string]any{"name": "crasher", "command": []string{"sh", "-c", "exit 2"}, "restart": "always"}
	c := startCaddy(t, testConfig(t, 0, 0, proc))
	c.waitLogCount(`"msg":"process started"`, 2, 5*time.Second)
	cpu0, wall0 := cpuTime(t, c.cmd.Process.Pid), time.Now()
	c.waitLogCount(`"msg":"process started"`, 6, 15*time.Second) // back-off reaches 4s
	cpu, wall := cpuTime(t, c.cmd.Process.Pid)-cpu0, time.Since(wall0)
	// no zombies accumulate: at most the child that is exiting right now
	if z := zombieChildren(t, c.cmd.Process.Pid); len(z) > 1 {
		t.Errorf("zombie children of caddy: %v", z)
	}
	t.Logf("crash loop: %s CPU (Caddy and its children) in %s", cpu, wall)
	if cpu > wall/10 {
		t.Errorf("crash loop used %s CPU in %s, more than 10%% of a core", cpu, wall)
	}
	began := c.signal(syscall.SIGTERM)
	if code := c.wait(5 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0 (the process did not end for good: Caddy stopped it)", code)
	}
	if d := c.exited.Sub(began); d > time.Second {
		t.Errorf("stopping during the back-off took %s", d)
	}
}

// A process that ends for good shuts Caddy down gracefully (the other
// process is signalled after the drain), and Caddy exits with its status.
func TestEndedProcessStopsCaddy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(t *testing.T, task *peer)
		status int
	}{
		{"exit 3", func(t *testing.T, task *peer) {
			_, _ = http.Get("http://" + task.addr + "/exit?code=3")
		}, 3},
		{"killed by SIGKILL", func(t *testing.T, task *peer) {
			if err := syscall.Kill(task.pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, 128 + 9},
		{"exit 0", func(t *testing.T, task *peer) {
			_, _ = http.Get("http://" + task.addr + "/exit?code=0")
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(t)
			httpPort, upPort, taskPort := freePort(t), freePort(t), freePort(t)
			c := startCaddy(t, testConfig(t, httpPort, upPort, upstreamProc(s, "web", upPort), upstreamProc(s, "task", taskPort)))
			web, task := s.next(t, 10*time.Second), s.next(t, 10*time.Second)
			if task.addr != fmt.Sprintf("127.0.0.1:%d", taskPort) {
				web, task = task, web
			}
			tc.end(t, task)
			task.dead(t, 5*time.Second)
			web.expect(t, "signal", 10*time.Second) // the graceful path: signalled, not killed
			web.expect(t, "exit", 10*time.Second)
			if code := c.wait(10 * time.Second); code != tc.status {
				t.Errorf("caddy exit code %d, want %d", code, tc.status)
			}
			c.waitLog("shutting Caddy down (on_end stop_caddy)", time.Second)
		})
	}
}

// Processes stop in parallel: two that each take 2 s take 2 s together.
func TestProcessesStopInParallel(t *testing.T) {
	s := newSink(t)
	a := upstreamProc(s, "a", freePort(t), "-linger", "2s")
	b := upstreamProc(s, "b", freePort(t), "-linger", "2s")
	c := startCaddy(t, testConfig(t, 0, 0, a, b))
	s.next(t, 10*time.Second)
	s.next(t, 10*time.Second)
	began := c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
	if d := c.exited.Sub(began); d < 2*time.Second || d > 3*time.Second {
		t.Errorf("two processes that take 2 s each stopped in %s, want about 2 s", d)
	}
}

// ---- helpers ----

// forceLoad posts cfg to /load even if it is unchanged, as
// `caddy reload --force` does.
func (c *caddyProc) forceLoad(t testing.TB, cfg map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(cfg)
	admin := cfg["admin"].(map[string]any)["listen"].(string)
	req, _ := http.NewRequest("POST", "http://"+admin+"/load", strings.NewReader(string(raw)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /load: %s", resp.Status)
	}
}

// waitLogCount waits until n log lines contain s.
func (c *caddyProc) waitLogCount(s string, n int, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.logs.mu.Lock()
		changed := c.logs.changed
		c.logs.mu.Unlock()
		if lines := c.logs.lines(s); len(lines) >= n {
			return lines[n-1]
		}
		select {
		case <-changed:
		case <-c.done:
			if lines := c.logs.lines(s); len(lines) >= n {
				return lines[n-1]
			}
			c.t.Fatalf("caddy exited before logging %q %d times", s, n)
		case <-deadline.C:
			c.t.Fatalf("caddy logged %q %d times within %s, want %d", s, len(c.logs.lines(s)), timeout, n)
		}
	}
}

func assertAdminUp(t *testing.T, c *caddyProc) {
	t.Helper()
	select {
	case <-c.done:
		t.Fatal("caddy exited")
	default:
	}
}

// logTimes returns the "ts" of each JSON log line.
func logTimes(t testing.TB, lines []string) []time.Time {
	t.Helper()
	var out []time.Time
	for _, l := range lines {
		var e struct {
			TS float64 `json:"ts"`
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, time.Unix(0, int64(e.TS*1e9)))
	}
	return out
}

// cpuTime is the CPU time a process used, itself and its reaped children.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (fields 14-17)
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// zombieChildren lists the zombie processes whose parent is pid.
func zombieChildren(t *testing.T, pid int) []int {
	return slices.DeleteFunc(childrenOf(pid), func(n int) bool { return !isZombie(n) })
}

// As PID 1 (here: of a new PID namespace), Caddy warns that nothing reaps
// orphans and points to an init.
func TestWarnsAsPID1(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "caddy.json")
	writeJSON(t, path, testConfig(t, 0, 0, map[string]any{"name": "app", "command": []string{"sleep", "60"}}))
	c := &caddyProc{t: t, logs: newLogBuf(), done: make(chan struct{})}
	c.cmd = exec.Command("unshare", "--pid", "--fork", "--kill-child", caddyBin, "run", "--config", path)
	c.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		// SIGKILL of unshare: --kill-child kills Caddy, the namespace's PID 1,
		// and with it every process of the namespace
		_ = c.cmd.Process.Kill()
		<-c.done
	})
	c.waitLog("Caddy runs as PID 1 without an init", 10*time.Second)
	if !strings.Contains(c.waitLog("Caddy runs as PID 1", time.Second), "tini") {
		t.Error("the warning does not point to tini")
	}
}
