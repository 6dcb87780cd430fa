// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// canaryConfig is Caddy in front of Puma serving release, with a canary of
// share% over window, supervise_streams in front of reverse_proxy (the
// cookie, the counts), and no reverse_proxy retries of its own: what the
// client sees of a failed request is what the canary let through.
func canaryConfig(t testing.TB, httpPort int, release, failRate string, share int, window string) map[string]any {
	t.Helper()
	web := pumaProc(t, release, "auto", map[string]string{"FAIL_RATE": failRate})
	web["canary"] = map[string]any{"share": share, "window": window}
	return withStreams(proxyToSupervised(t, httpPort, "web", web))
}

// withStreams puts supervise_streams before the reverse_proxy of
// proxyToSupervised's config.
func withStreams(cfg map[string]any) map[string]any {
	route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)
	route["handle"] = append([]any{map[string]any{"handler": "supervise_streams"}}, route["handle"].([]any)...)
	return cfg
}

// reloadTo loads cfg with web's release and failure rate changed (the
// admin address kept), and returns the answer.
func reloadTo(t testing.TB, c *caddyProc, cfg map[string]any, httpPort int, release, failRate string, share int, window string) (int, string) {
	t.Helper()
	next := canaryConfig(t, httpPort, release, failRate, share, window)
	next["admin"] = cfg["admin"]
	return c.tryLoad(t, next)
}

