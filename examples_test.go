// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
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
	for _, want := range []string{"STOPSIGNAL SIGTERM", `ENTRYPOINT ["tini", "--"]`, "COPY --from=supervise go.mod go.sum",
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

	// Kubernetes runs the image's Caddyfile with SHUTDOWN_DELAY from the
	// Deployment; Kamal runs the image
	k8s := yamlDocs(t, "examples/kubernetes/deployment.yaml")[0]
	pod := dig(t, k8s, "spec", "template", "spec").(map[string]any)
	if d := time.Duration(pod["terminationGracePeriodSeconds"].(float64)) * time.Second; d < rails {
		t.Errorf("kubernetes: terminationGracePeriodSeconds %s < drain + stop %s", d, rails)
	}
	ctr := pod["containers"].([]any)[0].(map[string]any)
	env := map[string]string{}
	for _, e := range ctr["env"].([]any) {
		e := e.(map[string]any)
		if v, ok := e["value"].(string); ok {
			env[e["name"].(string)] = v
		}
	}
	if env["SHUTDOWN_DELAY"] == "" || env["SITE_ADDRESS"] == "" {
		t.Fatalf("kubernetes: SHUTDOWN_DELAY and SITE_ADDRESS must be set: %v", env)
	}
	if probe := dig(t, ctr, "readinessProbe", "httpGet", "path"); probe != "/up" {
		t.Errorf("kubernetes: readinessProbe path %v", probe)
	}
	for name, vars := range map[string]map[string]string{"docker": nil, "kubernetes": env} {
		for k, v := range vars {
			t.Setenv(k, v)
		}
		_, apps := budget(t, []byte(read("examples/rails/Caddyfile")))
		var httpApp struct {
			ShutdownDelay int64 `json:"shutdown_delay"`
			GracePeriod   int64 `json:"grace_period"`
		}
		_ = json.Unmarshal(apps["http"], &httpApp)
		var app App
		_ = json.Unmarshal(apps["supervise"], &app)
		if name == "kubernetes" && httpApp.ShutdownDelay == 0 {
			t.Errorf("kubernetes: shutdown_delay is not set")
		}
		for _, p := range app.Processes {
			if p.Name == "web" && httpApp.ShutdownDelay+httpApp.GracePeriod > int64(p.DrainTimeout) {
				t.Errorf("%s: shutdown_delay + grace_period (%s) > the web's drain_timeout %s", name,
					time.Duration(httpApp.ShutdownDelay+httpApp.GracePeriod), time.Duration(p.DrainTimeout))
			}
		}
	}

	kamal := yamlDocs(t, "examples/kamal/deploy.yml")[0]
	if d := time.Duration(kamal["stop_timeout"].(float64)) * time.Second; d < rails {
		t.Errorf("kamal: stop_timeout %s < drain + stop %s", d, rails)
	}
	if path := dig(t, kamal, "proxy", "healthcheck", "path"); path != "/up" {
		t.Errorf("kamal: proxy.healthcheck.path %v", path)
	}
	if site := dig(t, kamal, "env", "clear", "SITE_ADDRESS"); site != ":80" || dig(t, kamal, "proxy", "app_port") != float64(80) {
		t.Errorf("kamal: SITE_ADDRESS %v and proxy.app_port %v must agree (Caddy's plain HTTP site on 80)", site, dig(t, kamal, "proxy", "app_port"))
	}
	if _, old := kamal["stop_wait_time"]; old {
		t.Error("kamal: stop_wait_time is Kamal 1's key; Kamal 2 refuses it")
	}

	// one set: the image's paths everywhere
	for path, want := range map[string][]string{
		"examples/docker/Dockerfile":          {"/rails/config/Caddyfile"},
		"examples/systemd/caddy.service":      {"--config /rails/config/Caddyfile", "--address unix//rails/tmp/caddy-admin.sock", "WorkingDirectory=/rails"},
		"examples/kubernetes/deployment.yaml": {"--config /rails/config/Caddyfile", "unix//rails/tmp/caddy-admin.sock"},
		"examples/rails/Caddyfile":            {"admin unix//rails/tmp/caddy-admin.sock|0600", "dir /rails\n", "env_file /rails/.env optional"},
	} {
		src := read(path)
		for _, w := range want {
			if !strings.Contains(src, w) {
				t.Errorf("%s lacks %q", path, w)
			}
		}
	}
}

// yamlDocs reads the YAML documents of a file, with Ruby's YAML (Psych):
// no YAML library in this module for a test.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	out, err := exec.Command("ruby", "-ryaml", "-rjson", "-e", "print JSON.generate(YAML.load_stream(File.read(ARGV[0])))", path).Output()
	if err != nil {
		t.Skipf("ruby reads %s's YAML here (scripts/deps.sh installs it): %v", path, err)
	}
	var docs []map[string]any
	if err := json.Unmarshal(out, &docs); err != nil || len(docs) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	return docs
}

// dig follows keys into nested maps.
func dig(t *testing.T, v any, keys ...string) any {
	t.Helper()
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%v: not a map at %q", keys, k)
		}
		v = m[k]
	}
	return v
}
