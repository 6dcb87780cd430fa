// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logEntry is one JSON entry of Caddy's log.
type logEntry struct {
	Logger  string `json:"logger"`
	Msg     string `json:"msg"`
	Stream  string `json:"stream"`
	Partial bool   `json:"partial"`
}

// entriesOf returns the entries of logger, in order.
func entriesOf(t *testing.T, c *caddyProc, logger string) []logEntry {
	t.Helper()
	var out []logEntry
	for _, l := range c.logs.lines(`"logger":"` + logger + `"`) {
		var e logEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		out = append(out, e)
	}
	return out
}

func TestOutput(t *testing.T) {
	proc := func(name, output, script string) map[string]any {
		return map[string]any{"name": name, "command": []string{"sh", "-c", script}, "output": output, "on_end": "keep_running"}
	}
	const lines = 20000
	c := startCaddy(t, testConfig(t, 0, 0,
		proc("lines", "log", fmt.Sprintf(`seq 1 %d; echo to-stderr >&2; printf 'no newline at the end'`, lines)),
		proc("long", "log", `head -c 200000 /dev/zero | tr '\0' a; echo; echo after`),
		proc("raw", "inherit", `echo raw-line-from-inherit`),
		proc("quiet", "discard", `echo discarded-line; echo discarded-err >&2`),
	))
	c.waitLogCount("Caddy keeps running", 4, 10*time.Second)

	// every line, in order, then the last one without a newline, and only
	// then the exit
	var stdout []string
	var stderr []string
	exitAt := -1
	for i, e := range entriesOf(t, c, "supervise.lines") {
		switch {
		case e.Stream == "stdout":
			stdout = append(stdout, e.Msg)
		case e.Stream == "stderr":
			stderr = append(stderr, e.Msg)
		case e.Msg == "process exited unexpectedly":
			exitAt = i
		}
		if e.Stream != "" && exitAt >= 0 {
			t.Errorf("output line %q logged after the exit", e.Msg)
		}
	}
	if len(stdout) != lines+1 {
		t.Fatalf("%d stdout lines logged, want %d", len(stdout), lines+1)
	}
	for i := range lines {
		if stdout[i] != strconv.Itoa(i+1) {
			t.Fatalf("stdout line %d is %q, want %d", i, stdout[i], i+1)
		}
	}
	if stdout[lines] != "no newline at the end" {
		t.Errorf("last line %q", stdout[lines])
	}
	if len(stderr) != 1 || stderr[0] != "to-stderr" {
		t.Errorf("stderr lines %q", stderr)
	}

	// a 200000-byte line: 64 KiB entries marked partial, then the rest
	var long []logEntry
	for _, e := range entriesOf(t, c, "supervise.long") {
		if e.Stream != "" {
			long = append(long, e)
		}
	}
	if len(long) != 5 {
		t.Fatalf("long line logged as %d entries, want 4 + the line after", len(long))
	}
	total := 0
	for i, e := range long[:4] {
		total += len(e.Msg)
		if e.Partial != (i < 3) || (i < 3 && len(e.Msg) != maxLine) {
			t.Errorf("entry %d: %d bytes, partial %v", i, len(e.Msg), e.Partial)
		}
	}
	if total != 200000 || long[4].Msg != "after" {
		t.Errorf("long line: %d bytes in all, then %q", total, long[4].Msg)
	}

	raw := map[string]int{}
	for _, l := range strings.Split(c.logs.String(), "\n") {
		raw[l]++
	}
	if raw["raw-line-from-inherit"] != 1 {
		t.Error("inherit: the raw line is not on Caddy's output")
	}
	for _, e := range append(entriesOf(t, c, "supervise.raw"), entriesOf(t, c, "supervise.quiet")...) {
		if e.Stream != "" {
			t.Errorf("inherit or discard: output logged: %+v", e)
		}
	}
	if raw["discarded-line"]+raw["discarded-err"] > 0 {
		t.Error("discard: the output was not discarded")
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}
