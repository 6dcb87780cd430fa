// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
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

// Each example Caddyfile adapts to exactly its JSON twin.
func TestExampleCaddyfilesMatchJSON(t *testing.T) {
	for _, dir := range []string{"rails", "node"} {
		t.Run(dir, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("examples", dir, "Caddyfile"))
			if err != nil {
				t.Fatal(err)
			}
			adapted, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt(src, map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("examples", dir, "caddy.json"))
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, adapted, want) {
				t.Errorf("examples/%s/Caddyfile adapts to\n%s\nnot to caddy.json (regenerate it with caddy adapt --pretty)", dir, adapted)
			}
		})
	}
}

// budget is the longest drain_timeout + stop_timeout of a Caddyfile's
// processes: how long a stop can take.
func budget(t *testing.T, caddyfileSrc []byte) (time.Duration, map[string]json.RawMessage) {
	t.Helper()
	adapted, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt(caddyfileSrc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	var app App
	if err := json.Unmarshal(cfg.Apps["supervise"], &app); err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for _, p := range app.Processes {
		worst = max(worst, time.Duration(p.DrainTimeout)+time.Duration(p.StopTimeout))
	}
	return worst, cfg.Apps
}

// The deployment examples give the orchestrator enough time for the stop,
// and avoid the settings that defeat drain-first.
func TestExampleDeploymentBudgets(t *testing.T) {
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	seconds := func(src, pattern string) time.Duration {
		m := regexp.MustCompile(pattern).FindStringSubmatch(src)
		if m == nil {
			t.Fatalf("no match for %s", pattern)
		}
		n, _ := strconv.Atoi(m[1])
		return time.Duration(n) * time.Second
	}
	rails, _ := budget(t, []byte(read("examples/rails/Caddyfile")))

	docker := read("examples/docker/Dockerfile")
	if d := seconds(docker, `--stop-timeout (\d+)`); d < rails {
		t.Errorf("Dockerfile: --stop-timeout %s < the Caddyfile's drain + stop %s", d, rails)
	}
	for _, want := range []string{"STOPSIGNAL SIGTERM", `ENTRYPOINT ["tini", "--"]`, "COPY examples/rails/Caddyfile",
		"go build -trimpath -o /usr/local/bin/caddy ./cmd/caddy", "USER 1000:1000", "setcap cap_net_bind_service=+ep /usr/local/bin/caddy",
		"VOLUME /rails/storage"} {
		if !strings.Contains(docker, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}

	unit := read("examples/systemd/caddy.service")
	for _, want := range []string{"\nKillMode=mixed\n", "\nRestart=on-failure\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("systemd unit: %q missing", strings.TrimSpace(want))
		}
	}
	if regexp.MustCompile(`\nExecStart=.*--environ`).MatchString(unit) {
		t.Error("systemd unit: --environ writes every secret of Caddy's environment to the journal")
	}
	if d := seconds(unit, `\nTimeoutStopSec=(\d+)s\n`); d < rails {
		t.Errorf("systemd unit: TimeoutStopSec %s < drain + stop %s", d, rails)
	}

	k8s := read("examples/kubernetes/deployment.yaml")
	var cf []string
	in := false
	for _, l := range strings.Split(k8s, "\n") {
		switch {
		case strings.HasSuffix(l, "Caddyfile: |"):
			in = true
		case in && strings.HasPrefix(l, "    "):
			cf = append(cf, l[4:])
		case in:
			in = false
		}
	}
	k8sBudget, apps := budget(t, []byte(strings.Join(cf, "\n")))
	if d := seconds(k8s, `terminationGracePeriodSeconds: (\d+)`); d < k8sBudget {
		t.Errorf("kubernetes: terminationGracePeriodSeconds %s < drain + stop %s", d, k8sBudget)
	}
	var httpApp struct {
		ShutdownDelay int64 `json:"shutdown_delay"`
	}
	_ = json.Unmarshal(apps["http"], &httpApp)
	if httpApp.ShutdownDelay == 0 || time.Duration(httpApp.ShutdownDelay) >= k8sBudget {
		t.Errorf("kubernetes: shutdown_delay %s must be set and shorter than the drain", time.Duration(httpApp.ShutdownDelay))
	}
}