// A deploy with a canary, under 16 clients: a release that fails every
// request, and one that fails half of them, are rejected (the reload
// fails with the figures, the old release serves on) and cost the clients
// at most 2% of their requests (GETs that failed on the new release are
// sent again to the old one: none, in practice); a good release is
// promoted with none failed. The admin API shows each verdict, and the
// metrics count them.
func TestPumaCanaryVerdicts(t *testing.T) {
	needPuma(t)
	httpPort := freePort(t)
	cfg := canaryConfig(t, httpPort, "v1", "0", 20, "10s")
	c, l := pumaUnderLoad(t, cfg, httpPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	v1 := status(t, cfg, "web")

	for _, bad := range []struct{ release, rate string }{{"bad", "1"}, {"half", "0.5"}} {
		before := l.ok.Load()
		began := time.Now()
		code, body := reloadTo(t, c, cfg, httpPort, bad.release, bad.rate, 20, "10s")
		took := time.Since(began)
		if code == 200 || !strings.Contains(body, "release rejected by its canary") || !strings.Contains(body, "the old instance still serves") {
			t.Fatalf("reload to %s (fails %s): %d %s", bad.release, bad.rate, code, body)
		}
		st := status(t, cfg, "web")
		if st.PID != v1.PID || st.Canary == nil || st.Canary.State != "rejected" || st.Canary.New.Failed == 0 {
			t.Fatalf("after %s: pid %d, canary %+v; want pid %d and a rejection", bad.release, st.PID, st.Canary, v1.PID)
		}
		var failed int
		l.count(func(s *loadStats) { failed = len(s.failures) })
		served := l.ok.Load() - before
		t.Logf("%s (fails %s): rejected after %s: %s; clients: %d ok, %d failed", bad.release, bad.rate, took.Round(time.Millisecond), st.Canary.Reason, served, failed)
		if float64(failed) > 0.02*float64(served) {
			t.Errorf("%s: %d of %d requests failed during the deploy, more than 2%%", bad.release, failed, served)
		}
		assertGet(t, url, fmt.Sprintf("pid %d release v1", v1.PID))
		c.waitLog(fmt.Sprintf(`"msg":"process exited","pid":%d`, st.Canary.PIDs[0]), 20*time.Second)
	}

	code, body := reloadTo(t, c, cfg, httpPort, "v2", "0", 20, "10s")
	if code != 200 {
		t.Fatalf("reload to a good release: %d %s", code, body)
	}
	v2 := status(t, cfg, "web")
	if v2.PID == v1.PID || v2.Canary == nil || v2.Canary.State != "promoted" || v2.Canary.New.Failed != 0 || v2.Canary.New.Requests < minCanaryRequests {
		t.Fatalf("after the good release: pid %d, canary %+v", v2.PID, v2.Canary)
	}
	t.Logf("v2: %s", v2.Canary.Reason)
	assertGet(t, url, fmt.Sprintf("pid %d release v2", v2.PID))
	metrics := getBody(t, "http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/metrics")
	for _, want := range []string{`caddy_supervise_canary_verdicts_total{name="web",verdict="rejected"} 2`, `caddy_supervise_canary_verdicts_total{name="web",verdict="promoted"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// reloadAsync reloads to web's release (of canaryConfig, 50% 30s) in the
// background; the channel gets "STATUS BODY", or the error.
func reloadAsync(t testing.TB, cfg map[string]any, httpPort int, release string) <-chan string {
	t.Helper()
	next := canaryConfig(t, httpPort, release, "0", 50, "30s")
	next["admin"] = cfg["admin"]
	return loadInBackground(t, next)
}

// loadInBackground posts cfg to its admin endpoint's /load in the
// background; the channel gets "STATUS BODY", or the error.
func loadInBackground(t testing.TB, cfg map[string]any) <-chan string {
	t.Helper()
	var buf bytes.Buffer
	writeJSONTo(t, &buf, cfg)
	return inBackground(func() (*http.Response, error) {
		return http.Post("http://"+cfg["admin"].(map[string]any)["listen"].(string)+"/load", "application/json", &buf)
	})
}

// canaryIdle starts Caddy in front of Puma v1 with a canary of 50% over
// 30s, without load (a window stays open: too few requests to judge).
func canaryIdle(t *testing.T) (cfg map[string]any, c *caddyProc, httpPort int, url string) {
	t.Helper()
	needPuma(t)
	httpPort = freePort(t)
	cfg = canaryConfig(t, httpPort, "v1", "0", 50, "30s")
	c = startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	return cfg, c, httpPort, fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
}

// exitsCleanly sends Caddy SIGTERM and expects it to exit 0.
func exitsCleanly(t testing.TB, c *caddyProc) {
	t.Helper()
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
}

// getBody GETs url and returns its body (200 only).
func getBody(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

// releaseOf GETs url with client and returns the release that answered.
func releaseOf(t testing.TB, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	_, rel, _ := strings.Cut(strings.TrimSpace(string(b)), " release ")
	rel, _, _ = strings.Cut(rel, " ")
	return rel
}

// During a window without load (it stays open: too few requests to
// judge), clients with cookies stay on the release they were sent to,
// both releases get some; promote through the admin API moves everyone to
// the new one. Then a second window is aborted through the admin API: the
// reload fails, and everyone is on the old release again. A second reload
// sent while a window is open waits for its verdict.
func TestPumaCanaryStickyAndByHand(t *testing.T) {
	cfg, c, httpPort, url := canaryIdle(t)
	reload := func(release string) <-chan string { return reloadAsync(t, cfg, httpPort, release) }
	awaitWindow := func(n int) {
		c.waitLogCount(`"msg":"canary window opens`, n, 30*time.Second)
	}

	first := reload("v2")
	awaitWindow(1)
	// clients with cookies stay on their release; until both releases were
	// seen, at most 13 clients of 2 requests: too few for the rule's
	// verdict (at least 28 requests on the new release without a failure)
	seen := map[string]int{}
	for i := 0; i < 13 && (i < 6 || len(seen) < 2); i++ {
		jar, _ := cookiejar.New(nil)
		client := &http.Client{Jar: jar}
		rel := releaseOf(t, client, url)
		seen[rel]++
		if again := releaseOf(t, client, url); again != rel {
			t.Fatalf("client %d: first %s, then %s: not sticky", i, rel, again)
		}
	}
	if seen["v1"] == 0 || seen["v2"] == 0 {
		t.Errorf("clients at 50%%: %v, want some on each release", seen)
	}
	// a second reload waits for the verdict of the first (Caddy loads one
	// config at a time)
	second := reload("v3")
	select {
	case got := <-first:
		t.Fatalf("the reload ended before its verdict: %s", got)
	case got := <-second:
		t.Fatalf("the second reload ended while the first one's window was open: %s", got)
	case <-time.After(500 * time.Millisecond):
	}
	if code := adminDo(t, cfg, "POST", "/supervise/web/canary/promote", nil); code != 200 {
		t.Fatalf("promote: %d", code)
	}
	if got := <-first; !strings.HasPrefix(got, "200 ") {
		t.Fatalf("the promoted reload: %s", got)
	}
	// the second reload's window: abort it
	awaitWindow(2)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	for rel := ""; rel != "v3"; {
		rel = releaseOf(t, &http.Client{}, url) // until one request went to v3
	}
	if code := adminDo(t, cfg, "POST", "/supervise/web/canary/abort", nil); code != 200 {
		t.Fatalf("abort: %d", code)
	}
	if got := <-second; !strings.Contains(got, "release rejected by its canary (aborted through the admin API") {
		t.Fatalf("the aborted reload: %s", got)
	}
	for range 10 {
		if rel := releaseOf(t, client, url); rel != "v2" {
			t.Fatalf("after the abort: release %s answered, want v2", rel)
		}
	}
	var apiErr struct{ Error string }
	if code := adminDo(t, cfg, "POST", "/supervise/web/canary/promote", &apiErr); code != 409 || !strings.Contains(apiErr.Error, "no canary window is open") {
		t.Errorf("promote without a window: %d %q", code, apiErr.Error)
	}
	exitsCleanly(t, c)
}

// SIGTERM while a window is open: the reload fails at once, the new
// release's request in flight finishes (it retires, it is not killed), the
// old release serves the drain, and Caddy exits 0.
func TestPumaCanarySIGTERMDuringWindow(t *testing.T) {
	cfg, c, httpPort, url := canaryIdle(t)
	reloaded := reloadAsync(t, cfg, httpPort, "v2")
	c.waitLog(`"msg":"canary window opens`, 30*time.Second)

	// a slow request on each release
	onRelease := map[string]*http.Client{}
	for len(onRelease) < 2 {
		jar, _ := cookiejar.New(nil)
		client := &http.Client{Jar: jar}
		onRelease[releaseOf(t, client, url)] = client
	}
	var slow []<-chan string
	for _, client := range onRelease {
		slow = append(slow, inBackground(func() (*http.Response, error) { return client.Get(url + "?ms=3000") }))
	}
	// once both reached their instances (the dynamic upstream counted them)
	for sent := 0; sent < 2; {
		sent = 0
		for _, in := range status(t, cfg, "web").Instances {
			if in.Requests > in.Responses["ok"]+in.Responses["5xx"]+in.Responses["failed"] { // one in flight
				sent++
			}
		}
	}
	c.signal(syscall.SIGTERM)
	if got := <-reloaded; strings.HasPrefix(got, "200 ") || !strings.Contains(got, "exiting") {
		t.Errorf("the reload during the exit: %s", got)
	}
	for _, answer := range slow {
		if r := <-answer; !strings.HasPrefix(r, "200 pid") {
			t.Errorf("a request in flight at SIGTERM: %s", r)
		}
	}
	if code := c.wait(30 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	c.waitLog(`"msg":"canary window called off`, time.Second)
}

// A pool of two Puma instances under load, a canary of its first batch:
// a release that fails every request is rejected (the pool's instances are
// the old ones, none failed), a good one is promoted and the roll replaces
// the second instance without a window of its own.
func TestPumaCanaryPool(t *testing.T) {
	needPuma(t)
	httpPort := freePort(t)
	pool := func(cfg map[string]any) map[string]any {
		procs := cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]map[string]any)
		procs[0]["instances"] = 2
		return cfg
	}
	cfg := pool(canaryConfig(t, httpPort, "v1", "0", 20, "10s"))
	c, l := pumaUnderLoad(t, cfg, httpPort)
	pids := func() []int {
		var p []int
		for _, in := range status(t, cfg, "web").Instances {
			if in.Serving {
				p = append(p, in.PID)
			}
		}
		return p
	}
	v1 := pids()
	if len(v1) != 2 {
		t.Fatalf("serving: %v", v1)
	}
	next := pool(canaryConfig(t, httpPort, "bad", "1", 20, "10s"))
	next["admin"] = cfg["admin"]
	code, body := c.tryLoad(t, next)
	if code == 200 || !strings.Contains(body, "release rejected by its canary") || !strings.Contains(body, "the roll stopped at instance") {
		t.Fatalf("reload of the pool to a failing release: %d %s", code, body)
	}
	if got := pids(); fmt.Sprint(got) != fmt.Sprint(v1) {
		t.Errorf("after the rejection: serving %v, want %v", got, v1)
	}
	next = pool(canaryConfig(t, httpPort, "v2", "0", 20, "10s"))
	next["admin"] = cfg["admin"]
	c.load(t, next)
	got := pids()
	if len(got) != 2 || got[0] == v1[0] || got[0] == v1[1] || got[1] == v1[0] || got[1] == v1[1] {
		t.Errorf("after the good release: serving %v (before %v)", got, v1)
	}
	if n := len(c.logs.lines(`"msg":"canary window opens`)); n != 2 {
		t.Errorf("%d canary windows for two deploys of the pool", n)
	}
	if st := status(t, cfg, "web"); st.Canary == nil || st.Canary.State != "promoted" {
		t.Errorf("canary: %+v", st.Canary)
	}
	finishUnderLoad(t, c, l, 0, 20*time.Second)
}

