// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bytes"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// countingWriter counts the output lines logged to it.
type countingWriter struct{ entries atomic.Int64 }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.entries.Add(int64(bytes.Count(b, []byte(`"stream":"stdout"`))))
	return len(b), nil
}

// BenchmarkOutputLines forwards the output of `seq 1 1000000` (short lines)
// through the `log` output mode into a JSON log encoder, and reports lines
// per second; it fails if a line is lost. The encoder writes to a counter,
// so the figure is the module's pipeline, not a disk's or a terminal's.
func BenchmarkOutputLines(b *testing.B) {
	const lines = 1_000_000
	w := &countingWriter{}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(w), zap.InfoLevel)
	var total time.Duration
	for b.Loop() {
		def := &Process{Name: "seq", Command: []string{"seq", "1", strconv.Itoa(lines)}, OnEnd: OnEndKeepRunning}
		before := w.entries.Load()
		began := time.Now()
		p := testProcLogger(b, def, zap.New(core))
		p.waitEnded(time.Minute)
		total += time.Since(began)
		p.stop()
		if got := w.entries.Load() - before; got != lines {
			b.Fatalf("%d lines logged, want %d", got, lines)
		}
	}
	b.ReportMetric(float64(lines*b.N)/total.Seconds(), "lines/s")
}
