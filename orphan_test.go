// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The orphan matrix: for every way Caddy can end, and for children that are
// shell wrappers with children of their own, that ignore SIGTERM, or that
// exit at once on it, no process is left once Caddy is gone, and Caddy's
// exit status is the documented one.
func TestOrphanMatrix(t *testing.T) {
	// Caddy proxies /hang here: a request that keeps the drain busy.
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hang.Close)
	hangPort := hang.Listener.Addr().(*net.TCPAddr).Port

	type kind struct {
		name  string
		proc  func(s *sink) map[string]any
		peers int
	}
	kinds := []kind{
		{"sh wrapper with two children", func(s *sink) map[string]any {
			a := strings.Join(upstreamProc(s, "", freePort(t))["command"].([]string), " ")
			b := strings.Join(upstreamProc(s, "", freePort(t))["command"].([]string), " ")
			return map[string]any{"command": []string{"sh", "-c", a + " & " + b + " & wait"}}
		}, 2},
		{"ignores SIGTERM", func(s *sink) map[string]any {
			return upstreamProc(s, "", freePort(t), "-ignore-term")
		}, 1},
		{"exits at once", func(s *sink) map[string]any {
			return upstreamProc(s, "", freePort(t))
		}, 1},
	}
	type way struct {
		name string
		end  func(t *testing.T, c *caddyProc, admin string, peers []*peer)
		code int
	}
	ways := []way{
		{"SIGTERM", func(t *testing.T, c *caddyProc, _ string, _ []*peer) { c.signal(syscall.SIGTERM) }, 0},
		{"SIGINT", func(t *testing.T, c *caddyProc, _ string, _ []*peer) { c.signal(syscall.SIGINT) }, 0},
		{"SIGINT twice", func(t *testing.T, c *caddyProc, _ string, _ []*peer) {
			c.signal(syscall.SIGINT)
			c.waitLog("servers shutting down", 5*time.Second) // draining the hanging request
			c.signal(syscall.SIGINT)
		}, 2},
		{"SIGQUIT", func(t *testing.T, c *caddyProc, _ string, _ []*peer) { c.signal(syscall.SIGQUIT) }, 2},
		{"SIGKILL", func(t *testing.T, c *caddyProc, _ string, _ []*peer) { c.signal(syscall.SIGKILL) }, -1},
		{"caddy stop", func(t *testing.T, c *caddyProc, admin string, _ []*peer) {
			if out, err := exec.Command(caddyBin, "stop", "--address", admin).CombinedOutput(); err != nil {
				t.Fatalf("caddy stop: %v\n%s", err, out)
			}
		}, 0},
		{"the process ends", func(t *testing.T, c *caddyProc, _ string, peers []*peer) {
			// SIGKILL the supervised process itself: the wrapper, or the app
			if err := syscall.Kill(peers[0].ppidOrSelf(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, 128 + 9},
	}
	for _, k := range kinds {
		for _, w := range ways {
			t.Run(k.name+"/"+w.name, func(t *testing.T) {
				s := newSink(t)
				httpPort := freePort(t)
				proc := k.proc(s)
				proc["name"], proc["drain_timeout"], proc["stop_timeout"] = "app", "1s", "1s"
				cfg := testConfig(t, httpPort, hangPort, proc)
				// the hanging request is cut after a second, so that Caddy can exit
				cfg["apps"].(map[string]any)["http"].(map[string]any)["grace_period"] = "1s"
				c := startCaddy(t, cfg)
				var peers []*peer
				for range k.peers {
					peers = append(peers, s.next(t, 10*time.Second))
				}
				go func() { _, _ = http.Get(fmt.Sprintf("http://127.0.0.1:%d/hang", httpPort)) }()
				c.waitLog(`"selected upstream"`, 5*time.Second) // reverse_proxy's debug log: the request is in flight

				w.end(t, c, cfg["admin"].(map[string]any)["listen"].(string), peers)
				code := c.wait(15 * time.Second)
				if code != w.code {
					t.Errorf("caddy exit status %d, want %d", code, w.code)
				}
				for _, p := range peers {
					if d := p.dead(t, 3*time.Second).Sub(c.exited); d > 2*time.Second {
						t.Errorf("process %d outlived Caddy by %s", p.pid, d)
					}
				}
			})
		}
	}
}
