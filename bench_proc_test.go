// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// Benchmarks against a real Caddy binary; scripts/bench.sh runs them (with
// a Caddy built without the race detector) and prints their figures. Each
// does a fixed number of runs per b.N; run them with -benchtime 1x.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkShutdownUnderLoad: shutdowns (SIGTERM) under load through an
// upstream that closes its listener at the signal, with short (20 ms) and
// long (1.5 s) requests; reports failed requests over all runs, the median
// overhead from the upstream's last act (its exit) to Caddy's exit, and the
// drain's lag: from the end of the last response to the stop signal's
// arrival at the upstream.
func BenchmarkShutdownUnderLoad(b *testing.B) {
	for _, bc := range []struct {
		name     string
		request  string
		runs     int
		warmupOK int64
	}{
		{"short", "20ms", 20, 200},
		{"long", "1500ms", 10, 32},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				var failed, ok int
				var exitOverhead, lag, drainLag []time.Duration
				for range bc.runs {
					s := newSink(b)
					httpPort, upPort := freePort(b), freePort(b)
					c := startCaddy(b, testConfig(b, httpPort, upPort, upstreamProc(s, "web", upPort)))
					up := s.next(b, 10*time.Second)
					l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=%s", httpPort, bc.request), 16)
					l.waitOK(b, bc.warmupOK, 30*time.Second)
					l.churn.Store(true)
					c.signal(syscall.SIGTERM)
					sig := up.expect(b, "signal", 10*time.Second)
					exit := up.expect(b, "exit", 10*time.Second)
					c.wait(10 * time.Second)
					st := l.stop()
					failed += len(st.failures) + len(c.logs.lines(`"http.log.error"`))
					ok += st.ok
					exitOverhead = append(exitOverhead, c.exited.Sub(exit.time()))
					last := time.Unix(0, l.lastOK.Load())
					lag = append(lag, sig.time().Sub(last))
					if ts := logTimes(b, c.logs.lines(`"msg":"drain over"`)); len(ts) == 1 {
						drainLag = append(drainLag, ts[0].Sub(last))
					}
				}
				b.ReportMetric(float64(failed), "failed-requests")
				b.ReportMetric(float64(ok), "ok-requests")
				b.ReportMetric(ms(median(exitOverhead)), "ms-exit-overhead-median")
				b.ReportMetric(ms(slices.Max(exitOverhead)), "ms-exit-overhead-max")
				b.ReportMetric(ms(median(lag)), "ms-last-response-to-signal-median")
				b.ReportMetric(ms(slices.Max(lag)), "ms-last-response-to-signal-max")
				b.ReportMetric(ms(median(drainLag)), "ms-last-response-to-drain-over-median")
				b.ReportMetric(ms(slices.Max(drainLag)), "ms-last-response-to-drain-over-max")
			}
		})
	}
}

// BenchmarkProxyThroughput: requests per second through Caddy to the same
// upstream, with the upstream supervised by this module and without (the
// test starts it), same config otherwise; reports both and their ratio;
// and supervised with `supervise_streams` in front of the proxy, against
// supervised without it: what seeing streams costs an ordinary request
// when the app is fast (the example upstream answers in microseconds).
func BenchmarkProxyThroughput(b *testing.B) {
	const rounds, each = 5, 5 * time.Second
	for b.Loop() {
		modes := []string{"supervised", "plain", "streams"}
		rates := make([][]float64, len(modes))
		for k := range rounds { // each mode goes first in turn, to share out the machine's drift; medians
			for j := range modes {
				i := (k + j) % len(modes)
				rates[i] = append(rates[i], proxyRate(b, modes[i], each))
			}
		}
		with, without, streams := rates[0], rates[1], rates[2]
		b.ReportMetric(medianOf(with), "req/s-supervised")
		b.ReportMetric(medianOf(without), "req/s-plain")
		b.ReportMetric(medianOf(streams), "req/s-supervised-with-supervise_streams")
		b.ReportMetric(medianOf(with)/medianOf(without), "ratio")
		b.ReportMetric(medianOf(streams)/medianOf(with), "ratio-supervise_streams/without")
	}
}

// proxyRate measures the rate through Caddy to the example upstream:
// "plain" (not supervised), "supervised", or "streams" (supervised, with
// supervise_streams before the proxy).
func proxyRate(b *testing.B, mode string, d time.Duration) float64 {
	s := newSink(b)
	httpPort, upPort := freePort(b), freePort(b)
	var cfg map[string]any
	if mode != "plain" {
		cfg = testConfig(b, httpPort, upPort, upstreamProc(s, "web", upPort))
	} else {
		up := exec.Command(upstreamBin, "-listen", fmt.Sprintf("127.0.0.1:%d", upPort), "-events", s.addr())
		if err := up.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = up.Process.Kill(); _ = up.Wait() })
		cfg = testConfig(b, httpPort, upPort)
		delete(cfg["apps"].(map[string]any), "supervise")
	}
	if mode == "streams" {
		route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)
		route["handle"] = append([]any{map[string]any{"handler": "supervise_streams"}}, route["handle"].([]any)...)
	}
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}} // no per-request debug lines
	return measureRate(b, s, cfg, httpPort, d)
}

