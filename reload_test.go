// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// load posts a new config to Caddy's admin endpoint, as `caddy reload` does.
func (c *caddyProc) load(t *testing.T, cfg map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	writeJSONTo(t, &buf, cfg)
	admin := cfg["admin"].(map[string]any)["listen"].(string)
	resp, err := http.Post("http://"+admin+"/load", "application/json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /load: %s: %s", resp.Status, body)
	}
}

// A reload keeps an unchanged process running; a changed definition stops
// the old process before its replacement starts; a removed one is stopped.
func TestReload(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	cfg := testConfig(t, httpPort, upPort, upstreamProc(s, "web", upPort))
	c := startCaddy(t, cfg)
	up := s.next(t, 10*time.Second)

	// unchanged process, changed config (another route): same child
	srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)
	srv["routes"] = append([]any{map[string]any{
		"match":  []any{map[string]any{"path": []string{"/health"}}},
		"handle": []any{map[string]any{"handler": "static_response", "body": "ok"}},
	}}, srv["routes"].([]any)...)
	c.load(t, cfg)
	c.waitLog("process kept running across config change", 5*time.Second)
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))

	// a config that fails to load changes nothing
	procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
	procs[0]["stop_signal"] = "SIGNOPE"
	raw, _ := json.Marshal(cfg)
	resp, err := http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/load", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !bytes.Contains(body, []byte(`stop_signal \"SIGNOPE\"`)) {
		t.Fatalf("loading a bad config: %s %s", resp.Status, body)
	}
	delete(procs[0], "stop_signal")
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", up.pid))

	// changed definition: the old one is gone before the new one starts
	procs[0]["command"] = append(procs[0]["command"].([]string), "-linger", "200ms")
	c.load(t, cfg)
	up.expect(t, "signal", 10*time.Second)
	oldExit := up.expect(t, "exit", 10*time.Second)
	next := s.next(t, 10*time.Second)
	up.dead(t, time.Second)
	if next.readyAt.Before(oldExit.time()) {
		t.Errorf("new process was ready at %s, before the old one exited at %s", next.readyAt, oldExit.time())
	}
	assertGet(t, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), fmt.Sprintf("pid %d", next.pid))

	// removed: stopped
	cfg["apps"].(map[string]any)["supervise"] = map[string]any{}
	c.load(t, cfg)
	next.dead(t, 5*time.Second)

	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}

func assertGet(t *testing.T, url, want string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(want)) {
		t.Fatalf("GET %s: %s %q, want 200 with %q", url, resp.Status, body, want)
	}
}
