// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// Test harness: a real Caddy binary (this repository's cmd/caddy) run as a
// subprocess, the example upstream as the supervised app, and an event sink
// through which the upstream tells the test what it sees. Nothing here waits
// by sleeping: every wait is for an event (a log line, an event from the
// upstream, EOF when a process dies, a process exit) with a deadline.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-supervise/supervise/internal/shim"
	"golang.org/x/sys/unix"
)

var (
	caddyBin    string // built from ./cmd/caddy
	upstreamBin string // built from ./examples/upstream
	raceEnabled bool   // set by race_test.go
)

// testRunEnv marks every process this test run starts (they inherit it), so
// that TestMain can find any left behind.
const testRunEnv = "SUPERVISE_TEST_RUN"

func TestMain(m *testing.M) {
	if os.Getenv(blockSignalsEnv) == "1" {
		blockSignalsAndExec()
	}
	os.Exit(runTests(m))
}

// blockSignalsEnv in the environment of startCaddyFile starts Caddy through
// this test binary, which blocks SIGUSR1, SIGUSR2, SIGHUP and SIGWINCH and
// execs Caddy: as a parent that blocked them would (the mask survives exec).
const blockSignalsEnv = "SUPERVISE_TEST_BLOCK_SIGNALS"

func blockSignalsAndExec() {
	runtime.LockOSThread() // the mask is the thread's; exec keeps it
	var set unix.Sigset_t
	for _, sig := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP, syscall.SIGWINCH} {
		set.Val[(sig-1)/64] |= 1 << ((sig - 1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, nil); err != nil {
		fmt.Fprintln(os.Stderr, "blocking signals:", err)
		os.Exit(2)
	}
	err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	fmt.Fprintln(os.Stderr, "exec:", err)
	os.Exit(2)
}

func runTests(m *testing.M) int {
	flag.Parse()
	// every request of the default client (the admin API, a probe through
	// Caddy) on a connection of its own: a reload, a failed one too, may
	// replace Caddy's admin server, which resets the connections it kept
	// alive, and a reused one would fail a request nothing else failed
	http.DefaultTransport.(*http.Transport).DisableKeepAlives = true
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run() // fuzzing needs no binaries
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "supervise-test-")
	if err == nil {
		err = os.Chmod(dir, 0o755) // other users run the binaries too (TestRunAsUser)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer os.RemoveAll(dir)

	caddyBin = filepath.Join(dir, "caddy")
	upstreamBin = filepath.Join(dir, "upstream")
	args := []string{"build", "-o", caddyBin}
	if raceEnabled {
		args = append(args, "-race") // reuses the packages the test binary was built from
	}
	for _, b := range []struct{ args []string }{
		{append(args, "./cmd/caddy")},
		{[]string{"build", "-o", upstreamBin, "./examples/upstream"}},
	} {
		cmd := exec.Command("go", b.args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n", strings.Join(b.args, " "), err)
			return 2
		}
	}

	runID := strconv.Itoa(os.Getpid())
	os.Setenv(testRunEnv, runID)
	code := m.Run()
	left := markedProcesses(runID)
	// A keeper exits a moment after its Caddy: give stragglers a moment.
	for deadline := time.Now().Add(2 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = markedProcesses(runID) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests:\n%s\n", strings.Join(left, "\n"))
		for _, l := range left {
			pid, _ := strconv.Atoi(strings.Fields(l)[0])
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		code = 1
	}
	return code
}

// markedProcesses lists live (non-zombie) processes other than this one that
// carry this run's marker in their environment.
func markedProcesses(runID string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(env, []byte(testRunEnv+"="+runID+"\x00")) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.HasPrefix(cmdline, []byte(shim.KeeperArg0+"\x00")) && ppid(stat) == os.Getpid() {
			continue // the keeper of this test process's own in-process children (benchmarks)
		}
		out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
	}
	return out
}

// ppid reads the parent PID from /proc/PID/stat.
func ppid(stat []byte) int {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// freePort returns a loopback TCP port that was free a moment ago.
//
// It picks as `port auto` does, outside the kernel's ephemeral range: a
// port from that range can be taken as the local port of an outbound
// connection (an upstream's connection to the event sink, say) before the
// test's server binds it. A port is handed out once per test run.
func freePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		port, err := freeLoopbackPort()
		if err != nil {
			t.Fatal(err)
		}
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: make(map[int]bool)}

// ---- events from supervised upstreams ----

type event struct {
	Ev            string `json:"ev"`
	PID           int    `json:"pid"`
	PPID          int    `json:"ppid"`
	Sig           string `json:"sig"`
	T             int64  `json:"t"`
	ProbeAccepted bool   `json:"probe_accepted"`
	Path          string `json:"path"`
	Addr          string `json:"addr"`
	Activated     bool   `json:"activated"`
}

func (e event) time() time.Time { return time.Unix(0, e.T) }

// sink accepts the event connections of upstreams started with -events.
type sink struct {
	ln    net.Listener
	peers chan *peer
}

// peer is one upstream process's event stream; EOF means it died.
type peer struct {
	events    chan event
	eof       chan struct{}
	pid       int
	ppid      int
	addr      string
	readyAt   time.Time
	activated bool // it serves on the socket it was handed
}

func newSink(t testing.TB) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ln: ln, peers: make(chan *peer, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p := &peer{events: make(chan event, 64), eof: make(chan struct{})}
			go func() {
				defer close(p.eof)
				defer c.Close()
				dec := json.NewDecoder(c)
				for {
					var e event
					if err := dec.Decode(&e); err != nil {
						return
					}
					p.events <- e
				}
			}()
			s.peers <- p
		}
	}()
	return s
}