// BenchmarkRespawn: a process that crashes at once is restarted after the
// first back-off (250 ms); reports the time from its exit to the new start
// beyond that back-off, the median of 10 runs.
func BenchmarkRespawn(b *testing.B) {
	for b.Loop() {
		var lat []time.Duration
		for range 10 {
			proc := map[string]any{"name": "crasher", "command": []string{"sh", "-c", "exit 1"}, "restart": "always"}
			c := startCaddy(b, testConfig(b, 0, 0, proc))
			c.waitLogCount(`"msg":"process started"`, 2, 10*time.Second)
			exited := logTimes(b, c.logs.lines("process exited unexpectedly"))[0]
			started := logTimes(b, c.logs.lines(`"msg":"process started"`))[1]
			lat = append(lat, started.Sub(exited)-restartFirstDelay)
			c.signal(syscall.SIGTERM)
			c.wait(10 * time.Second)
		}
		b.ReportMetric(ms(median(lat)), "ms-respawn-beyond-backoff-median")
	}
}

// BenchmarkRSSPerProcess: Caddy's resident memory with 20 supervised
// processes against none, per process; and the keeper's private memory
// (once per Caddy; the rest of its resident set is Caddy's binary, shared
// with Caddy through the page cache).
func BenchmarkRSSPerProcess(b *testing.B) {
	const n = 20
	for b.Loop() {
		rss := func(procs int) (caddy, keeper int) {
			var ps []map[string]any
			for i := range procs {
				ps = append(ps, map[string]any{"name": fmt.Sprint("p", i), "command": []string{"sleep", "60"}})
			}
			c := startCaddy(b, testConfig(b, 0, 0, ps...))
			if procs > 0 {
				c.waitLogCount(`"msg":"process started"`, procs, 10*time.Second)
			}
			caddy = rssKiB(b, c.cmd.Process.Pid)
			for _, pid := range childrenOf(c.cmd.Process.Pid) {
				if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(cmd), "caddy-supervise-keeper") {
					keeper = privateKiB(b, pid)
				}
			}
			c.signal(syscall.SIGTERM)
			c.wait(10 * time.Second)
			return caddy, keeper
		}
		base, _ := rss(0)
		full, keeper := rss(n)
		b.ReportMetric(float64(full-base)/n, "KiB-per-process")
		b.ReportMetric(float64(keeper), "KiB-keeper-private")
	}
}

// BenchmarkReloadsUnderLoad: 100 forced reloads under load; reports failed
// requests, new connections reset by Caddy's listener swap, and restarts.
func BenchmarkReloadsUnderLoad(b *testing.B) {
	for b.Loop() {
		s := newSink(b)
		httpPort, upPort := freePort(b), freePort(b)
		cfg := testConfig(b, httpPort, upPort, upstreamProc(s, "web", upPort))
		cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
		c := startCaddy(b, cfg)
		s.next(b, 10*time.Second)
		l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=10ms", httpPort), 8)
		l.waitOK(b, 100, 10*time.Second)
		l.churn.Store(true)
		for i := range 100 {
			c.forceLoad(b, cfg)
			c.waitLogCount("process kept running across config change", i+1, 10*time.Second)
		}
		st := l.stop()
		b.ReportMetric(float64(len(st.failures)+st.refused), "failed-requests")
		b.ReportMetric(float64(st.unaccepted), "reset-by-listener-swap")
		b.ReportMetric(float64(st.ok), "ok-requests")
		b.ReportMetric(float64(len(c.logs.lines(`"msg":"process started"`))-1), "restarts")
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func rssKiB(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

// privateKiB is the memory only this process uses (smaps_rollup).
func privateKiB(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	total := 0
	for _, l := range strings.Split(string(st), "\n") {
		for _, k := range []string{"Private_Clean:", "Private_Dirty:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				n, _ := strconv.Atoi(strings.Fields(v)[0])
				total += n
			}
		}
	}
	return total
}

func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n)); err == nil && ppid(stat) == pid {
			out = append(out, n)
		}
	}
	return out
}

