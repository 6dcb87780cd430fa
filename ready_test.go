// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// proxyToSupervised is a config whose HTTP server proxies to the process
// name through the dynamic upstream, waiting up to 15 s for it.
func proxyToSupervised(t testing.TB, httpPort int, name string, procs ...map[string]any) map[string]any {
	cfg := testConfig(t, 0, 0, procs...)
	cfg["apps"].(map[string]any)["http"] = map[string]any{"servers": map[string]any{"srv": map[string]any{
		"listen": []string{fmt.Sprintf("127.0.0.1:%d", httpPort)},
		"routes": []any{map[string]any{"handle": []any{map[string]any{
			"handler":           "reverse_proxy",
			"dynamic_upstreams": map[string]any{"source": "supervise", "name": name},
			"load_balancing":    map[string]any{"try_duration": "15s"},
		}}}},
	}}}
	return cfg
}

// Requests that arrive while the app boots, or while it restarts after a
// crash, wait and get 200: no 502 from an app that sleeps 2 s before it
// listens, and no 503 from one that accepts connections before it is ready
// (it answers 503 for 2 s after listening; the probe waits for a 2xx, and
// this variant fails when the dynamic upstream ignores readiness).
func TestNo502WhileBootingOrRestarting(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		ready map[string]any
	}{
		{"sleeps before listening", []string{"-delay", "2s"}, map[string]any{"tcp": ""}},
		{"answers 503 while booting", []string{"-delay", "500ms", "-warmup", "2s"}, map[string]any{"http": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(t)
			httpPort := freePort(t)
			proc := map[string]any{
				"name":    "web",
				"command": append([]string{upstreamBin, "-events", s.addr()}, tc.flags...), // listens on 127.0.0.1:$PORT
				"port":    "auto", "ready": tc.ready, "restart": "on_failure",
			}
			c := startCaddy(t, proxyToSupervised(t, httpPort, "web", proc))
			began := time.Now()
			l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/", httpPort), 8)
			up := s.next(t, 10*time.Second)
			l.waitOK(t, 100, 10*time.Second)
			if d := logTimes(t, c.logs.lines(`"to":"ready"`))[0].Sub(began); d < 2*time.Second {
				t.Errorf("the app was ready %s after Caddy: the test did not exercise the boot", d)
			}

			// crash it; it restarts (and boots again)
			if err := syscall.Kill(up.pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			next := s.next(t, 10*time.Second)
			c.waitLogCount(`"to":"ready"`, 2, 10*time.Second)
			l.waitOK(t, l.ok.Load()+100, 10*time.Second)
			st := l.stop()
			t.Logf("%d requests ok across the boot and a restart", st.ok)
			if len(st.failures) > 0 || st.refused > 0 || st.unaccepted > 0 {
				t.Errorf("%d failed (first %v), %d refused, %d reset", len(st.failures), st.failures[:min(3, len(st.failures))], st.refused, st.unaccepted)
			}
			if next.addr != up.addr {
				t.Errorf("port auto changed across the restart: %s, then %s", up.addr, next.addr)
			}
			c.signal(syscall.SIGTERM)
			c.wait(10 * time.Second)
		})
	}
}

// A process that never becomes ready is stopped as failed at ready_timeout,
// and its restart policy applies (here: none, and Caddy keeps running).
func TestNeverReady(t *testing.T) {
	s := newSink(t)
	proc := upstreamProc(s, "web", freePort(t))
	proc["ready"] = map[string]any{"tcp": fmt.Sprintf("127.0.0.1:%d", freePort(t))} // nothing listens there
	proc["ready_timeout"], proc["on_end"] = "1s", "keep_running"
	c := startCaddy(t, testConfig(t, 0, 0, proc))
	up := s.next(t, 10*time.Second)
	c.waitLog("process not ready within ready_timeout", 5*time.Second)
	up.expect(t, "signal", 5*time.Second)
	up.dead(t, 5*time.Second)
	c.waitLog("Caddy keeps running", 5*time.Second)
	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
}
