// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkStreamsThroughRestart: 500 open WebSockets through an admin
// restart (blue/green, the uvicorn app of the stream tests), side by side
// in one run with and without `supervise_streams` before the proxy; each
// variant has drain_timeout and stream_drain_timeout 10 s. It reports,
// per variant: WebSockets still answered by the old instance after the
// restart (goal: all), how they ended once the bound passed (a close
// frame 1001, or cut without one), how long the restart took, and the
// memory of the old instance while it retires next to the new one's.
func BenchmarkStreamsThroughRestart(b *testing.B) {
	needStreamsApp(b)
	const sockets = 500
	for _, variant := range []string{"supervise_streams", "without"} {
		b.Run(variant, func(b *testing.B) {
			for b.Loop() {
				httpPort := freePort(b)
				app := streamsApp(b, "auto", "v1", "", map[string]any{"stream_drain_timeout": "10s"})
				cfg := streamsConfig(b, httpPort, app)
				if variant == "without" {
					route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)
					route["handle"] = route["handle"].([]any)[1:]
				}
				cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}}
				c := startCaddy(b, cfg)
				c.waitLog(`"to":"ready"`, 30*time.Second)
				addr := fmt.Sprintf("127.0.0.1:%d", httpPort)

				clients := make([]*wsClient, sockets)
				var oldPID int
				for i := range clients {
					ws, err := dialWS(addr, "/ws")
					if err != nil {
						b.Fatalf("websocket %d: %v", i, err)
					}
					defer ws.Close()
					hello, err := ws.read(10 * time.Second)
					if err != nil {
						b.Fatalf("websocket %d: %v", i, err)
					}
					oldPID = pidIn(b, hello)
					clients[i] = ws
				}
				began := time.Now()
				var st Status
				if code := adminDo(b, cfg, "POST", "/supervise/web/restart", &st); code != 200 {
					b.Fatalf("restart: %d", code)
				}
				restart := time.Since(began)
				now := status(b, cfg, "web")
				oldMem, newMem := instanceOf(b, now, oldPID).MemoryBytes, instanceOf(b, now, st.PID).MemoryBytes

				var kept, clean, cut atomic.Int64
				var wg sync.WaitGroup
				for _, ws := range clients {
					wg.Go(func() {
						a, err := ws.ask("who", 10*time.Second)
						if err != nil || pidIn(b, a) != oldPID {
							cut.Add(1)
							return
						}
						kept.Add(1)
						_, err = ws.read(30 * time.Second) // the app sends nothing more: the stream's end
						var ce *wsCloseError
						if errors.As(err, &ce) && ce.code == 1001 {
							clean.Add(1)
						} else {
							cut.Add(1)
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(kept.Load()), "kept-by-old-instance")
				b.ReportMetric(float64(clean.Load()), "closed-1001")
				b.ReportMetric(float64(cut.Load()), "cut")
				b.ReportMetric(ms(restart), "ms-restart")
				b.ReportMetric(float64(oldMem)/(1<<20), "MiB-old-instance-retiring")
				b.ReportMetric(float64(newMem)/(1<<20), "MiB-new-instance")
				c.signal(15)
				c.wait(20 * time.Second)
			}
		})
	}
}