// The one line: `caddy supervise --blue-green --ready /up --canary
// 20%:10s -- puma …`, under load; an admin restart whose new instance
// fails every request (the same definition: a file the app reads at boot
// says so) is rejected — the restart answers 500 with the figures, the old
// instance serves on, no client request fails — and one that does not is
// promoted.
func TestOneLineCanary(t *testing.T) {
	needPuma(t)
	dir := t.TempDir()
	failFile := dir + "/fail"
	ru, err := filepath.Abs("testdata/puma/config.ru")
	if err != nil {
		t.Fatal(err)
	}
	httpPort, adminPort := freePort(t), freePort(t)
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	c := superviseCaddy(t, dir,
		[]string{"--admin", admin, "--blue-green", "--ready", "/up", "--canary", "20%:10s", "--name", "web", "--public-dir", ""},
		[]string{"puma", "-b", "tcp://127.0.0.1:{supervise.port}", "-t", "16:16", "-e", "production", ru},
		"HTTP_PORT="+strconv.Itoa(httpPort), "FAIL_FILE="+failFile, "BOOT_DELAY="+pumaBoot)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/?ms=20", httpPort), 16)
	l.waitOK(t, 100, 10*time.Second)
	cfg := map[string]any{"admin": map[string]any{"listen": admin}}
	first := status(t, cfg, "web")

	if err := os.WriteFile(failFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Error string }
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", &apiErr); code != 500 || !strings.Contains(apiErr.Error, "release rejected by its canary") {
		t.Fatalf("restart of a release that fails: %d %q", code, apiErr.Error)
	}
	t.Logf("rejected: %s", apiErr.Error)
	if st := status(t, cfg, "web"); st.PID != first.PID {
		t.Errorf("after the rejection: pid %d serves, want %d", st.PID, first.PID)
	}
	os.Remove(failFile)
	if code := adminDo(t, cfg, "POST", "/supervise/web/restart", nil); code != 200 {
		t.Fatalf("restart of a good release: %d", code)
	}
	if st := status(t, cfg, "web"); st.PID == first.PID || st.Canary == nil || st.Canary.State != "promoted" {
		t.Errorf("after the good restart: pid %d, canary %+v", st.PID, st.Canary)
	}
	l.stopNoFailures(t)
	exitsCleanly(t, c)
}

