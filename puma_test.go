// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Debian's Puma 5.6 serving a Rack app that takes pumaBoot to load, under
// 16 clients: the transitions of issue 10's table, each with zero failed
// requests.
const pumaBoot = "2"

// pumaProc is a supervised Puma serving testdata/puma/config.ru as release.
func pumaProc(t testing.TB, release, port string, extraEnv map[string]string) map[string]any {
	t.Helper()
	dir, err := filepath.Abs("testdata/puma")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"RELEASE": release, "BOOT_DELAY": pumaBoot}
	for k, v := range extraEnv {
		env[k] = v
	}
	p := map[string]any{
		"name": "web", "dir": dir, "port": port, "env": env,
		"command":      []string{"puma", "-b", "tcp://127.0.0.1:{supervise.port}", "-t", "16:16", "-e", "production", "config.ru"},
		"ready":        map[string]any{"http": "/"},
		"stop_timeout": "5s", "ready_timeout": "30s",
	}
	if port == "auto" {
		p["ready"] = map[string]any{"http": "/?probe"} // a path alone: on the process's own port
	}
	return p
}

func needPuma(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("puma"); err != nil {
		t.Skip("Debian's puma is not installed (scripts/deps.sh installs it)")
	}
}

// pumaUnderLoad starts Caddy with cfg, waits until web is ready and puts it
// under load of 20 ms requests from 16 clients.
func pumaUnderLoad(t *testing.T, cfg map[string]any, httpPort int) (*caddyProc, *load) {
	t.Helper()
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/?ms=20", httpPort), 16)
	l.waitOK(t, 100, 10*time.Second)
	l.churn.Store(true) // see serveUnderLoad
	return c, l
}

// Blue/green (`port auto` + `ready`, dynamic upstream): a reload that changes
// the app's env under load; a reload to a release that exits at boot; an
// admin restart whose new instance exits at boot; a reload that fails
// elsewhere (a busy port), until both app orders ran. Zero failed
// requests, no request slower than the app's 20 ms + 1.2 s (well below a
// boot), the old PID
// serves after each failure, and Caddy keeps running.
func TestPumaBlueGreen(t *testing.T) {
	needPuma(t)
	httpPort := freePort(t)
	brokenFile := filepath.Join(t.TempDir(), "broken")
	web := func(release string) map[string]any {
		return pumaProc(t, release, "auto", map[string]string{"BROKEN_FILE": brokenFile})
	}
	cfg := proxyToSupervised(t, httpPort, "web", web("v1"))
	c, l := pumaUnderLoad(t, cfg, httpPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	first := status(t, cfg, "web")

	// a reload that changes env: the new Puma boots beside the old one
	next := proxyToSupervised(t, httpPort, "web", web("v2"))
	next["admin"] = cfg["admin"]
	c.load(t, next)
	v2 := status(t, cfg, "web")
	if v2.PID == first.PID || v2.State != stateReady {
		t.Fatalf("after the reload: %+v, want a new instance, ready", v2)
	}
	assertGet(t, url, fmt.Sprintf("pid %d release v2", v2.PID))
	stopped := c.waitLog(fmt.Sprintf(`"msg":"stopping process","pid":%d`, first.PID), 10*time.Second)
	ready := c.waitLog(`"msg":"the new instance is ready and serves"`, time.Second)
	if logTimes(t, []string{stopped})[0].Before(logTimes(t, []string{ready})[0]) {
		t.Errorf("the old Puma was stopped before the new one was ready:\n%s\n%s", stopped, ready)
	}
	c.waitLog(fmt.Sprintf(`"msg":"process exited","pid":%d`, first.PID), 10*time.Second)

	// a reload to a release that exits at boot fails; v2 serves on
	broken := proxyToSupervised(t, httpPort, "web", web("broken"))
	broken["admin"] = cfg["admin"]
	code, body := c.tryLoad(t, broken)
	if code == 200 || !strings.Contains(body, "exit status 3") || !strings.Contains(body, "boom: release broken does not boot") {
		t.Errorf("reload to a broken release: %d %s", code, body)
	}
	if st := status(t, cfg, "web"); st.PID != v2.PID || st.State != stateReady {
		t.Errorf("after the failed reload: %+v, want pid %d ready", st, v2.PID)
	}

	// an admin restart whose new instance exits at boot: 500, v2 serves on
	if err := os.WriteFile(brokenFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Error string }
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr); code != 500 || !strings.Contains(apiErr.Error, "exit status 3") {
		t.Errorf("admin restart of a broken release: %d %q", code, apiErr.Error)
	}
	os.Remove(brokenFile)
	if st := status(t, cfg, "web"); st.PID != v2.PID || st.State != stateReady {
		t.Errorf("after the failed restart: %+v, want pid %d ready", st, v2.PID)
	}

	// a reload with a changed env that fails elsewhere (a new site's port
	// is busy): v2 serves on, whichever app Caddy starts first
	failElsewhereUntilBothOrders(t, c, cfg, httpPort, web, func(attempt int, _ bool) {
		if st := status(t, cfg, "web"); st.PID != v2.PID || st.State != stateReady {
			t.Fatalf("after failed reload %d: %+v, want pid %d ready", attempt, st, v2.PID)
		}
	})
	assertGet(t, url, fmt.Sprintf("pid %d release v2", v2.PID))

	// (no request waited for a boot: Puma takes over 2 s to boot here; the
	// margin is for a loaded 2-core machine under the race detector, where
	// 0.5 s was exceeded once in a while)
	finishUnderLoad(t, c, l, 20*time.Millisecond+1200*time.Millisecond, 20*time.Second)
}

