// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"encoding/json"
	"fmt"
	"path/filepath"
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
		proc("long", "log", `head -c 200000 /dev/zero | tr '\0' a; echo; echo after; head -c 65536 /dev/zero | tr '\0' b; echo; echo end`),
	))
	c.waitLogCount("Caddy keeps running", 2, 10*time.Second)

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
	if len(long) != 7 {
		t.Fatalf("long lines logged as %d entries, want 4 + the line after + 1 + the line after", len(long))
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
	// a line of exactly 64 KiB is one entry, not partial, and no empty one follows
	if e := long[5]; len(e.Msg) != maxLine || e.Partial || long[6].Msg != "end" {
		t.Errorf("64 KiB line: %d bytes, partial %v, then %q", len(e.Msg), e.Partial, long[6].Msg)
	}

	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// TestOutputInheritDiscard runs in a Caddy of its own: an inherited stderr
// is Caddy's own, where a child's write could land inside one of Caddy's
// long log entries (writes to a pipe above PIPE_BUF are not atomic).
func TestOutputInheritDiscard(t *testing.T) {
	proc := func(name, output, script string) map[string]any {
		return map[string]any{"name": name, "command": []string{"sh", "-c", script}, "output": output, "on_end": "keep_running"}
	}
	c := startCaddy(t, testConfig(t, 0, 0,
		proc("raw", "inherit", `echo raw-line-from-inherit; echo raw-err-from-inherit >&2`),
		proc("quiet", "discard", `echo discarded-line; echo discarded-err >&2`),
	))
	c.waitLogCount("Caddy keeps running", 2, 10*time.Second)
	count := func(b *logBuf, line string) int {
		return strings.Count("\n"+b.String(), "\n"+line+"\n")
	}
	if n := count(c.stdout, "raw-line-from-inherit"); n != 1 {
		t.Errorf("inherit: the stdout line is %d times on Caddy's stdout, want once", n)
	}
	if n := count(c.logs, "raw-err-from-inherit"); n != 1 {
		t.Errorf("inherit: the stderr line is %d times on Caddy's stderr, want once", n)
	}
	for _, e := range append(entriesOf(t, c, "supervise.raw"), entriesOf(t, c, "supervise.quiet")...) {
		if e.Stream != "" {
			t.Errorf("inherit or discard: output logged: %+v", e)
		}
	}
	for _, b := range []*logBuf{c.logs, c.stdout} {
		if count(b, "discarded-line")+count(b, "discarded-err") > 0 {
			t.Error("discard: the output was not discarded")
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// Every line written before a process group is gone is logged before the
// process is said to have exited: before it restarts, and before Caddy
// exits.
func TestOutputNoLostLine(t *testing.T) {
	// lines logs and returns the stdout lines of logger, and the index of
	// the first entry with message msg among its entries (-1 if none).
	lines := func(t *testing.T, c *caddyProc, logger, msg string) ([]string, int) {
		var out []string
		at := -1
		for i, e := range entriesOf(t, c, logger) {
			switch {
			case e.Stream == "stdout":
				out = append(out, e.Msg)
			case e.Msg == msg && at < 0:
				at = i
			}
		}
		return out, at
	}
	checkSeq := func(t *testing.T, got []string, n int) {
		t.Helper()
		if len(got) < n {
			t.Fatalf("%d lines logged, want %d", len(got), n)
		}
		for i := range n {
			if got[i] != strconv.Itoa(i+1) {
				t.Fatalf("line %d is %q", i, got[i])
			}
		}
	}

	t.Run("a wrapper's child outlives the leader, then a restart", func(t *testing.T) {
		// the leader exits; its child writes 1000 lines on the stop signal
		script := `(trap 'seq 1 1000; exit 0' TERM; touch "$ARMED"; while :; do sleep 0.05; done) & ` +
			`while [ ! -e "$ARMED" ]; do sleep 0.01; done; rm "$ARMED"; exit 1`
		armed := filepath.Join(t.TempDir(), "armed")
		c := startCaddy(t, testConfig(t, 0, 0, map[string]any{"name": "wrap", "command": []string{"sh", "-c", script},
			"restart": "always", "env": map[string]string{"ARMED": armed}}))
		c.waitLogCount(`"msg":"process started"`, 2, 10*time.Second)
		got, exitAt := lines(t, c, "supervise.wrap", "process exited unexpectedly")
		checkSeq(t, got, 1000)
		entries := entriesOf(t, c, "supervise.wrap")
		for i, e := range entries[:exitAt] {
			if e.Msg == "1000" {
				break
			}
			if i == exitAt-1 {
				t.Error("the exit was logged before the last line of the wrapper's child")
			}
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	})

}