func (s *sink) addr() string { return s.ln.Addr().String() }

// next returns the next upstream to connect, once it reported "ready".
func (s *sink) next(t testing.TB, timeout time.Duration) *peer {
	t.Helper()
	select {
	case p := <-s.peers:
		e := p.next(t, timeout)
		if e.Ev != "ready" {
			t.Fatalf("first event of an upstream: %+v, want ready", e)
		}
		p.pid, p.ppid, p.addr, p.readyAt, p.activated = e.PID, e.PPID, e.Addr, e.time(), e.Activated
		return p
	case <-time.After(timeout):
		t.Fatalf("no upstream connected within %s", timeout)
	}
	return nil
}

// ppidOrSelf is the process Caddy started: the upstream's parent when a
// shell wrapper started it, else the upstream itself.
func (p *peer) ppidOrSelf() int {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.ppid)); err == nil && bytes.HasPrefix(b, []byte("sh\x00")) {
		return p.ppid
	}
	return p.pid
}

func (p *peer) next(t testing.TB, timeout time.Duration) event {
	t.Helper()
	select {
	case e := <-p.events:
		return e
	case <-p.eof:
		select {
		case e := <-p.events:
			return e
		default:
		}
		t.Fatalf("upstream %d died while an event was awaited", p.pid)
	case <-time.After(timeout):
		t.Fatalf("upstream %d: no event within %s", p.pid, timeout)
	}
	return event{}
}

// expect returns the next event, which must be of kind ev.
func (p *peer) expect(t testing.TB, ev string, timeout time.Duration) event {
	t.Helper()
	e := p.next(t, timeout)
	if e.Ev != ev {
		t.Fatalf("upstream %d: got event %+v, want %q", p.pid, e, ev)
	}
	return e
}

// dead waits until the upstream's process is gone (the kernel closed its
// event connection) and returns when that was seen.
func (p *peer) dead(t testing.TB, timeout time.Duration) time.Time {
	t.Helper()
	select {
	case <-p.eof:
		return time.Now()
	case <-time.After(timeout):
		t.Fatalf("upstream %d still alive after %s", p.pid, timeout)
	}
	return time.Time{}
}

// ---- a Caddy binary in a subprocess ----

type caddyProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	admin  string
	logs   *logBuf // Caddy's stderr: its log
	stdout *logBuf // Caddy's stdout: only what children with `output inherit` write
	config string  // the config file it was started with
	done   chan struct{}
	exited time.Time
}

// startCaddy runs `caddy run` with the JSON config cfg and returns once
// Caddy serves it.
func startCaddy(t testing.TB, cfg any) *caddyProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "caddy.json")
	writeJSON(t, path, cfg)
	return startCaddyFile(t, path, "")
}

// startCaddyFile runs `caddy run` with a config file and extra environment
// variables.

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	var buf bytes.Buffer
	writeJSONTo(t, &buf, v)
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeJSONTo(t testing.TB, w io.Writer, v any) {
	t.Helper()
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Fatal(err)
	}
}

