// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// Issue 30: the one line's waits. `--wait` is the whole time a request
// waits for the app, reverse_proxy's retries included, and a request that
// waited is never cut by the write timeout because it waited: the client
// gets a complete response, and the access log shows what it got.

import (
	"context"
	"encoding/json"
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

func TestOneLineWaitIsOneDeadline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wait    string
		boot    string // the app's boot (-delay); "" never gets ready
		status  int
		atLeast time.Duration // when the answer comes
		atMost  time.Duration
		h2c     bool // HTTP/2 without TLS (H2C_ENABLED): a stream's write timer starts when it opens
	}{
		// (before: 503 after 4 × 3 s; with Thruster's write timeout below
		// the wait, an empty reply)
		{"never ready", "3s", "", http.StatusServiceUnavailable, 3 * time.Second, 4 * time.Second, false},
		{"boots later than the wait", "3s", "5s", http.StatusServiceUnavailable, 3 * time.Second, 4 * time.Second, false},
		// (before: an empty reply at the write timeout, logged as 200)
		// (atLeast: it waited longer than the write timeout)
		{"boots within the wait, after the write timeout", "8s", "4s", http.StatusOK, 2500 * time.Millisecond, 7 * time.Second, false},
		// (before: HTTP/2 reset the stream at the write timeout, INTERNAL_ERROR)
		{"never ready, HTTP/2", "3s", "", http.StatusServiceUnavailable, 3 * time.Second, 4 * time.Second, true},
		{"boots within the wait, after the write timeout, HTTP/2", "8s", "4s", http.StatusOK, 2500 * time.Millisecond, 7 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			httpPort := freePort(t)
			command := []string{"sleep", "60"}
			if tc.boot != "" {
				command = []string{upstreamBin, "-delay", tc.boot}
			}
			env := []string{"HTTP_PORT=" + strconv.Itoa(httpPort), "TARGET_PORT=" + strconv.Itoa(freePort(t)),
				"HTTP_WRITE_TIMEOUT=2"} // (shorter than any wait here)
			client := rawClient
			if tc.h2c {
				env = append(env, "H2C_ENABLED=1")
				client = h2cClient()
			}
			c := superviseCaddy(t, t.TempDir(), []string{"--admin", "off", "--ready", "/up", "--wait", tc.wait}, command, env...)
			c.waitLog(`"msg":"server running"`, 20*time.Second)
			sent := time.Now()
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
			if err != nil {
				t.Fatalf("GET after %s: %v (an empty reply?)", time.Since(sent), err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(sent)
			if err != nil {
				t.Fatalf("the response (%s) was cut after %s: %v", resp.Status, took, err)
			}
			if tc.h2c && resp.ProtoMajor != 2 {
				t.Fatalf("%s, not HTTP/2", resp.Proto)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("got %s (%q), want %d", resp.Status, body, tc.status)
			}
			if took < tc.atLeast || took > tc.atMost {
				t.Errorf("the answer came after %s, want within [%s, %s] (--wait %s, the app's boot %q)", took, tc.atLeast, tc.atMost, tc.wait, tc.boot)
			}
			c.waitLog(fmt.Sprintf(`"status":%d`, resp.StatusCode), 5*time.Second) // the access log agrees
		})
	}
}

// The one line's start says where it serves, where the admin socket is
// and what it waits for, and no warning its user cannot act on (Caddy's
// about a unix socket admin endpoint, plain HTTP, HTTP/2 and HTTP/3
// without TLS); a request's log line is short. An admin endpoint on TCP
// gets a warning.
func TestOneLineStartsQuietly(t *testing.T) {
	httpPort := freePort(t)
	c := superviseCaddy(t, t.TempDir(), []string{"--ready", "/up"}, []string{upstreamBin},
		"HTTP_PORT="+strconv.Itoa(httpPort), "TARGET_PORT="+strconv.Itoa(freePort(t)))
	c.waitLog(`"msg":"admin endpoint (/supervise/ and /metrics) on a unix socket only Caddy's user can use"`, 20*time.Second)
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	c.waitLog(`"to":"ready"`, 20*time.Second)
	resp, _ := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %s", resp.Status)
	}
	line := c.waitLog(`"logger":"http.log.access`, 5*time.Second)
	if len(line) > 500 {
		t.Errorf("a request's log line has %d bytes: %s", len(line), line)
	}
	for _, l := range strings.Split(c.logs.String(), "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			t.Errorf("a warning at a plain start: %s", l)
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)

	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c = superviseCaddy(t, t.TempDir(), []string{"--admin", admin, "--ready", "/up"}, []string{upstreamBin},
		"HTTP_PORT="+strconv.Itoa(freePort(t)), "TARGET_PORT="+strconv.Itoa(freePort(t)))
	if line := c.waitLog("the admin endpoint is on TCP", 20*time.Second); !strings.Contains(line, `"level":"warn"`) {
		t.Errorf("not a warning: %s", line)
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}

