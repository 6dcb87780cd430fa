// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"net"
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

// socketConfig is a config whose HTTP server proxies, through a static
// upstream with lb_try_duration, to the address of the socket Caddy holds
// for the process.
func socketConfig(t testing.TB, httpPort int, dial string, proc map[string]any) map[string]any {
	t.Helper()
	cfg := testConfig(t, httpPort, 0, proc)
	handler := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)["handle"].([]any)[0].(map[string]any)
	handler["upstreams"] = []any{map[string]any{"dial": dial}}
	handler["load_balancing"] = map[string]any{"try_duration": "15s"}
	return cfg
}

// With `socket`, Caddy holds the app's listening socket: an admin restart,
// a reload that changes env, and a kill -9 with restart on_failure, each
// under 16 clients with an app that takes 2 s to boot, cost no failed and
// no refused request: connections wait in the kernel's queue while no
// instance accepts. The static upstream dials the socket's address.
func TestSocketTransitionsUnderLoad(t *testing.T) {
	s := newSink(t)
	httpPort, appPort := freePort(t), freePort(t)
	web := func(release string) map[string]any {
		return map[string]any{
			"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-delay", "2s"},
			"socket": fmt.Sprintf("127.0.0.1:%d", appPort), "restart": "on_failure", "stop_timeout": "5s",
			"env": map[string]string{"RELEASE": release},
		}
	}
	cfg := socketConfig(t, httpPort, fmt.Sprintf("127.0.0.1:%d", appPort), web("v1"))
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)
	if !up.activated {
		t.Fatal("the upstream did not get its socket")
	}
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), 16)
	l.waitOK(t, 100, 10*time.Second)

	// an admin restart in place: the new instance takes over the socket
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", nil); code != 200 {
		t.Fatalf("restart: %d", code)
	}
	next := s.next(t, 10*time.Second)
	up.dead(t, 5*time.Second)
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)

	// a reload that changes env: the old instance stops, the new one boots
	l.churn.Store(true) // Caddy's own listener swap (see serveUnderLoad)
	procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
	procs[0] = web("v2")
	c.load(t, cfg)
	reloaded := s.next(t, 10*time.Second)
	next.dead(t, 5*time.Second)
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)

	// a crash: kill -9, restart on_failure
	if err := syscall.Kill(reloaded.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	crashed := s.next(t, 10*time.Second)
	reloaded.dead(t, 5*time.Second)
	l.waitOK(t, l.ok.Load()+100, 10*time.Second)
	if !next.activated || !reloaded.activated || !crashed.activated {
		t.Error("an instance did not get the socket")
	}

	finishUnderLoad(t, c, l, 0, 10*time.Second) // the slowest request waits for an instance's 2 s boot
}

// What a process with a socket gets: the socket on descriptor 3 (the one
// Caddy holds), LISTEN_FDS=1, LISTEN_PID its own PID, LISTEN_FDNAMES its
// name, `{supervise.fd}` = 3, and no other descriptor; Caddy's own LISTEN_*
// variables reach no child. A stale unix socket file is replaced, and the
// file is removed when Caddy exits.
func TestSocketEnvironment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // as a killed Caddy leaves it
	cfgPath := filepath.Join(t.TempDir(), "caddy.json")
	cfg := testConfig(t, 0, 0,
		map[string]any{"name": "web", "command": []string{"sleep", "60", "{supervise.fd}"}, "socket": "unix/" + path},
		map[string]any{"name": "plain", "command": []string{"sleep", "60"}},
	)
	writeJSON(t, cfgPath, cfg)
	c := startCaddyFile(t, cfgPath, "", "LISTEN_FDS=2", "LISTEN_PID=1", "LISTEN_FDNAMES=caddy:other")
	c.waitLogCount(`"msg":"the program replaced the exec shim"`, 2, 10*time.Second)
	if line := c.waitLog(`"msg":"process started","pid":`+strconv.Itoa(status(t, cfg, "web").PID), time.Second); !strings.Contains(line, `"command":["sleep","60","3"]`) {
		t.Errorf("{supervise.fd} not replaced: %s", line)
	}

	web := status(t, cfg, "web")
	env := procEnv(t, web.PID)
	for k, want := range map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": strconv.Itoa(web.PID), "LISTEN_FDNAMES": "web"} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	fd3, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", web.PID))
	if err != nil || !strings.HasPrefix(fd3, "socket:") {
		t.Fatalf("descriptor 3 of the process: %q %v", fd3, err)
	}
	if !slices.ContainsFunc(procFDLinks(t, c.cmd.Process.Pid), func(l string) bool { return strings.HasSuffix(l, " "+fd3) }) {
		t.Errorf("descriptor 3 of the process (%s) is not the socket Caddy holds", fd3)
	}
	if links := procFDLinks(t, web.PID); len(links) != 4 {
		t.Errorf("the process has descriptors %v, want 0-3 only", links)
	}
	for k := range procEnv(t, status(t, cfg, "plain").PID) {
		if strings.HasPrefix(k, "LISTEN_") {
			t.Errorf("a process without socket got %s", k)
		}
	}
	// the stale file was replaced: Caddy's socket listens there
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the socket does not accept: %v", err)
	}
	conn.Close()
	if st := status(t, cfg, "web"); st.Socket != "unix/"+path {
		t.Errorf("status: socket %q", st.Socket)
	}

	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket file is still there after Caddy's exit: %v", err)
	}
}