func startCaddyFile(t testing.TB, path, adapter string, env ...string) *caddyProc {
	t.Helper()
	args := []string{caddyBin, "run", "--config", path}
	if adapter != "" {
		args = append(args, "--adapter", adapter)
	}
	if slices.Contains(env, blockSignalsEnv+"=1") {
		args = append([]string{os.Args[0]}, args...) // see blockSignalsAndExec
	}
	c := runCaddy(t, "", args, env...)
	c.config = path
	c.waitLog("serving initial configuration", 20*time.Second)
	return c
}

// runCaddy runs a Caddy command line (args[0] is the binary) in dir ("":
// the test's), with extra environment variables; Caddy's stderr is its
// log. The test's cleanup kills it if it still runs.
func runCaddy(t testing.TB, dir string, args []string, env ...string) *caddyProc {
	t.Helper()
	c := &caddyProc{t: t, cmd: exec.Command(args[0], args[1:]...), logs: newLogBuf(), stdout: newLogBuf(), done: make(chan struct{})}
	c.cmd.Dir = dir
	// GORACE: a race-enabled binary otherwise sleeps a second at exit
	c.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir())
	c.cmd.Env = append(c.cmd.Env, env...)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stdout = c.stdout
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = io.Copy(c.logs, stderr)
		_ = c.cmd.Wait()
		c.exited = time.Now()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.killNow()
		if t.Failed() {
			t.Logf("caddy log:\n%s", c.logs.String())
			if out := c.stdout.String(); out != "" {
				t.Logf("caddy stdout:\n%s", out)
			}
		}
	})
	return c
}

// killNow kills Caddy if it still runs, and waits until it is gone.
func (c *caddyProc) killNow() {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *caddyProc) signal(sig syscall.Signal) time.Time {
	now := time.Now()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
	return now
}

// wait waits for Caddy to exit and returns its exit code.
func (c *caddyProc) wait(timeout time.Duration) int {
	c.t.Helper()
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		c.t.Fatalf("caddy did not exit within %s", timeout)
	}
	return 0
}

// waitLog waits for a log line containing s and returns it.
func (c *caddyProc) waitLog(s string, timeout time.Duration) string {
	c.t.Helper()
	line, ok := c.logs.waitFor(s, timeout, c.done)
	if !ok {
		c.t.Fatalf("caddy did not log %q within %s", s, timeout)
	}
	return line
}

// logBuf collects lines and lets tests wait for one.
type logBuf struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

func (l *logBuf) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(b)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(b), nil
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines returns the complete lines containing s.
func (l *logBuf) lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}

func (l *logBuf) waitFor(s string, timeout time.Duration, done <-chan struct{}) (string, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		changed := l.changed
		l.mu.Unlock()
		if found := l.lines(s); len(found) > 0 {
			return found[0], true
		}
		select {
		case <-changed:
		case <-done:
			if found := l.lines(s); len(found) > 0 {
				return found[0], true
			}
			return "", false
		case <-deadline.C:
			return "", false
		}
	}
}

// ---- configs ----

// testConfig is a Caddy JSON config: an admin endpoint on its own port, an
// HTTP server on httpPort proxying to upstreamPort (none if httpPort is 0),
// and the given supervised processes.
func testConfig(t testing.TB, httpPort, upstreamPort int, procs ...map[string]any) map[string]any {
	t.Helper()
	apps := map[string]any{"supervise": map[string]any{"processes": procs}}
	if httpPort != 0 {
		apps["http"] = map[string]any{"servers": map[string]any{"srv": map[string]any{
			"listen": []string{fmt.Sprintf("127.0.0.1:%d", httpPort)},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler":   "reverse_proxy",
				"upstreams": []any{map[string]any{"dial": fmt.Sprintf("127.0.0.1:%d", upstreamPort)}},
			}}}},
		}}}
	}
	return map[string]any{
		"admin":   map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", freePort(t))},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "DEBUG"}}},
		"apps":    apps,
	}
}

// upstreamProc is a supervised process definition running the example
// upstream on port, reporting to s.
func upstreamProc(s *sink, name string, port int, extra ...string) map[string]any {
	cmd := append([]string{upstreamBin, "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-events", s.addr()}, extra...)
	return map[string]any{"name": name, "command": cmd}
}
