// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCanary: Debian's Puma under 16 clients (`/?ms=20`), with and
// without `canary 10% 30s`, side by side in one run (alternated, twice
// each). In each, a reload deploys a release that boots and answers its
// probe but fails every request, and the clients' requests are counted
// from the reload's start for canaryBenchSpan (a person who notices and
// deploys again takes longer); then a reload deploys a good release, and
// its time is measured. It reports the share of requests lost to the bad
// release (goal with canary: ≤ 2%, under 0.5% in practice), and how long
// the good release's deploy took with and without the window.
func BenchmarkCanary(b *testing.B) {
	needPuma(b)
	const span = 10 * time.Second
	for b.Loop() {
		lost := map[bool][]float64{}
		deploy := map[bool][]float64{}
		for _, canary := range []bool{false, true, false, true} {
			httpPort := freePort(b)
			conf := func(release, failRate string) map[string]any {
				web := pumaProc(b, release, "auto", map[string]string{"FAIL_RATE": failRate})
				if canary {
					web["canary"] = map[string]any{"share": 10, "window": "30s"}
				}
				cfg := withStreams(proxyToSupervised(b, httpPort, "web", web))
				cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
				return cfg
			}
			cfg := conf("v1", "0")
			c := startCaddy(b, cfg)
			c.waitLog(`"to":"ready"`, 30*time.Second)
			l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/?ms=20", httpPort), 16)
			l.waitOK(b, 100, 10*time.Second)

			failedNow := func() int {
				n := 0
				l.count(func(s *loadStats) { n = len(s.failures) })
				return n
			}
			ok0, failed0, began := l.ok.Load(), failedNow(), time.Now()
			bad := conf("bad", "1")
			bad["admin"] = cfg["admin"]
			code, body := c.tryLoad(b, bad)
			if canary == (code == 200) {
				b.Fatalf("canary %v: the reload to a failing release answered %d %s", canary, code, body)
			}
			time.Sleep(time.Until(began.Add(span))) // the measurement's window
			ok, failed := l.ok.Load()-ok0, failedNow()-failed0
			lost[canary] = append(lost[canary], 100*float64(failed)/float64(int64(failed)+ok))

			good := conf("v2", "0")
			good["admin"] = cfg["admin"]
			began = time.Now()
			c.load(b, good)
			deploy[canary] = append(deploy[canary], time.Since(began).Seconds())
			l.stop()
			c.signal(syscall.SIGTERM)
			c.wait(30 * time.Second)
		}
		b.ReportMetric(mean(lost[false]), "%lost-without")
		b.ReportMetric(mean(lost[true]), "%lost-canary")
		b.ReportMetric(mean(deploy[false]), "s-deploy-without")
		b.ReportMetric(mean(deploy[true]), "s-deploy-canary")
	}
}
