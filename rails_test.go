// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// railsDir is the one-file Rails 6.1 app (Debian's ruby-railties).
func railsDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("testdata/rails")
	if err != nil {
		t.Fatal(err)
	}
	if exec.Command("ruby", "-e", `require "action_controller/railtie"`).Run() != nil {
		t.Skip("Debian's ruby-railties is not installed (scripts/deps.sh installs it)")
	}
	needPuma(t)
	return dir
}

// rawClient leaves compression to the test, and gives up after 20 s.
var rawClient = &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}

// httpGet GETs url through rawClient with the header pairs given (a later
// pair wins over an earlier one) and returns the response and its body.
func httpGet(t testing.TB, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := rawClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// superviseCaddy runs `caddy supervise FLAGS -- COMMAND` in dir with
// Thruster's variables in env.
func superviseCaddy(t testing.TB, dir string, flags, command []string, env ...string) *caddyProc {
	t.Helper()
	args := append([]string{caddyBin, "supervise"}, flags...)
	args = append(append(args, "--"), command...)
	return runCaddy(t, dir, args, env...)
}

// Thruster's line, with Caddy: `caddy supervise --ready /up -- bin/rails
// server` in a real Rails app that takes 2 s to boot. Clients that fire
// from the moment Caddy listens get only 200s (no 502 while Rails boots); a
// page; send_file answered by Caddy through X-Sendfile (the app sends no
// body; Content-Length, Range and the app's Content-Disposition right; no
// X-Sendfile header to the client); gzip on a large page; files of public/
// served from disk (never reaching the app), a precompressed asset with a
// long cache; X-Request-Start and X-Sendfile-Type reach the app; and on
// SIGTERM under load no request fails, the app exits after the drain and
// Caddy exits 0.
func TestRailsThroughCaddySupervise(t *testing.T) {
	dir := railsDir(t)
	httpPort, appPort, adminPort := freePort(t), freePort(t), freePort(t)
	c := superviseCaddy(t, dir,
		[]string{"--ready", "/up", "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--output", "log"}, // Rails' lines as log entries, for the test to find
		[]string{"bin/rails", "server"},
		"HTTP_PORT="+strconv.Itoa(httpPort), "THRUSTER_TARGET_PORT="+strconv.Itoa(appPort), "TARGET_PORT=1",
		"RAILS_ENV=production", "BOOT_DELAY=2")
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	l := startLoad(base+"/slow?ms=20", 16) // while Rails boots
	c.waitLog(`"to":"ready"`, 30*time.Second)
	l.waitOK(t, 100, 20*time.Second)

	get := func(path string, header ...string) (*http.Response, []byte) {
		t.Helper()
		return httpGet(t, base+path, header...)
	}

	if resp, body := get("/"); resp.StatusCode != 200 || !bytes.Contains(body, []byte("hello from rails 6.1")) {
		t.Errorf("GET /: %s %q", resp.Status, body)
	}

	report, err := os.ReadFile(filepath.Join(dir, "files", "report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := get("/report", "Accept-Encoding", "identity")
	switch {
	case resp.StatusCode != 200 || !bytes.Equal(body, report):
		t.Errorf("GET /report: %s, %d bytes, want the file's %d", resp.Status, len(body), len(report))
	case resp.ContentLength != int64(len(report)):
		// Caddy's file_server answered: the app streams with chunks
		t.Errorf("GET /report: Content-Length %d, want %d", resp.ContentLength, len(report))
	case resp.Header.Get("X-Sendfile") != "":
		t.Errorf("GET /report: the client got X-Sendfile: %s", resp.Header.Get("X-Sendfile"))
	case !strings.Contains(resp.Header.Get("Content-Disposition"), `attachment; filename="report.txt"`):
		t.Errorf("GET /report: Content-Disposition %q", resp.Header.Get("Content-Disposition"))
	}
	c.waitLog("Sent file "+filepath.Join(dir, "files", "report.txt"), 5*time.Second) // through send_file
	if resp, body := get("/report", "Range", "bytes=100-199"); resp.StatusCode != 206 || !bytes.Equal(body, report[100:200]) {
		t.Errorf("GET /report with a range: %s, %d bytes", resp.Status, len(body))
	}
	if resp, body := get("/report", "Accept-Encoding", "gzip"); resp.Header.Get("Content-Encoding") != "gzip" || len(body) >= len(report) {
		t.Errorf("GET /report compressed: Content-Encoding %q, %d bytes", resp.Header.Get("Content-Encoding"), len(body))
	}

	resp, body = get("/big", "Accept-Encoding", "gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" || len(body) > 20000 {
		t.Errorf("GET /big: Content-Encoding %q, %d bytes", resp.Header.Get("Content-Encoding"), len(body))
	}

	if resp, body := get("/robots.txt"); resp.StatusCode != 200 || string(body) != "User-agent: *\n" {
		t.Errorf("GET /robots.txt: %s %q", resp.Status, body)
	}
	resp, _ = get("/assets/app-0123abcd.css", "Accept-Encoding", "gzip")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
		t.Errorf("GET an asset: %s, Content-Encoding %q, Cache-Control %q", resp.Status, resp.Header.Get("Content-Encoding"), resp.Header.Get("Cache-Control"))
	}
	if lines := c.logs.lines(`Started GET \"/robots.txt\"`); len(lines) > 0 {
		t.Errorf("a file of public/ reached the app: %s", lines[0])
	}
	if lines := c.logs.lines(`Started GET \"/assets/`); len(lines) > 0 {
		t.Errorf("an asset reached the app: %s", lines[0])
	}

	_, body = get("/headers")
	if !bytes.Contains(body, []byte("HTTP_X_REQUEST_START: t=1")) || !bytes.Contains(body, []byte("HTTP_X_SENDFILE_TYPE: X-Sendfile")) {
		t.Errorf("the app got these headers:\n%s", body)
	}
	if _, body = get("/headers", "X-Request-Start", "t=42"); !bytes.Contains(body, []byte("HTTP_X_REQUEST_START: t=42\n")) {
		t.Errorf("an X-Request-Start from the client was replaced:\n%s", body)
	}

	l.waitOK(t, l.ok.Load()+100, 10*time.Second)
	c.signal(syscall.SIGTERM)
	if code := c.wait(30 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	st := l.stop()
	t.Logf("load: %d ok, %d refused once the listener closed, slowest %s (the 2 s boot)", st.ok, st.refused, time.Duration(l.slowest.Load()))
	if len(st.failures) > 0 {
		t.Errorf("%d requests failed; first: %s", len(st.failures), st.failures[0])
	}
	noFailedRequests(t, c)
	drained := logTimes(t, c.logs.lines(`"msg":"drain over"`))
	stopped := logTimes(t, c.logs.lines(`"msg":"stopping process"`))
	if len(drained) != 1 || len(stopped) != 1 || stopped[0].Before(drained[0]) {
		t.Errorf("the app was not signalled once after the drain: drain %v, stop %v", drained, stopped)
	}
}

// `caddy supervise` exits with the app's status when the app ends; a bad
// variable is an error that names it (the THRUSTER_ prefix wins); the
// printed Caddyfile is one Caddy runs; while the app is not ready, a request
// waits --wait and then gets BAD_GATEWAY_PAGE.
func TestCaddySuperviseCommand(t *testing.T) {
	dir := t.TempDir()
	adminPort := freePort(t)
	admin := []string{"--admin", fmt.Sprintf("127.0.0.1:%d", adminPort)}
	env := []string{"HTTP_PORT=" + strconv.Itoa(freePort(t)), "TARGET_PORT=" + strconv.Itoa(freePort(t))}

	c := superviseCaddy(t, dir, admin, []string{"sh", "-c", "exit 7"}, env...)
	if code := c.wait(20 * time.Second); code != 7 {
		t.Errorf("caddy supervise -- sh -c 'exit 7': exit code %d, want 7", code)
	}

	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"HTTP_PORT=abc"}, `HTTP_PORT "abc": must be a port number`},
		{[]string{"HTTP_PORT=8080", "THRUSTER_HTTP_PORT=x"}, `THRUSTER_HTTP_PORT "x": must be a port number`},
		{[]string{"X_SENDFILE_ENABLED=yes"}, `X_SENDFILE_ENABLED "yes": must be true or false`},
		{[]string{"MAX_REQUEST_BODY=-1"}, `MAX_REQUEST_BODY "-1": must be a whole number of bytes`},
		{[]string{"EAB_KID=k"}, `EAB_KID and EAB_HMAC_KEY: set both or neither`},
	} {
		c := superviseCaddy(t, dir, admin, []string{"sleep", "60"}, tc.env...)
		if code := c.wait(20 * time.Second); code == 0 || len(c.logs.lines(tc.want)) == 0 {
			t.Errorf("%v: exit code %d, log:\n%s\nwant an error with %s", tc.env, code, c.logs.String(), tc.want)
		}
	}

	out, err := exec.Command(caddyBin, "supervise", "--print-caddyfile", "--ready", "/up", "--", "bin/rails", "server", "-b", "{supervise.port} x").Output()
	if err != nil || !bytes.Contains(out, []byte("supervise bin/rails server -b `{supervise.port} x` {")) {
		t.Fatalf("--print-caddyfile: %v\n%s", err, out)
	}
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(caddyBin, "adapt", "--config", file).CombinedOutput(); err != nil {
		t.Errorf("caddy adapt of the printed Caddyfile: %v\n%s", err, out)
	}

	page := filepath.Join(dir, "public", "502.html")
	if err := os.MkdirAll(filepath.Dir(page), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, []byte("<h1>booting</h1>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c = superviseCaddy(t, dir, append(admin, "--ready", "/up", "--wait", "1s"), []string{"sleep", "60"}, env...)
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	resp, err := http.Get("http://127.0.0.1:" + strings.TrimPrefix(env[0], "HTTP_PORT=") + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(body) != "<h1>booting</h1>\n" {
		t.Errorf("a request while the app is not ready: %s %q, want 503 with BAD_GATEWAY_PAGE", resp.Status, body)
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// `caddy supervise --blue-green` with Rails: an admin restart starts the
// new Rails beside the old one (each with its own pidfile: rails server
// refuses to start while a pidfile names a live server), and under load no
// request fails.
func TestRailsBlueGreenRestart(t *testing.T) {
	dir := railsDir(t)
	httpPort, adminPort := freePort(t), freePort(t)
	cfg := map[string]any{"admin": map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", adminPort)}}
	c := superviseCaddy(t, dir,
		[]string{"--blue-green", "--ready", "/up", "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--output", "log"},
		[]string{"bin/rails", "server"},
		"HTTP_PORT="+strconv.Itoa(httpPort), "RAILS_ENV=production", "BOOT_DELAY=1")
	c.waitLog(`"to":"ready"`, 30*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/slow?ms=20", httpPort), 8)
	l.waitOK(t, 50, 20*time.Second)
	before := status(t, cfg, "app")
	var after Status
	if code := adminDo(t, cfg, "POST", "/supervise/app/restart", &after); code != 200 || after.PID == before.PID {
		t.Fatalf("restart: %d %+v (before %+v)", code, after, before)
	}
	l.waitOK(t, l.ok.Load()+50, 20*time.Second)
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// cable is an Action Cable client subscribed to the test app's PidChannel.
type cable struct {
	ws *wsClient
}

const pidChannel = `{"channel":"PidChannel"}`

// dialCable connects to /cable, subscribes to PidChannel and returns the
// client with the PID that answered.
func dialCable(t testing.TB, addr string) (*cable, int) {
	t.Helper()
	ws, err := dialWS(addr, "/cable", "Sec-WebSocket-Protocol: actioncable-v1-json", "Origin: http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &cable{ws}
	cmd, _ := json.Marshal(map[string]string{"command": "subscribe", "identifier": pidChannel})
	if err := ws.send(string(cmd)); err != nil {
		t.Fatal(err)
	}
	return c, c.nextPID(t)
}

// pid asks the channel whoami and returns the PID that answered.
func (c *cable) pid(t testing.TB) int {
	t.Helper()
	cmd, _ := json.Marshal(map[string]string{"command": "message", "identifier": pidChannel, "data": `{"action":"whoami"}`})
	if err := c.ws.send(string(cmd)); err != nil {
		t.Fatal(err)
	}
	return c.nextPID(t)
}

// nextPID reads until the channel transmits a PID (welcome, pings and the
// subscription's confirmation come in between).
func (c *cable) nextPID(t testing.TB) int {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(20 * time.Second); ; {
		m, err := c.ws.read(time.Until(deadline))
		if err != nil {
			t.Fatalf("action cable: %v (messages: %q)", err, seen)
		}
		seen = append(seen, m)
		var msg struct {
			Message struct {
				PID int `json:"pid"`
			} `json:"message"`
		}
		if json.Unmarshal([]byte(m), &msg) == nil && msg.Message.PID != 0 {
			return msg.Message.PID
		}
	}
}

// The one line with Action Cable and server-sent events
// (ActionController::Live) in a real Rails app, blue/green: an admin
// restart under load leaves the open cable and SSE stream on the old Puma,
// seconds later, while new cables reach the new one; at SIGTERM every
// cable gets its close frame 1001 and every SSE response ends cleanly,
// and Caddy exits in seconds, not the drain budget.
func TestRailsActionCableAcrossRestartAndExit(t *testing.T) {
	dir := railsDir(t)
	if exec.Command("ruby", "-e", `require "action_cable/engine"`).Run() != nil {
		t.Skip("ruby-actioncable is not installed (scripts/deps.sh installs it)")
	}
	httpPort, adminPort := freePort(t), freePort(t)
	cfg := map[string]any{"admin": map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", adminPort)}}
	c := superviseCaddy(t, dir,
		[]string{"--blue-green", "--ready", "/up", "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--output", "log"},
		[]string{"bin/rails", "server"},
		"HTTP_PORT="+strconv.Itoa(httpPort), "RAILS_ENV=production")
	c.waitLog(`"to":"ready"`, 30*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	l := startLoad("http://"+addr+"/slow?ms=20", 8)
	l.waitOK(t, 50, 20*time.Second)
	cab, oldPID := dialCable(t, addr)
	sse, err := openSSE("http://" + addr + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	if p := ssePID(t, sse); p != oldPID {
		t.Fatalf("the cable is on %d, the SSE stream on %d", oldPID, p)
	}

	var st Status
	if code := adminDo(t, cfg, "POST", "/supervise/app/restart", &st); code != 200 || st.PID == oldPID {
		t.Fatalf("restart: %d %+v", code, st)
	}
	for i := range 10 { // two seconds of events
		ev, err := sse.next(5 * time.Second)
		if err != nil || pidIn(t, ev) != oldPID {
			t.Fatalf("sse event %d after the restart: %q %v, want it from %d", i, ev, err, oldPID)
		}
		if i%3 == 0 {
			if p := cab.pid(t); p != oldPID {
				t.Fatalf("the cable is answered by %d after the restart, want %d", p, oldPID)
			}
		}
	}
	cab2, newPID := dialCable(t, addr)
	if newPID != st.PID {
		t.Fatalf("a new cable reached %d, want the new instance %d", newPID, st.PID)
	}
	if old := instanceOf(t, status(t, cfg, "app"), oldPID); old.Streams != (streamCounts{1, 1}) {
		t.Errorf("the old instance's streams: %+v", old.Streams)
	}
	l.waitOK(t, l.ok.Load()+50, 20*time.Second)
	st2 := l.stopNoFailures(t)
	t.Logf("load: %d ok", st2.ok)

	sig := c.signal(syscall.SIGTERM)
	for _, cb := range []*cable{cab, cab2} {
		wantClose1001(t, cb.ws, 10*time.Second)
	}
	wantCleanEnd(t, sse, 10*time.Second)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	if exit := c.exited.Sub(sig); exit > 5*time.Second {
		t.Errorf("Caddy's exit took %s", exit)
	}
	noFailedRequests(t, c)
}

// uploadsTree makes an app's stored uploads under dir, one per ID, each
// under the name its user chose, beside a real config/master.key: names
// that, read as URLs (percent-decoded, cut at ? and #), reach the key or
// another user's file. It returns the uploads' directory and what each ID
// must answer.
func uploadsTree(t *testing.T, dir string) (string, map[string]string) {
	t.Helper()
	app := filepath.Join(dir, "srv", "app")
	writeFile(t, filepath.Join(app, "config", "master.key"), "THE MASTER KEY")
	writeFile(t, filepath.Join(app, "uploads", "9", "secret.pdf"), "ANOTHER USER'S FILE")
	want := make(map[string]string)
	for id, name := range map[string]string{
		"1": "..%2F..%2Fconfig%2Fmaster.key", // Rack unescaped `..%252F..` once
		"2": "..%2F9%2Fsecret.pdf",
		"3": "a#b",
		"4": "report.pdf?download=1",
	} {
		writeFile(t, filepath.Join(app, "uploads", id, name), "upload "+id+" as its user named it")
		want[id] = "upload " + id + " as its user named it"
	}
	return filepath.Join(app, "uploads"), want
}

// checkUploads GETs each upload through Caddy: the file the app named,
// never the master key or another user's file.
func checkUploads(t *testing.T, base string, want map[string]string) {
	t.Helper()
	for id, body := range want {
		resp, got := httpGet(t, base+"/uploads/"+id)
		if resp.StatusCode != 200 || string(got) != body {
			t.Errorf("GET /uploads/%s: %s %q, want %q", id, resp.Status, got, body)
		}
		if resp.Header.Get("X-Sendfile") != "" || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
			t.Errorf("GET /uploads/%s: X-Sendfile %q, Content-Disposition %q", id, resp.Header.Get("X-Sendfile"), resp.Header.Get("Content-Disposition"))
		}
	}
}

// X-Sendfile is a file path, never a URL: stored uploads whose names hold
// %2F, .., # and ? are served as themselves — through the one line and
// through the Rails example's Caddyfile (run with the test app in place of
// /rails, which has no .env, and its admin endpoint on TCP) — never the
// config/master.key their decoded names reach (as rewrite + file_server
// served it).
func TestRailsXSendfileIsAPath(t *testing.T) {
	appDir := railsDir(t)
	uploads, want := uploadsTree(t, t.TempDir())

	t.Run("the one line", func(t *testing.T) {
		httpPort, adminPort := freePort(t), freePort(t)
		c := superviseCaddy(t, appDir,
			[]string{"--ready", "/up", "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--output", "log"},
			[]string{"bin/rails", "server"},
			"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(freePort(t)), "RAILS_ENV=production", "UPLOADS_DIR="+uploads)
		c.waitLog(`"to":"ready"`, 30*time.Second)
		c.waitLog(`"msg":"server running"`, 20*time.Second)
		checkUploads(t, fmt.Sprintf("http://127.0.0.1:%d", httpPort), want)
		c.signal(syscall.SIGTERM)
		if code := c.wait(30 * time.Second); code != 0 {
			t.Errorf("caddy exit code %d", code)
		}
	})

	t.Run("the Rails example", func(t *testing.T) {
		src, err := os.ReadFile("examples/rails/Caddyfile")
		if err != nil {
			t.Fatal(err)
		}
		adminPort, httpPort := freePort(t), freePort(t)
		var lines []string
		for _, l := range strings.Split(string(src), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "admin unix//rails/") {
				l = fmt.Sprintf("\tadmin 127.0.0.1:%d", adminPort)
			}
			lines = append(lines, strings.ReplaceAll(l, " /rails", " "+appDir))
		}
		file := filepath.Join(t.TempDir(), "Caddyfile")
		if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		c := startCaddyFile(t, file, "caddyfile", fmt.Sprintf("SITE_ADDRESS=http://127.0.0.1:%d", httpPort), "UPLOADS_DIR="+uploads)
		c.waitLog(`"to":"ready"`, 30*time.Second)
		c.waitLog(`process web: env_file \"`+appDir+`/.env\" does not exist; it is optional`, time.Second)
		checkUploads(t, fmt.Sprintf("http://127.0.0.1:%d", httpPort), want)
		c.signal(syscall.SIGTERM)
		if code := c.wait(40 * time.Second); code != 0 {
			t.Errorf("caddy exit code %d", code)
		}
	})
}
