// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `caddy supervise` hands every argument to the program byte for byte,
// whatever the shell gave it ({$VAR}, {env.VAR}, Caddy placeholders,
// quotes, backticks, backslashes, newlines), but {supervise.port}; and no
// variable of the environment rewrites the config.
func TestCaddySuperviseArgumentsVerbatim(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "argv")
	httpPort, appPort := freePort(t), freePort(t)
	script := `for a; do printf '%s\0' "$a"; done > "$ARGV_OUT"; echo written; exec sleep 60`
	args := append([]string{"sh", "-c", script, "sh"}, hostileArgs...)
	args = append(args, "{supervise.port}", "port={supervise.port}")
	c := superviseCaddy(t, dir, []string{"--admin", "off", "--wait", "1s", "--output", "log"}, args,
		"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(appPort), "ARGV_OUT="+out,
		"SUPERVISE_T_HOSTILE=}\n\trespond injected\n}\n", "TLS_DOMAIN=")
	c.waitLog(`"msg":"written"`, 20*time.Second)
	c.waitLog(`"msg":"server running"`, 20*time.Second) // Caddy starts its apps in any order
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	want := append(slices.Clone(hostileArgs), strconv.Itoa(appPort), "port="+strconv.Itoa(appPort))
	if !slices.Equal(got, want) {
		for i := range max(len(got), len(want)) {
			var g, w string
			if i < len(got) {
				g = got[i]
			}
			if i < len(want) {
				w = want[i]
			}
			if g != w {
				t.Errorf("argument %d: the program got %q, want %q", i, g, w)
			}
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if bytes.Contains(body, []byte("injected")) || bytes.Contains(body, []byte("pwned")) {
		t.Errorf("a request got %s %q: the config was rewritten", resp.Status, body)
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// unixClient talks HTTP over the unix socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// `caddy supervise` never exposes the admin API on TCP by default: it is a
// unix socket with mode 0600, in ./tmp when the app has one (Rails), else
// in a new private directory, removed at the exit; /supervise/ works
// through it. --metrics serves Prometheus metrics on TCP, without the
// admin API.
func TestCaddySuperviseAdminDefault(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hasTmp bool
	}{{"app with tmp", true}, {"app without tmp", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.hasTmp {
				if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			httpPort, appPort, metricsPort := freePort(t), freePort(t), freePort(t)
			c := superviseCaddy(t, dir, []string{"--metrics", fmt.Sprintf("127.0.0.1:%d", metricsPort)}, []string{upstreamBin},
				"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(appPort), "XDG_RUNTIME_DIR=")
			line := c.waitLog(`"msg":"admin endpoint started"`, 20*time.Second)
			m := regexp.MustCompile(`"address":"unix/([^"|]+)\|0600"`).FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("the admin endpoint is not a unix socket with mode 0600: %s", line)
			}
			path := m[1]
			if tc.hasTmp && path != filepath.Join(dir, "tmp", "caddy-supervise", "admin.sock") {
				t.Errorf("admin socket at %s, want it in the app's tmp", path)
			}
			fi, err := os.Lstat(path)
			if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Errorf("admin socket %s: %v %v, want a socket with mode 0600", path, fi.Mode(), err)
			}
			if d, err := os.Stat(filepath.Dir(path)); err != nil || d.Mode().Perm() != 0o700 {
				t.Errorf("the admin socket's directory: %v %v, want 0700", d.Mode(), err)
			}
			if tc.hasTmp {
				// a second one in the same app does not take the first one's socket
				second := superviseCaddy(t, dir, nil, []string{upstreamBin}, "HTTP_PORT="+strconv.Itoa(freePort(t)),
					"TARGET_PORT="+strconv.Itoa(freePort(t)), "XDG_RUNTIME_DIR=")
				if code := second.wait(20 * time.Second); code == 0 || !strings.Contains(second.logs.String(), "another Caddy serves its admin endpoint there") {
					t.Errorf("a second caddy supervise in the app: exit %d:\n%s", code, second.logs.String())
				}
			}
			if lines := c.logs.lines(`"msg":"admin endpoint started"`); len(lines) != 1 {
				t.Errorf("admin endpoints: %q", lines)
			}
			c.waitLog(`"to":"ready"`, 20*time.Second)
			resp, err := unixClient(path).Get("http://localhost/supervise/app")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"name":"app"`)) {
				t.Errorf("GET /supervise/app over the socket: %s %s", resp.Status, body)
			}
			resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(body, []byte(`caddy_supervise_process_up{name="app"} 1`)) {
				t.Errorf("--metrics: %s, no caddy_supervise_process_up", resp.Status)
			}
			resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/supervise/", metricsPort))
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
				if bytes.Contains(body, []byte(`"name":"app"`)) {
					t.Errorf("the metrics address serves the admin API")
				}
			}
			c.signal(syscall.SIGTERM)
			c.wait(20 * time.Second)
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Errorf("the admin socket is left after the exit: %v", err)
			}
			if !tc.hasTmp {
				if _, err := os.Lstat(filepath.Dir(path)); !os.IsNotExist(err) {
					t.Errorf("the admin socket's private directory is left after the exit: %v", err)
				}
			}
		})
	}
}

// The program gets its own port whatever Caddy's environment holds: a
// PORT of Caddy's own (a platform that sets it) is replaced, not sent too.
func TestProgramGetsItsOwnPort(t *testing.T) {
	cfg := testConfig(t, 0, 0, map[string]any{"name": "app", "port": "auto", "ready": map[string]any{"tcp": ""},
		"command": []string{"sh", "-c", `echo "port=$PORT ports=$(env | grep -c '^PORT=')"; exec sleep 60`}})
	path := filepath.Join(t.TempDir(), "caddy.json")
	writeJSON(t, path, cfg)
	c := startCaddyFile(t, path, "", "PORT=9999")
	line := c.waitLog(`"msg":"port=`, 10*time.Second)
	if strings.Contains(line, "port=9999") || !strings.Contains(line, "ports=1") {
		t.Errorf("the program saw %s", line)
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}
