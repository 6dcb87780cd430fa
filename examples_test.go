package supervise

import (
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// The demo's Caddyfile, run as examples/demo/run.sh runs it (on other
// ports): it proxies to the supervised upstream, and Ctrl-C lets a request
// in flight finish before the upstream is stopped.
func TestDemoCaddyfile(t *testing.T) {
	port, upPort, admin := freePort(t), freePort(t), freePort(t)
	c := startCaddyFile(t, "examples/demo/Caddyfile", "caddyfile",
		"UPSTREAM="+upstreamBin,
		fmt.Sprintf("DEMO_PORT=%d", port),
		fmt.Sprintf("DEMO_UPSTREAM_PORT=%d", upPort),
		fmt.Sprintf("DEMO_ADMIN=127.0.0.1:%d", admin))
	c.waitLog("process started", 5*time.Second)
	c.waitLog("listening on", 5*time.Second) // the upstream's own log line
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port), "hello from upstream")

	res := make(chan string, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=1s", port))
		if err != nil {
			res <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- resp.Status + " " + string(body)
	}()
	c.waitLog("upstream: /sleep?d=1s: sleeping", 5*time.Second)
	c.signal(syscall.SIGINT)
	if got := <-res; got != "200 OK slept 1s\n" {
		t.Errorf("request in flight during Ctrl-C: %q", got)
	}
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}