// An address in use is an error at start that names the process, the
// option and the value, and nothing is started.
func TestSocketInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfgPath := filepath.Join(t.TempDir(), "caddy.json")
	writeJSON(t, cfgPath, testConfig(t, 0, 0,
		map[string]any{"name": "first", "command": []string{"sleep", "60"}},
		map[string]any{"name": "web", "command": []string{"sleep", "60"}, "socket": busy.Addr().String()},
	))
	out, err := exec.Command(caddyBin, "run", "--config", cfgPath).CombinedOutput()
	want := fmt.Sprintf(`process \"web\": socket \"%s\": listen tcp %s: bind: address already in use`, busy.Addr(), busy.Addr())
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("caddy run: %v, want an error with %s:\n%s", err, want, out)
	}
	if strings.Contains(string(out), `"msg":"process started"`) {
		t.Errorf("a process was started:\n%s", out)
	}
}

// procEnv reads a process's environment.
func procEnv(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := make(map[string]string)
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// procFDLinks lists what a process's descriptors point to.
func procFDLinks(t testing.TB, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, e := range entries {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			links = append(links, e.Name()+" "+l)
		}
	}
	return links
}

// Debian's real app servers take the socket Caddy holds, each as it does,
// and an admin restart under 16 clients costs no failed and no refused
// request: Puma 5.6 (`--bind-to-activated-sockets only`, on a unix
// socket), gunicorn 20.1 (reads LISTEN_FDS itself) and uvicorn 0.17
// (`--fd {supervise.fd}`).
func TestSocketRealServers(t *testing.T) {
	puma, err := filepath.Abs("testdata/puma")
	if err != nil {
		t.Fatal(err)
	}
	python, err := filepath.Abs("testdata/python")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, need, dir string
		command         []string
		unix            bool
	}{
		{"puma", "puma", puma, []string{"puma", "--bind-to-activated-sockets", "only", "-t", "16:16", "-e", "production", "config.ru"}, true},
		{"gunicorn", "/usr/bin/gunicorn", python, []string{"/usr/bin/gunicorn", "-w", "2", "--graceful-timeout", "5", "app:wsgi_app"}, false},
		{"uvicorn", "/usr/bin/python3", python, []string{"/usr/bin/python3", "-m", "uvicorn", "--fd", "{supervise.fd}", "app:asgi_app"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.need); err != nil {
				t.Skipf("%s is not installed (scripts/deps.sh installs it)", tc.need)
			}
			if tc.name == "uvicorn" && exec.Command("/usr/bin/python3", "-c", "import uvicorn").Run() != nil {
				t.Skip("python3-uvicorn is not installed (scripts/deps.sh installs it)")
			}
			httpPort := freePort(t)
			sock, dial := fmt.Sprintf("127.0.0.1:%d", freePort(t)), ""
			dial = sock
			if tc.unix {
				path := filepath.Join(t.TempDir(), "app.sock")
				sock, dial = "unix/"+path, "unix/"+path
			}
			proc := map[string]any{
				"name": "web", "command": tc.command, "dir": tc.dir, "socket": sock, "stop_timeout": "10s",
				"env": map[string]string{"BOOT_DELAY": "1"},
			}
			cfg := socketConfig(t, httpPort, dial, proc)
			c := startCaddy(t, cfg)
			l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/?ms=20", httpPort), 16)
			l.waitOK(t, 100, 20*time.Second)
			before := status(t, cfg, "web").PID
			if code := adminDo(t, cfg, "POST", "/supervise/web/restart", nil); code != 200 {
				t.Fatalf("restart: %d", code)
			}
			if after := status(t, cfg, "web").PID; after == before {
				t.Fatalf("the restart kept pid %d", before)
			}
			l.waitOK(t, l.ok.Load()+200, 20*time.Second)
			finishUnderLoad(t, c, l, 0, 20*time.Second)
		})
	}
}