// A fixed port (the first row of issue 10's table): the old Puma must stop
// before the new one binds its port. With the dynamic upstream and
// lb_try_duration, requests wait while the new one boots instead of
// failing (they pay the gap); a release that exits at boot fails the
// reload, and the old definition is started again by itself. (A static
// upstream cannot know that Puma is stopping: the connections Caddy opens
// to it meanwhile are reset when Puma closes its listener, and fail with
// 502; `socket` avoids that.)
func TestPumaFixedPort(t *testing.T) {
	needPuma(t)
	httpPort, appPort := freePort(t), freePort(t)
	cfg := proxyToSupervised(t, httpPort, "web", pumaProc(t, "v1", strconv.Itoa(appPort), nil))
	c, l := pumaUnderLoad(t, cfg, httpPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)

	procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
	procs[0] = pumaProc(t, "v2", strconv.Itoa(appPort), nil)
	c.load(t, cfg)
	v2 := status(t, cfg, "web")
	assertGet(t, url, fmt.Sprintf("pid %d release v2", v2.PID))

	procs[0] = pumaProc(t, "broken", strconv.Itoa(appPort), nil)
	code, body := c.tryLoad(t, cfg)
	if code == 200 || !strings.Contains(body, "the previous definition was started again") {
		t.Errorf("reload to a broken release: %d %s", code, body)
	}
	line := c.waitLog(`"msg":"the new definition did not take over: the previous one was started again"`, 10*time.Second)
	revived := logPID(t, line)
	c.waitLog(fmt.Sprintf(`"to":"ready","pid":%d`, revived), 30*time.Second)
	assertGet(t, url, fmt.Sprintf("pid %d release v2", revived))

	finishUnderLoad(t, c, l, 0, 20*time.Second) // the slowest request waits for the new Puma's boot
}

// logPID is the pid field of a log line.
func logPID(t testing.TB, line string) int {
	t.Helper()
	_, rest, ok := strings.Cut(line, `"pid":`)
	if !ok {
		t.Fatalf("no pid in %s", line)
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	pid, err := strconv.Atoi(rest[:end])
	if err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	return pid
}