// The second pass of a GET that the new release failed starts from the
// request as it reached supervise_streams, with the response as it was
// then: handlers between supervise_streams and reverse_proxy (a rewrite
// that strips a prefix, a response header added) act once, not twice.
// Every GET sent during the window answers 200; a POST that the new
// release fails is not sent again (the client gets the 500).
func TestPumaCanaryResendsAsItCame(t *testing.T) {
	needPuma(t)
	httpPort := freePort(t)
	conf := func(release, failRate string) map[string]any {
		cfg := canaryConfig(t, httpPort, release, failRate, 50, "30s")
		route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)
		handle := route["handle"].([]any) // supervise_streams, reverse_proxy
		route["handle"] = []any{handle[0],
			map[string]any{"handler": "headers", "response": map[string]any{"add": map[string]any{"X-Test": []string{"once"}}}},
			map[string]any{"handler": "rewrite", "strip_path_prefix": "/api"},
			handle[1]}
		return cfg
	}
	cfg := conf("v1", "0")
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	deploy := func(n int) <-chan string {
		next := conf("bad", "1")
		next["admin"] = cfg["admin"]
		done := loadInBackground(t, next)
		c.waitLogCount(`"msg":"canary window opens`, n, 30*time.Second)
		return done
	}

	done := deploy(1)
	gets := 0
	for reloaded := ""; reloaded == ""; gets++ {
		resp, err := http.Get(base + "/api/api/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "release v1 path /api/x") || len(resp.Header.Values("X-Test")) != 1 {
			t.Fatalf("GET %d during the window: %s %q, X-Test %q", gets, resp.Status, b, resp.Header.Values("X-Test"))
		}
		select {
		case reloaded = <-done:
		default:
		}
		if gets > 200 {
			t.Fatal("no verdict after 200 requests")
		}
	}
	st := status(t, cfg, "web")
	if st.Canary == nil || st.Canary.State != "rejected" || st.Canary.New.Failed == 0 {
		t.Fatalf("canary after the GETs: %+v", st.Canary)
	}
	t.Logf("%d GETs, all 200 with one X-Test; %s", gets, st.Canary.Reason)

	done = deploy(2)
	failedPosts := 0
	for reloaded := ""; reloaded == ""; {
		resp, err := http.Post(base+"/api/x", "text/plain", strings.NewReader("a form"))
		if err != nil {
			// (a kept-alive connection that the reload's listener swap reset:
			// Go's client does not send a POST again; Caddy never saw it)
			t.Logf("POST: %v", err)
		} else {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 500 {
				failedPosts++
			}
		}
		select {
		case reloaded = <-done:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if st := status(t, cfg, "web"); failedPosts == 0 || st.Canary.New.Failed < int64(failedPosts) {
		t.Errorf("%d POSTs failed on the new release; its canary: %+v", failedPosts, st.Canary)
	}
	exitsCleanly(t, c)
}

// A release that boots and answers its probe but never answers a request
// (a deadlock on real traffic): its requests count as failed once 10 s
// went by without an answer, and it is rejected; the GETs it held are
// sent again to the old release once it stops (drain_timeout), and answer
// 200.
func TestPumaCanaryHungRelease(t *testing.T) {
	needPuma(t)
	httpPort := freePort(t)
	conf := func(release string, hang string) map[string]any {
		web := pumaProc(t, release, "auto", map[string]string{"HANG": hang})
		web["canary"] = map[string]any{"share": 50, "window": "5s"}
		web["drain_timeout"] = "2s"
		return withStreams(proxyToSupervised(t, httpPort, "web", web))
	}
	cfg := conf("v1", "0")
	c := startCaddy(t, cfg)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	url := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	next := conf("hung", "1")
	next["admin"] = cfg["admin"]
	began := time.Now()
	done := loadInBackground(t, next)
	c.waitLog(`"msg":"canary window opens`, 30*time.Second)
	var answers []<-chan string
	for range 8 {
		answers = append(answers, inBackground(func() (*http.Response, error) { return http.Get(url) }))
	}
	got := <-done
	if strings.HasPrefix(got, "200") || !strings.Contains(got, "release rejected by its canary") {
		t.Fatalf("reload to a release that hangs: %s", got)
	}
	t.Logf("rejected %s after the reload: %s", time.Since(began).Round(100*time.Millisecond), got)
	for i, a := range answers {
		if r := <-a; !strings.HasPrefix(r, "200 pid") || !strings.Contains(r, "release v1") {
			t.Errorf("GET %d: %s", i, r)
		}
	}
	exitsCleanly(t, c)
}

// WebSockets opened during a window (uvicorn's app, testdata/streams): a
// client's cookie takes its WebSocket to the release it was drawn for. An
// abort ends the new release's WebSocket cleanly at once (close 1001: the
// client reconnects, to the old release) and keeps the old release's; a
// promotion keeps the new release's WebSocket open and serving.
func TestCanaryStreamsAtTheVerdict(t *testing.T) {
	needStreamsApp(t)
	httpPort := freePort(t)
	conf := func(release string) map[string]any {
		return streamsConfig(t, httpPort, streamsApp(t, "auto", release, "", map[string]any{"canary": map[string]any{"share": 50, "window": "30s"}}))
	}
	cfg := conf("v1")
	c, addr, _ := serveStreams(t, cfg, httpPort, "")
	reload := func(release string, n int) <-chan string {
		next := conf(release)
		next["admin"] = cfg["admin"]
		done := loadInBackground(t, next)
		c.waitLogCount(`"msg":"canary window opens`, n, 30*time.Second)
		return done
	}
	// onEach opens a WebSocket on each release of the window: the cookie of
	// a client drawn for the new one, and the same for the old one
	onEach := func(oldPID int) (onNew, onOld *wsClient) {
		for {
			jar, _ := cookiejar.New(nil)
			client := &http.Client{Jar: jar}
			resp, err := client.Get("http://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.TrimSpace(string(b)) == fmt.Sprintf("pid %d", oldPID) {
				continue
			}
			ck := resp.Header.Get("Set-Cookie")
			pair, _, _ := strings.Cut(ck, ";")
			if !strings.HasSuffix(pair, ".n") {
				t.Fatalf("a client on the new release got the cookie %q", ck)
			}
			var ws [2]*wsClient
			for i, v := range []string{pair, strings.TrimSuffix(pair, ".n") + ".o"} {
				if ws[i], err = dialWS(addr, "/ws", "Cookie: "+v); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ws[i].Close() })
				hello, err := ws[i].read(5 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 && hello == fmt.Sprintf("pid %d", oldPID) || i == 1 && hello != fmt.Sprintf("pid %d", oldPID) {
					t.Fatalf("WebSocket %d with cookie %s: %q (old pid %d)", i, v, hello, oldPID)
				}
			}
			return ws[0], ws[1]
		}
	}

	v1 := status(t, cfg, "web")
	done := reload("v2", 1)
	onNew, onOld := onEach(v1.PID)
	if code := adminDo(t, cfg, "POST", "/supervise/web/canary/abort", nil); code != 200 {
		t.Fatalf("abort: %d", code)
	}
	if got := <-done; !strings.Contains(got, "release rejected by its canary") {
		t.Fatalf("the aborted reload: %s", got)
	}
	var ce *wsCloseError
	if _, err := onNew.read(5 * time.Second); !errors.As(err, &ce) || ce.code != 1001 {
		t.Errorf("the new release's WebSocket at the abort: %v, want close 1001", err)
	}
	if got, err := onOld.ask("still", 5*time.Second); err != nil || got != fmt.Sprintf("pid %d: still", v1.PID) {
		t.Errorf("the old release's WebSocket after the abort: %q %v", got, err)
	}

	done = reload("v3", 2)
	onNew, _ = onEach(v1.PID)
	if code := adminDo(t, cfg, "POST", "/supervise/web/canary/promote", nil); code != 200 {
		t.Fatalf("promote: %d", code)
	}
	if got := <-done; !strings.HasPrefix(got, "200") {
		t.Fatalf("the promoted reload: %s", got)
	}
	v3 := status(t, cfg, "web")
	if got, err := onNew.ask("kept", 5*time.Second); err != nil || got != fmt.Sprintf("pid %d: kept", v3.PID) {
		t.Errorf("the new release's WebSocket after the promotion: %q %v (pid %d serves)", got, err, v3.PID)
	}
}