// A process that ended for good with on_end keep_running keeps its socket
// while the config has it: a request sent meanwhile waits in the queue, and
// the instance a later reload starts answers it.
func TestSocketKeptAfterEnd(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	path := filepath.Join(t.TempDir(), "app.sock")
	ended := map[string]any{"name": "web", "command": []string{"sh", "-c", "exit 3"}, "socket": "unix/" + path, "on_end": "keep_running"}
	cfg := socketConfig(t, httpPort, "unix/"+path, ended)
	c := startCaddy(t, cfg)
	c.waitLog(`"msg":"process ended; Caddy keeps running (on_end keep_running)"`, 10*time.Second)
	conn, err := net.Dial("unix", path) // the kernel queues it: the socket is open
	if err != nil {
		t.Fatalf("the socket of the ended process is closed: %v", err)
	}
	conn.Close()
	answer := inBackground(func() (*http.Response, error) { return http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort)) })
	select {
	case a := <-answer:
		t.Fatalf("answered with no process running: %s", a)
	case <-time.After(300 * time.Millisecond): // the request waits in the queue: nothing to await but time
	}
	procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
	procs[0] = map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr()}, "socket": "unix/" + path}
	c.load(t, cfg)
	up := s.next(t, 10*time.Second)
	if got, want := <-answer, fmt.Sprintf("200 hello from upstream pid %d\n", up.pid); got != want {
		t.Errorf("the queued request got %q, want %q", got, want)
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// A reload that moves a process to an address that binds the same port
// (`:PORT` to `0.0.0.0:PORT`, to `port PORT`, to `127.0.0.1:PORT`) works:
// the old instance stops first, its socket closes, the new one binds. Under
// load no request fails: they wait in the dynamic upstream through the gap.
// A broken release on the way brings the old definition back, socket and
// all.
func TestSocketMovesOnSamePort(t *testing.T) {
	s := newSink(t)
	httpPort, appPort := freePort(t), freePort(t)
	web := func(release, socket string) map[string]any {
		script := `if [ "$RELEASE" = broken ]; then echo "boom"; exit 3; fi; exec "$UPSTREAM" -events "$EVENTS" -delay 200ms`
		p := map[string]any{"name": "web", "command": []string{"sh", "-c", script}, "restart": "on_failure", "stop_timeout": "5s",
			"env": map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()}, "ready": map[string]any{"http": ""}}
		if socket == "" {
			p["port"], p["ready"] = strconv.Itoa(appPort), map[string]any{"tcp": ""}
		} else {
			p["socket"] = socket
		}
		return p
	}
	cfg, c, up, l := serveUnderLoad(t, s, httpPort, web("v1", fmt.Sprintf(":%d", appPort)), 8)
	if !up.activated {
		t.Fatal("the first instance did not get its socket")
	}
	for i, step := range []struct{ release, socket string }{
		{"v2", fmt.Sprintf("0.0.0.0:%d", appPort)},
		{"broken", ""},
		{"v3", ""},
		{"v4", fmt.Sprintf("127.0.0.1:%d", appPort)},
	} {
		next := proxyToSupervised(t, httpPort, "web", web(step.release, step.socket))
		next["admin"] = cfg["admin"]
		code, body := c.tryLoad(t, next)
		if step.release == "broken" {
			if code == 200 || !strings.Contains(body, "the previous definition was started again") {
				t.Fatalf("step %d: the broken release: %d %s", i, code, body)
			}
		} else if code != 200 {
			t.Fatalf("step %d: reload to %+v: %d %s", i, step, code, body)
		}
		up.dead(t, 10*time.Second)
		up = s.next(t, 10*time.Second)
		want := step.socket != "" || step.release == "broken" // the broken one brings the socket back
		if up.activated != want {
			t.Errorf("step %d (%+v): the instance got a socket: %v, want %v", i, step, up.activated, want)
		}
		c.waitLog(fmt.Sprintf(`"to":"ready","pid":%d`, up.ppidOrSelf()), 10*time.Second)
		l.waitOK(t, l.ok.Load()+50, 10*time.Second)
	}
	finishUnderLoad(t, c, l, 0, 10*time.Second)
}
