// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// Issue 19: what a newcomer meets. Each test is a row of the table.

import (
	"context"
	"fmt"
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

// An app that listens elsewhere than where it is probed: while it is not
// ready, a line every few seconds names the probe, its last error and where
// the app listens; the final error names them too.
func TestReadinessExplainsItself(t *testing.T) {
	dir := t.TempDir()
	httpPort, targetPort, otherPort := freePort(t), freePort(t), freePort(t)
	c := superviseCaddy(t, dir, []string{"--admin", "off", "--ready", "/up", "--ready-timeout", "7s"},
		[]string{upstreamBin, "-listen", fmt.Sprintf("127.0.0.1:%d", otherPort)},
		"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(targetPort))
	fix := fmt.Sprintf(`: make it listen on the port in $PORT (%d), or put {supervise.port} in its command`, targetPort)
	want := fmt.Sprintf(`waiting for app: GET http://127.0.0.1:%d/up: connection refused (5s of 7s); the app listens on 127.0.0.1:%d`, targetPort, otherPort) + fix
	if line := c.waitLog(want, 10*time.Second); !strings.Contains(line, `"level":"warn"`) {
		t.Errorf("the progress line of an app that listens elsewhere is not a warning: %s", line)
	}
	line := c.waitLog("process not ready within ready_timeout; stopping it as failed", 10*time.Second)
	if !strings.Contains(line, fmt.Sprintf(`"probe":"GET http://127.0.0.1:%d/up: connection refused; the app listens on 127.0.0.1:%d`, targetPort, otherPort)+fix+`"`) {
		t.Errorf("the final error does not name the probe, its error, where the app listens and the fix: %s", line)
	}
	// (before: "process exited unexpectedly", and 143, as if killed by someone else)
	c.waitLog("process was not ready within ready_timeout; it was stopped, and counts as failed with exit status 124", 10*time.Second)
	if code := c.wait(20 * time.Second); code != ExitNotReady {
		t.Errorf("Caddy exited %d, want %d (not ready within ready_timeout)", code, ExitNotReady)
	}
	if n := len(c.logs.lines("process exited unexpectedly")); n > 0 {
		t.Errorf("%d lines say the process exited unexpectedly: Caddy stopped it", n)
	}
}

// `port auto` without `ready` is probed on its port by default: a reload
// that changes it starts the new instance beside the old one, and under load
// no request fails.
func TestPortAutoIsProbedByDefault(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	web := func(release string) map[string]any {
		return map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-delay", "300ms"},
			"port": "auto", "env": map[string]string{"RELEASE": release}}
	}
	cfg, c, up, l := serveUnderLoad(t, s, httpPort, web("v1"), 8)
	next := proxyToSupervised(t, httpPort, "web", web("v2"))
	next["admin"] = cfg["admin"]
	c.load(t, next)
	v2 := s.next(t, 10*time.Second)
	sig := up.expect(t, "signal", 10*time.Second)
	if sig.time().Before(v2.readyAt) {
		t.Errorf("the old instance got its signal at %v, before the new one listened (%v)", sig.time(), v2.readyAt)
	}
	l.waitOK(t, l.ok.Load()+50, 10*time.Second)
	finishUnderLoad(t, c, l, 0, 10*time.Second)
}

// A `dynamic supervise` name that no process of the config has is an error
// at `caddy validate`, that names it and lists the processes, defaults
// included; the unsafe combinations get a warning with their fix.
func TestValidateNamesAndWarnings(t *testing.T) {
	dir := t.TempDir()
	validate := func(src string) string {
		path := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(caddyBin, "validate", "--config", path, "--adapter", "caddyfile").CombinedOutput()
		return string(out)
	}
	out := validate(fmt.Sprintf(`{
	admin off
	supervise sleep 60 {
		name web
		port auto
	}
	supervise /bin/sleep 61
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic supervise wbe
	}
}
`, freePort(t)))
	if want := `dynamic supervise \"wbe\": no supervised process of that name in this config (its processes: sleep, web)`; !strings.Contains(out, want) {
		t.Errorf("caddy validate: %s\nwant an error with %s", out, want)
	}
	port := freePort(t)
	out = validate(fmt.Sprintf(`{
	admin off
	grace_period 40s
	supervise sleep 60 {
		name fixed
		port %d
	}
	supervise sleep 61 {
		name lost
		port auto
	}
}
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d
}
`, port, freePort(t), port))
	for _, want := range []string{
		`process fixed: shutdown_delay + grace_period (40s) is longer than its drain_timeout (30s)`,
		fmt.Sprintf("process fixed: port %d behind reverse_proxy 127.0.0.1:%d without lb_try_duration", port, port),
		"process lost: port auto, but no reverse_proxy uses `dynamic supervise lost`",
		"Valid configuration",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("caddy validate: %s\nwant %q", out, want)
		}
	}

	// streams: a proxy without supervise_streams; one with it but a
	// stream_close_delay shorter than stream_drain_timeout; one right
	site := func(streams, delay string) string {
		return fmt.Sprintf(`{
	admin off
	supervise sleep 62 {
		name web
		port auto
		ready http /up
		stream_drain_timeout 2m
	}
}
http://127.0.0.1:%d {
	%s
	reverse_proxy {
		dynamic supervise web
		%s
	}
}
`, freePort(t), streams, delay)
	}
	noStreams := "process web: no supervise_streams before the reverse_proxy with `dynamic supervise web`"
	shortDelay := "process web: the reverse_proxy's stream_close_delay (1m0s) is shorter than the process's stream_drain_timeout (2m0s)"
	for _, tc := range []struct {
		streams, delay string
		want, not      []string
	}{
		{"", "", []string{noStreams}, []string{shortDelay}},
		{"supervise_streams", "stream_close_delay 1m", []string{shortDelay}, []string{noStreams}},
		{"route {\n\t\tsupervise_streams\n\t}", "stream_close_delay 2m", nil, []string{noStreams, shortDelay}},
		{"handle /ws* {\n\t\tsupervise_streams\n\t}", "stream_close_delay 2m", []string{noStreams}, nil},
	} {
		out := validate(site(tc.streams, tc.delay))
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("caddy validate with %q %q: %s\nwant %q", tc.streams, tc.delay, out, w)
			}
		}
		for _, w := range append(tc.not, "Error") {
			if strings.Contains(out, w) {
				t.Errorf("caddy validate with %q %q: %s\nwant no %q", tc.streams, tc.delay, out, w)
			}
		}
	}

	// a pool's proxy with an lb_policy: the dynamic upstream chooses
	lbWarn := "process web: the lb_policy of the reverse_proxy with `dynamic supervise web` has no effect"
	pool := strings.Replace(site("supervise_streams", "stream_close_delay 2m\n\t\tlb_policy least_conn"),
		"stream_drain_timeout 2m", "stream_drain_timeout 2m\n\t\tinstances 2", 1)
	if out := validate(pool); !strings.Contains(out, lbWarn) || strings.Contains(out, "Error") {
		t.Errorf("caddy validate of a pool with lb_policy: %s\nwant %q", out, lbWarn)
	}
	if out := validate(strings.Replace(pool, "instances 2", "instances 1", 1)); strings.Contains(out, lbWarn) {
		t.Errorf("caddy validate of one instance with lb_policy: %s\nwant no %q", out, lbWarn)
	}

	// X-Sendfile answered the old way, by rewrite + file_server: unsafe
	rewriteWarn := "a handle_response rewrites to the app's response header"
	oldWay := site("supervise_streams", "stream_close_delay 2m\n\t\t@sendfile header X-Sendfile *\n\t\thandle_response @sendfile {\n\t\t\troot * /\n\t\t\trewrite * {rp.header.X-Sendfile}\n\t\t\tfile_server\n\t\t}")
	if out := validate(oldWay); !strings.Contains(out, rewriteWarn) || !strings.Contains(out, "supervise_sendfile") || strings.Contains(out, "Error") {
		t.Errorf("caddy validate of X-Sendfile through rewrite: %s\nwant %q", out, rewriteWarn)
	}
	if out := validate(strings.Replace(site("supervise_streams", "stream_close_delay 2m"), "\tsupervise_streams", "\tsupervise_sendfile\n\tsupervise_streams", 1)); strings.Contains(out, rewriteWarn) || strings.Contains(out, "Error") {
		t.Errorf("caddy validate with supervise_sendfile: %s", out)
	}

	// a wait as long as the write timeout, without supervise_streams to
	// restart it (issue 30)
	waitWarn := "process web: `dynamic supervise web` waits up to 30s for the app, and the server's write timeout is 20s"
	timeouts := func(src string) string {
		return strings.Replace(src, "\tadmin off\n", "\tadmin off\n\tservers {\n\t\ttimeouts {\n\t\t\twrite 20s\n\t\t}\n\t}\n", 1)
	}
	if out := validate(timeouts(site("", ""))); !strings.Contains(out, waitWarn) || strings.Contains(out, "Error") {
		t.Errorf("caddy validate with a write timeout below the wait: %s\nwant %q", out, waitWarn)
	}
	if out := validate(timeouts(site("supervise_streams", "stream_close_delay 2m"))); strings.Contains(out, "write timeout") || strings.Contains(out, "Error") {
		t.Errorf("caddy validate with supervise_streams: %s\nwant no warning of the write timeout", out)
	}

	// an argument that a shell emptied `$PORT` out of (issue 30)
	out = validate(strings.Replace(site("supervise_streams", "stream_close_delay 2m"), "supervise sleep 62", "supervise puma -b tcp://127.0.0.1: --port= 62", 1))
	for _, want := range []string{
		`process web: argument 2 of its command (\"tcp://127.0.0.1:\") ends in \":\": a $PORT that the shell emptied`,
		`process web: argument 3 of its command (\"--port=\") ends in \"=\"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("caddy validate with an emptied $PORT: %s\nwant %q", out, want)
		}
	}
}

// A broken release's error carries the program's own error (its first
// error-like lines) and its last lines, short enough for a terminal; the
// whole output stays in the log.
func TestBrokenReleaseSaysWhy(t *testing.T) {
	s := newSink(t)
	httpPort := freePort(t)
	script := `if [ "$RELEASE" = broken ]; then echo "config/application.rb:3: BOOM (RuntimeError)" >&2; ` +
		`for i in $(seq 1 30); do echo "	from /usr/lib/ruby/vendor_ruby/lib$i.rb:$i:in 'require'" >&2; done; exit 1; fi; ` +
		`exec "$UPSTREAM" -events "$EVENTS"`
	web := func(release string) map[string]any {
		return map[string]any{"name": "web", "command": []string{"sh", "-c", script}, "port": "auto", "ready": map[string]any{"http": ""},
			"env": map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin, "EVENTS": s.addr()}}
	}
	cfg := proxyToSupervised(t, httpPort, "web", web("v1"))
	c := startCaddy(t, cfg)
	s.next(t, 10*time.Second)
	c.waitLog(`"to":"ready"`, 10*time.Second)
	next := proxyToSupervised(t, httpPort, "web", web("broken"))
	next["admin"] = cfg["admin"]
	code, body := c.tryLoad(t, next)
	for _, want := range []string{"the new instance exited before it was ready", "exit status 1",
		"BOOM (RuntimeError)", "lib30.rb:30", "the old instance still serves"} {
		if code == 200 || !strings.Contains(body, want) {
			t.Errorf("the broken reload: %d %s\nwant %q", code, body, want)
		}
	}
	if len(body) > 1500 || strings.Contains(body, "lib10.rb") {
		t.Errorf("the error is %d bytes, with the middle of the output: %s", len(body), body)
	}
	if n := len(c.logs.lines(`lib10.rb:10`)); n != 1 {
		t.Errorf("the whole output is not in the log (%d lines with lib10.rb)", n)
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// `caddy supervise` passes the app's output through as it is by default
// (as Thruster does); `--output log` makes it entries of Caddy's log.
func TestCaddySuperviseOutput(t *testing.T) {
	for _, tc := range []struct {
		flags  []string
		stdout bool
	}{{nil, true}, {[]string{"--output", "log"}, false}} {
		dir := t.TempDir()
		c := superviseCaddy(t, dir, append([]string{"--admin", "off"}, tc.flags...),
			[]string{"sh", "-c", `printf '{"app":"raw line"}\n'; exec "$UPSTREAM"`},
			"HTTP_PORT="+strconv.Itoa(freePort(t)), "TARGET_PORT="+strconv.Itoa(freePort(t)), "UPSTREAM="+upstreamBin)
		c.waitLog(`"to":"ready"`, 10*time.Second)
		if tc.stdout {
			if _, ok := c.stdout.waitFor(`{"app":"raw line"}`, 5*time.Second, c.done); !ok {
				t.Errorf("%v: the app's line is not on Caddy's stdout as it is: %q", tc.flags, c.stdout.String())
			}
		} else if _, ok := c.logs.waitFor(`"msg":"{\"app\":\"raw line\"}","stream":"stdout"`, 5*time.Second, c.done); !ok {
			// (the line may come after the ready state: output is read in its own time)
			t.Errorf("%v: the app's line is not an entry of Caddy's log", tc.flags)
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	}
}

// An app that ends makes Caddy exit with its status, and the module's own
// line, right before Caddy's "exiting" line, says why (Caddy's line speaks
// of SIGTERM).
func TestEndedAppExplainsTheExit(t *testing.T) {
	c := superviseCaddy(t, t.TempDir(), []string{"--admin", "off"}, []string{"sh", "-c", "exit 7"},
		"HTTP_PORT="+strconv.Itoa(freePort(t)), "TARGET_PORT="+strconv.Itoa(freePort(t)))
	if code := c.wait(20 * time.Second); code != 7 {
		t.Errorf("exit code %d, want 7", code)
	}
	ours := logTimes(t, c.logs.lines("shutting Caddy down (on_end stop_caddy): the SIGTERM in Caddy's next lines is this module's"))
	theirs := logTimes(t, c.logs.lines(`"msg":"exiting; byeee!!`))
	if len(ours) != 1 || len(theirs) != 1 || theirs[0].Before(ours[0]) {
		t.Errorf("the module's explanation %v does not come right before Caddy's exit line %v", ours, theirs)
	}
}

// A request that waits for an app that never gets ready ends with its
// client, and does not hold Caddy's exit.
func TestWaitingRequestEndsWithItsClient(t *testing.T) {
	httpPort := freePort(t)
	c := superviseCaddy(t, t.TempDir(), []string{"--admin", "off", "--ready", "/up"}, []string{"sleep", "60"},
		"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(freePort(t)))
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/", httpPort), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a request to an app that is not ready got %s", resp.Status)
	}
	began := c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
	if d := c.exited.Sub(began); d > 3*time.Second {
		t.Errorf("Caddy took %s to exit after a waiting request's client left", d)
	}
}