// Ctrl-C while a request waits for an app that is not ready: Caddy says
// how many wait, and that a second Ctrl-C exits at once; it does. The
// admin socket's directory that the forced exit may leave behind is gone
// after the next start; a normal exit removes its own.
func TestOneLineCtrlCWhileRequestsWait(t *testing.T) {
	tmp := t.TempDir()
	env := func() []string {
		return []string{"TMPDIR=" + tmp, "XDG_RUNTIME_DIR=", "HTTP_PORT=" + strconv.Itoa(freePort(t)), "TARGET_PORT=" + strconv.Itoa(freePort(t))}
	}
	adminDirs := func() []string {
		dirs, _ := filepath.Glob(filepath.Join(tmp, "caddy-supervise-*"))
		return dirs
	}
	e := env()
	c := superviseCaddy(t, t.TempDir(), []string{"--ready", "/up", "--wait", "1m"}, []string{"sleep", "60"}, e...)
	line := c.waitLog(`"msg":"admin endpoint (/supervise/ and /metrics) on a unix socket only Caddy's user can use"`, 20*time.Second)
	m := regexp.MustCompile(`curl --unix-socket (\S+) `).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no socket in %s", line)
	}
	admin := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", m[1])
	}}}
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	go func() {
		if resp, err := rawClient.Get("http://127.0.0.1:" + strings.TrimPrefix(e[2], "HTTP_PORT=") + "/"); err == nil {
			resp.Body.Close()
		}
	}()
	// the request waits: the admin API counts it
	for deadline := time.Now().Add(10 * time.Second); ; {
		var st Status
		if resp, err := admin.Get("http://localhost/supervise/app"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if st.Waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admin API does not count the waiting request: %+v", st)
		}
		time.Sleep(20 * time.Millisecond) // (polling the admin API: no event tells of a request that waits)
	}
	c.signal(syscall.SIGINT)
	c.waitLog("Caddy is exiting while 1 requests wait for app, which is not ready", 10*time.Second)
	c.signal(syscall.SIGINT)
	if code := c.wait(10 * time.Second); code != 2 {
		t.Errorf("a second Ctrl-C: Caddy exited %d, want 2 (force quit)", code)
	}

	// what a forced exit may leave besides (an empty directory, or one with
	// a socket nothing listens on), and the directory of a `caddy
	// supervise` that has yet to listen there (locked): the sweep takes the
	// first two, not the third
	empty, err := os.MkdirTemp(tmp, "caddy-supervise-")
	if err != nil {
		t.Fatal(err)
	}
	deadSocket, err := os.MkdirTemp(tmp, "caddy-supervise-")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(deadSocket, "admin.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	held, err := os.MkdirTemp(tmp, "caddy-supervise-")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := lockDir(held)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	others := func() []string {
		return slices.DeleteFunc(adminDirs(), func(d string) bool { return d == held })
	}

	c = superviseCaddy(t, t.TempDir(), []string{"--ready", "/up"}, []string{"sleep", "60"}, env()...)
	c.waitLog(`"msg":"server running"`, 20*time.Second)
	if dirs := others(); len(dirs) != 1 || dirs[0] == empty || dirs[0] == deadSocket {
		t.Errorf("admin directories once the next Caddy runs: %v, want its own alone (and the locked one)", dirs)
	}
	if _, err := os.Stat(held); err != nil {
		t.Errorf("the sweep took a directory a running caddy supervise holds: %v", err)
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
	if dirs := others(); len(dirs) != 0 {
		t.Errorf("admin directories after a normal exit: %v", dirs)
	}
}

// A hand-written Caddyfile of the README's pattern, with Caddy's write_idle
// on (its default): its writer keeps the write timeout, counted from the
// request's arrival, as a ceiling for every write, so a body written after
// a wait longer than the write timeout failed at its first write. Over
// HTTP/1.1 and h2c, a request that waits 4 s for a boot, with a write
// timeout of 2 s, gets the whole page.
func TestWaitOutlastsWriteIdleCeiling(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			t.Parallel()
			httpPort, admin := freePort(t), freePort(t)
			protocols, client := "h1", rawClient
			if h2c {
				protocols, client = "h1 h2c", h2cClient()
			}
			src := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	servers {
		protocols %s
		timeouts {
			write 2s
		}
	}
	supervise %s -delay 4s {
		name app
		port auto
		ready http /up
	}
}
http://127.0.0.1:%d {
	supervise_streams
	reverse_proxy {
		dynamic supervise app {
			wait 8s
		}
	}
}
`, admin, protocols, upstreamBin, httpPort)
			path := filepath.Join(t.TempDir(), "Caddyfile")
			if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			c := startCaddyFile(t, path, "caddyfile")
			sent := time.Now()
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=10ms", httpPort))
			if err != nil {
				t.Fatalf("GET after %s: %v", time.Since(sent), err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || string(body) != "slept 10ms\n" {
				t.Errorf("after %s: %s %q, %v (cut by the write timeout?)", time.Since(sent), resp.Status, body, err)
			}
			if took := time.Since(sent); took < 2500*time.Millisecond {
				t.Errorf("the answer came after %s: it did not wait past the write timeout", took)
			}
			if h2c && resp.ProtoMajor != 2 {
				t.Errorf("%s, not HTTP/2", resp.Proto)
			}
			c.signal(syscall.SIGTERM)
			c.wait(20 * time.Second)
		})
	}
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge), and gives up
// after 20 s.
func h2cClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: 20 * time.Second}
}
