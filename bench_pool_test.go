// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPoolThroughput: a Node handler that burns ~20 ms of CPU per
// request (testdata/pool/server.js, `/?burn=20`), 8 connections through
// Caddy, with `instances 1` and `instances 2` side by side in one run
// (alternated, twice each). It reports each one's requests per second and
// their ratio (goal ≥ 1.6 on two cores: the load generator and Caddy share
// them with the app).
func BenchmarkPoolThroughput(b *testing.B) {
	const measure = 8 * time.Second
	for b.Loop() {
		rps := map[int][]float64{}
		for _, n := range []int{1, 2, 1, 2} {
			httpPort := freePort(b)
			cfg := proxyToSupervised(b, httpPort, "web", poolApp(b, n, "v1", "", nil))
			cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
			c := startCaddy(b, cfg)
			c.waitLogCount(`"to":"ready"`, n, 30*time.Second)
			l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/?burn=20", httpPort), 8)
			l.waitOK(b, 50, 30*time.Second) // warm
			from, began := l.ok.Load(), time.Now()
			time.Sleep(measure) // the measurement's window
			done, took := l.ok.Load()-from, time.Since(began)
			l.stopNoFailures(b)
			rps[n] = append(rps[n], float64(done)/took.Seconds())
			c.signal(syscall.SIGTERM)
			c.wait(30 * time.Second)
		}
		one, two := mean(rps[1]), mean(rps[2])
		b.ReportMetric(one, "req/s-instances-1")
		b.ReportMetric(two, "req/s-instances-2")
		b.ReportMetric(two/one, "ratio")
	}
}

// BenchmarkPoolRollingRestart: an admin restart of 4 instances (the Node
// server, `/?burn=2`) under 16 clients of load. It reports failed
// requests (goal: 0), the slowest request, how long the roll took, and the
// most instances that ran at once (goal: 5).
func BenchmarkPoolRollingRestart(b *testing.B) {
	for b.Loop() {
		cfg, c, l := servePool(b, poolApp(b, 4, "v1", "", nil), 4, "/?burn=2")
		l.slowest.Store(0)
		began := time.Now()
		if code := adminDo(b, cfg, "POST", "/supervise/web/restart", nil); code != 200 {
			b.Fatalf("restart: %d", code)
		}
		took := time.Since(began)
		l.waitOK(b, l.ok.Load()+200, 10*time.Second)
		st := l.stop()
		b.ReportMetric(float64(len(st.failures)+len(c.logs.lines(`"http.log.error"`))), "failed")
		b.ReportMetric(float64(st.ok), "ok")
		b.ReportMetric(float64(l.slowest.Load())/1e6, "slowest-ms")
		b.ReportMetric(took.Seconds(), "roll-s")
		b.ReportMetric(float64(peakInstances(c)), "peak-instances")
		c.signal(syscall.SIGTERM)
		c.wait(30 * time.Second)
	}
}

func mean(v []float64) float64 {
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}