// BenchmarkBlueGreenReload: 10 reloads under load, each changing the
// definition of a `port auto` + `ready` process (an upstream that takes
// 300 ms to listen); reports failed requests, the slowest request (the app's
// own time is 20 ms), and how long two instances ran side by side: from the
// new instance's start to the old one's exit (it finishes its requests, and
// lingers 300 ms after its last one, as a slow app server would).
func BenchmarkBlueGreenReload(b *testing.B) {
	const reloads = 10
	for b.Loop() {
		s := newSink(b)
		httpPort := freePort(b)
		web := func(release int) map[string]any {
			return map[string]any{
				"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-delay", "300ms", "-linger", "300ms"},
				"port": "auto", "ready": map[string]any{"http": ""}, "env": map[string]string{"RELEASE": strconv.Itoa(release)},
			}
		}
		cfg, c, up, l := serveUnderLoad(b, s, httpPort, web(0), 16)
		var overlap []time.Duration
		for i := 1; i <= reloads; i++ {
			cfg["apps"].(map[string]any)["supervise"] = map[string]any{"processes": []any{web(i)}}
			c.load(b, cfg)
			started := logTimes(b, c.logs.lines(`"msg":"starting a new instance"`))[i-1]
			next := s.next(b, 10*time.Second)
			overlap = append(overlap, up.dead(b, 10*time.Second).Sub(started))
			up = next
		}
		st := l.stop()
		b.ReportMetric(float64(len(st.failures)+st.refused), "failed-requests")
		b.ReportMetric(float64(st.ok), "ok-requests")
		b.ReportMetric(ms(time.Duration(l.slowest.Load())), "ms-slowest-request")
		b.ReportMetric(ms(median(overlap)), "ms-two-instances-median")
		b.ReportMetric(ms(slices.Max(overlap)), "ms-two-instances-max")
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	}
}

// BenchmarkSocket: proxy throughput to the same supervised upstream through
// a socket Caddy holds, over a unix socket vs TCP loopback (32 clients,
// 3 × 5 s each, alternating); and the latency a request pays when it waits
// in the socket's queue through an in-place admin restart of an app that
// boots in 1 s (16 clients, 20 ms requests; the slowest request, and the
// failed and refused ones, over 5 restarts).
func BenchmarkSocket(b *testing.B) {
	const rounds, each = 3, 5 * time.Second
	for b.Loop() {
		var unixRate, tcpRate float64
		for range rounds {
			unixRate += socketRate(b, true, each)
			tcpRate += socketRate(b, false, each)
		}
		b.ReportMetric(unixRate/rounds, "req/s-unix")
		b.ReportMetric(tcpRate/rounds, "req/s-tcp")
		b.ReportMetric(unixRate/tcpRate, "ratio-unix/tcp")

		s := newSink(b)
		httpPort, appPort := freePort(b), freePort(b)
		sock := fmt.Sprintf("127.0.0.1:%d", appPort)
		cfg := socketConfig(b, httpPort, sock, map[string]any{
			"name": "web", "command": []string{upstreamBin, "-events", s.addr(), "-delay", "1s"}, "socket": sock,
		})
		cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
		c := startCaddy(b, cfg)
		s.next(b, 10*time.Second)
		l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", httpPort), 16)
		l.waitOK(b, 100, 10*time.Second)
		for range 5 {
			if code := adminDo(b, cfg, "POST", "/supervise/web/restart", nil); code != 200 {
				b.Fatalf("restart: %d", code)
			}
			s.next(b, 10*time.Second)
			l.waitOK(b, l.ok.Load()+100, 10*time.Second)
		}
		st := l.stop()
		b.ReportMetric(float64(len(st.failures)), "failed")
		b.ReportMetric(float64(st.refused), "refused")
		b.ReportMetric(float64(st.ok), "ok")
		b.ReportMetric(ms(time.Duration(l.slowest.Load())), "ms-slowest-through-1s-boot")
		c.signal(syscall.SIGTERM)
		c.wait(15 * time.Second)
	}
}

func socketRate(b *testing.B, unix bool, d time.Duration) float64 {
	s := newSink(b)
	httpPort := freePort(b)
	sock := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	if unix {
		sock = "unix/" + filepath.Join(b.TempDir(), "app.sock")
	}
	cfg := socketConfig(b, httpPort, sock, map[string]any{"name": "web", "command": []string{upstreamBin, "-events", s.addr()}, "socket": sock})
	cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
	return measureRate(b, s, cfg, httpPort, d)
}

// measureRate starts Caddy with cfg, whose supervised upstream reports to
// s, and returns how many requests per second 32 clients get through
// httpPort during d.
func measureRate(b *testing.B, s *sink, cfg map[string]any, httpPort int, d time.Duration) float64 {
	c := startCaddy(b, cfg)
	s.next(b, 10*time.Second)
	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/", httpPort), 32)
	l.waitOK(b, 1000, 10*time.Second)
	n0, t0 := l.ok.Load(), time.Now()
	time.Sleep(d) // the measuring window
	rate := float64(l.ok.Load()-n0) / time.Since(t0).Seconds()
	l.stop()
	c.signal(syscall.SIGTERM)
	c.wait(15 * time.Second)
	return rate
}
