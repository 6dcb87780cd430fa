// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A request in flight when SIGTERM arrives completes against the still
// running app; the app is signalled only after Caddy stopped accepting, and
// the drain ends when its connection closes, not when net/http's Shutdown
// next polls for idle connections. (The request ends about 1.2 s into the
// Shutdown, between two of its polls: those come at about 0.5 s, 1.0-1.1 s
// and 1.5-1.6 s.)
func TestShutdownDrainsBeforeSignalling(t *testing.T) {
	s := newSink(t)
	httpPort, upPort := freePort(t), freePort(t)
	proc := upstreamProc(s, "web", upPort, "-probe", fmt.Sprintf("127.0.0.1:%d", httpPort))
	c := startCaddy(t, testConfig(t, httpPort, upPort, proc))
	up := s.next(t, 10*time.Second)

	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	sent := time.Now()
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=1250ms&report", httpPort))
		if err != nil {
			res <- result{err: err}
			return
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{code: resp.StatusCode, err: err}
	}()
	up.expect(t, "request", 5*time.Second)
	c.signal(syscall.SIGTERM)

	sig := up.expect(t, "signal", 10*time.Second)
	if sig.ProbeAccepted {
		t.Error("the app was signalled while Caddy's listener still accepted connections")
	}
	if d := sig.time().Sub(sent); d < 1250*time.Millisecond {
		t.Errorf("the app was signalled %s after the 1.25 s request was sent: before it completed", d)
	}
	if why := c.waitLog(`"msg":"drain over"`, time.Second); !strings.Contains(why, `"why":"the last connection closed"`) {
		t.Errorf("the drain did not end with the last connection: %s", why)
	}
	r := <-res
	if r.err != nil || r.code != 200 {
		t.Fatalf("in-flight request: status %d, error %v; want 200", r.code, r.err)
	}
	up.expect(t, "exit", 5*time.Second)
	up.dead(t, 5*time.Second)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}

// With a request that never finishes, the app is signalled drain_timeout
// after the exit began, whichever app Caddy stops first, and Caddy exits
// within drain_timeout + stop_timeout. Caddy stops its apps in random order;
// the runs log which order they saw.
func TestShutdownDrainTimeout(t *testing.T) {
	const drain, stop = time.Second, 2 * time.Second
	orders := map[string]int{}
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			s := newSink(t)
			httpPort, upPort := freePort(t), freePort(t)
			proc := upstreamProc(s, "web", upPort)
			proc["drain_timeout"], proc["stop_timeout"] = drain.String(), stop.String()
			c := startCaddy(t, testConfig(t, httpPort, upPort, proc))
			up := s.next(t, 10*time.Second)

			go func() {
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/hang", httpPort))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
			up.expect(t, "request", 5*time.Second)
			began := c.signal(syscall.SIGTERM)

			sig := up.expect(t, "signal", drain+5*time.Second)
			if d := sig.time().Sub(began); d < drain-20*time.Millisecond || d > drain+500*time.Millisecond {
				t.Errorf("app signalled %s after the exit began, want drain_timeout %s", d, drain)
			}
			c.wait(drain + stop + 5*time.Second)
			if d := c.exited.Sub(began); d > drain+stop+time.Second {
				t.Errorf("caddy exited %s after the signal, want at most drain_timeout + stop_timeout = %s plus a margin", d, drain+stop)
			}
			up.dead(t, time.Second)
			orders[stopOrder(c)]++
		})
	}
	t.Logf("app stop orders seen: %v", orders)
}

// stopOrder tells from the log whether Caddy stopped the http app or the
// supervise app first.
func stopOrder(c *caddyProc) string {
	log := c.logs.String()
	h, s := strings.Index(log, "servers shutting down"), strings.Index(log, "supervise app stopping")
	if h < 0 || s < 0 {
		return "unknown"
	}
	if h < s {
		return "http first"
	}
	return "supervise first"
}

// Without an http app there is nothing to drain: the signal goes at once.
func TestShutdownWithoutHTTPSignalsAtOnce(t *testing.T) {
	s := newSink(t)
	c := startCaddy(t, testConfig(t, 0, 0, upstreamProc(s, "web", freePort(t))))
	up := s.next(t, 10*time.Second)
	began := c.signal(syscall.SIGTERM)
	sig := up.expect(t, "signal", 5*time.Second)
	if d := sig.time().Sub(began); d > 500*time.Millisecond {
		t.Errorf("app signalled %s after the exit began, want at once", d)
	}
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
}

// A child that ignores the stop signal is killed at stop_timeout.
func TestShutdownKillsChildIgnoringSignal(t *testing.T) {
	const stop = time.Second
	s := newSink(t)
	proc := upstreamProc(s, "stubborn", freePort(t), "-ignore-term")
	proc["stop_timeout"] = stop.String()
	c := startCaddy(t, testConfig(t, 0, 0, proc))
	up := s.next(t, 10*time.Second)
	began := c.signal(syscall.SIGTERM)
	died := up.dead(t, stop+5*time.Second)
	if d := died.Sub(began); d < stop-20*time.Millisecond || d > stop+500*time.Millisecond {
		t.Errorf("child died %s after the exit began, want about stop_timeout %s", d, stop)
	}
	if code := c.wait(5 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d, want 0", code)
	}
	c.waitLog("killing its process group", time.Second)
}

// The stop signal reaches the whole process group: a shell wrapper's child
// gets it too, and one that ignores it is killed at stop_timeout.
func TestShutdownReachesWrappersChildren(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ignoreTerm  bool
		wantSignal  bool
		minLifetime time.Duration
	}{
		{"grandchild honours SIGTERM", false, true, 0},
		{"grandchild ignores SIGTERM", true, false, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(t)
			inner := upstreamProc(s, "x", freePort(t))["command"].([]string)
			if tc.ignoreTerm {
				inner = append(inner, "-ignore-term")
			}
			proc := map[string]any{
				"name":         "wrapped",
				"command":      []string{"sh", "-c", strings.Join(inner, " ") + " & wait"},
				"stop_timeout": "1s",
			}
			c := startCaddy(t, testConfig(t, 0, 0, proc))
			grandchild := s.next(t, 10*time.Second)
			began := c.signal(syscall.SIGTERM)
			if tc.wantSignal {
				grandchild.expect(t, "signal", 5*time.Second)
			}
			died := grandchild.dead(t, 5*time.Second)
			if d := died.Sub(began); d < tc.minLifetime-20*time.Millisecond {
				t.Errorf("grandchild died %s after the signal, want at least %s", d, tc.minLifetime)
			}
			if code := c.wait(5 * time.Second); code != 0 {
				t.Errorf("caddy exit code %d, want 0", code)
			}
			if syscall.Kill(grandchild.pid, 0) == nil && !isZombie(grandchild.pid) {
				t.Errorf("grandchild %d still running after Caddy exited", grandchild.pid)
			}
		})
	}
}

// When Caddy dies without a chance to stop anything, the kernel kills the
// child (parent-death signal).
func TestChildDiesWithCaddy(t *testing.T) {
	s := newSink(t)
	c := startCaddy(t, testConfig(t, 0, 0, upstreamProc(s, "web", freePort(t))))
	up := s.next(t, 10*time.Second)
	killed := c.signal(syscall.SIGKILL)
	if d := up.dead(t, time.Second).Sub(killed); d > time.Second {
		t.Errorf("child outlived SIGKILL of caddy by %s", d)
	}
	c.wait(5 * time.Second)
}

// The child gets default signal dispositions (Caddy ignores SIGPIPE), an
// empty signal mask, stdin from /dev/null, its own process group, and the
// configured environment on top of Caddy's.
func TestChildEnvironment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := `exec > "$OUT"; readlink /proc/$$/fd/0; ` +
		`echo "pgid $(cut -d' ' -f5 /proc/$$/stat) pid $$"; echo "greeting=$GREETING pwd=$(pwd)"; echo "caddy_env=$` + testRunEnv + `"; ` +
		`echo "manager: ${NOTIFY_SOCKET-unset} ${LISTEN_FDS-unset} ${LISTEN_PID-unset} ${WATCHDOG_USEC-unset} ${WATCHDOG_PID-unset}"; ` +
		`echo "unset_env: ${SUPERVISE_T_SECRET-unset} ${SUPERVISE_T_KEPT-unset}"; echo end`
	proc := map[string]any{
		"name":      "probe",
		"command":   []string{"sh", "-c", script + "; exec sleep 60"},
		"dir":       dir,
		"env":       map[string]string{"GREETING": "hello world", "OUT": out, "WATCHDOG_PID": "set-by-env"},
		"unset_env": []string{"SUPERVISE_T_SECRET"},
	}
	// The program's own signal mask and ignored signals, read by a program
	// the shim execs directly (a shell blocks signals while it waits), in a
	// Caddy whose parent blocked USR1, USR2, HUP and WINCH: the mask survives
	// exec, and a program that inherits it never gets a `stop_signal USR1`.
	mask := map[string]any{
		"name":    "mask",
		"command": []string{"grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"},
		"on_end":  "keep_running",
	}
	cfgPath := filepath.Join(dir, "caddy.json")
	writeJSON(t, cfgPath, testConfig(t, 0, 0, proc, mask))
	// Caddy's environment as a service manager would give it
	c := startCaddyFile(t, cfgPath, "", blockSignalsEnv+"=1", "NOTIFY_SOCKET="+filepath.Join(dir, "no-notify"),
		"LISTEN_FDS=1", "LISTEN_PID=1", "WATCHDOG_USEC=1000000", "WATCHDOG_PID=1",
		"SUPERVISE_T_SECRET=s3cret", "SUPERVISE_T_KEPT=kept")
	if blocked := sigMask(t, c.cmd.Process.Pid, "SigBlk"); blocked == 0 {
		t.Fatal("the test did not start Caddy with signals blocked")
	}
	c.waitLog("Caddy keeps running", 5*time.Second)
	for _, want := range []string{"SigIgn:\t0000000000000000", "SigBlk:\t0000000000000000"} {
		found := false
		for _, e := range entriesOf(t, c, "supervise.mask") {
			found = found || e.Msg == want
		}
		if !found {
			t.Errorf("the program's status has no line %q", want)
		}
	}
	// the script writes "end" last; wait for it via Caddy's log of the start,
	// then for the file's last line
	got := waitFileLine(t, out, "end", 5*time.Second)
	for _, want := range []string{
		"/dev/null",
		"greeting=hello world pwd=" + dir,
		"caddy_env=" + os.Getenv(testRunEnv),
		"manager: unset unset unset unset set-by-env",
		"unset_env: unset kept",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("child saw:\n%s\nwant a line with %q", got, want)
		}
	}
	var pgid, pid int
	for _, l := range strings.Split(got, "\n") {
		if strings.HasPrefix(l, "pgid ") {
			fmt.Sscanf(l, "pgid %d pid %d", &pgid, &pid)
		}
	}
	if pgid == 0 || pgid != pid {
		t.Errorf("child pgid %d, pid %d: want a process group of its own", pgid, pid)
	}
	if os.Getenv("GREETING") != "" {
		t.Error("the test's own environment was changed")
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// sigMask reads a signal set (SigBlk, SigIgn…) of a process from /proc.
func sigMask(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":\t"); ok {
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// waitFileLine waits until the file has a line equal to last: the child
// writes it, and nothing notifies us of a write to a file, so this polls.
func waitFileLine(t *testing.T, path, last string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		for _, l := range strings.Split(string(b), "\n") {
			if l == last {
				return string(b)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no line %q within %s; have %q", path, last, timeout, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// `caddy validate` provisions the config but starts nothing.
func TestValidateStartsNothing(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "started")
	cfg := testConfig(t, 0, 0, map[string]any{"name": "touch", "command": []string{"sh", "-c", "touch " + marker}})
	path := filepath.Join(dir, "caddy.json")
	writeJSON(t, path, cfg)
	out, err := exec.Command(caddyBin, "validate", "--config", path).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("caddy validate started the process (%s exists)", marker)
	}
}

// ---- under load ----

// Many clients hammer Caddy while it shuts down, proxying to an app that,
// like Puma, closes its listener the moment it is signalled and then takes
// a second to finish. No request may fail: every response is a 2xx, and
// the only errors allowed are refused connections once Caddy's listener
// closed. Each way to stop Caddy runs several times, so that both orders in
// which Caddy may stop its apps are exercised.
func TestNoFailedRequestsDuringShutdown(t *testing.T) {
	runs := 3
	if testing.Short() {
		runs = 1
	}
	orders := map[string]int{}
	for _, how := range []string{"SIGTERM", "SIGINT", "caddy stop"} {
		for i := range runs {
			t.Run(fmt.Sprintf("%s/%d", how, i), func(t *testing.T) {
				s := newSink(t)
				httpPort, upPort := freePort(t), freePort(t)
				proc := upstreamProc(s, "web", upPort, "-linger", "1s")
				cfg := testConfig(t, httpPort, upPort, proc)
				c := startCaddy(t, cfg)
				up := s.next(t, 10*time.Second)

				// requests of 50 ms: many are in flight when the stop begins
				l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/sleep?d=50ms", httpPort), 16)
				l.waitOK(t, 100, 10*time.Second)
				began := time.Now()
				l.churn.Store(true)
				switch how {
				case "SIGTERM":
					c.signal(syscall.SIGTERM)
				case "SIGINT":
					c.signal(syscall.SIGINT)
				case "caddy stop":
					admin := cfg["admin"].(map[string]any)["listen"].(string)
					if out, err := exec.Command(caddyBin, "stop", "--address", admin).CombinedOutput(); err != nil {
						t.Fatalf("caddy stop: %v\n%s", err, out)
					}
				}
				up.expect(t, "signal", 10*time.Second)
				if code := c.wait(15 * time.Second); code != 0 {
					t.Errorf("caddy exit code %d, want 0", code)
				}
				st := l.stop()
				t.Logf("%s: %d ok, %d refused after close, %d reset in the listen backlog; shutdown took %s",
					how, st.ok, st.refused, st.unaccepted, c.exited.Sub(began))
				if errs := c.logs.lines(`"http.log.error"`); len(errs) > 0 {
					t.Errorf("caddy logged %d failed requests; first: %s", len(errs), errs[0])
				}
				if st.ok == 0 || len(st.failures) > 0 {
					t.Errorf("%d requests failed during shutdown (of %d); first: %v", len(st.failures), st.ok+len(st.failures), st.failures[:min(5, len(st.failures))])
				}
				up.dead(t, time.Second)
				orders[stopOrder(c)]++
			})
		}
	}
	t.Logf("app stop orders seen: %v", orders)
}

type loadStats struct {
	ok, refused, unaccepted int
	failures                []string
}

// load runs clients that send requests in a loop until the server refuses
// connections (it has closed its listener) or stop is called.
type load struct {
	ok      atomic.Int64
	lastOK  atomic.Int64 // when the last successful response ended, in Unix nanoseconds
	slowest atomic.Int64 // the longest successful request, in nanoseconds
	okTick  chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	stats   loadStats
	// churn: the test began to stop or reload Caddy, whose listening socket
	// closes (with a reload, Caddy opens a new SO_REUSEPORT socket and closes
	// the old one). Connections the kernel had queued on it are reset.
	churn atomic.Bool
}

func (l *load) count(f func(*loadStats)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.stats)
}

func startLoad(url string, clients int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, okTick: make(chan struct{}, 1)}
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	for range clients {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				var reused, answered bool
				trace := &httptrace.ClientTrace{
					GotConn:              func(i httptrace.GotConnInfo) { reused = i.Reused },
					GotFirstResponseByte: func() { answered = true },
				}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "GET", url, nil)
				began := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				switch {
				case ctx.Err() != nil:
					return
				case err == nil && resp.StatusCode < 300:
					l.lastOK.Store(time.Now().UnixNano())
					for took := int64(time.Since(began)); ; {
						if old := l.slowest.Load(); took <= old || l.slowest.CompareAndSwap(old, took) {
							break
						}
					}
					l.ok.Add(1)
					select {
					case l.okTick <- struct{}{}:
					default:
					}
					continue
				case err != nil && errors.Is(err, syscall.ECONNREFUSED):
					l.count(func(st *loadStats) { st.refused++ })
					return // the listener is closed: this client is done
				case err != nil && l.churn.Load() && (isDialError(err) || !reused && !answered):
					// Once Caddy began to close its listening socket: a failed
					// dial, or a new connection reset before any answer (the
					// kernel completed the handshake into the socket's accept
					// queue, and closing the socket reset it). Caddy never
					// saw the request; the tests' check of Caddy's log makes
					// sure of that.
					l.count(func(st *loadStats) { st.unaccepted++ })
					continue
				}
				msg := fmt.Sprintf("%v (reused conn %v, answer begun %v)", err, reused, answered)
				if err == nil {
					msg = resp.Status
				}
				l.count(func(st *loadStats) { st.failures = append(st.failures, msg) })
			}
		})
	}
	return l
}

// waitOK waits until n requests succeeded.
func (l *load) waitOK(t testing.TB, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for l.ok.Load() < n {
		select {
		case <-l.okTick:
		case <-deadline:
			t.Fatalf("load: only %d requests succeeded within %s", l.ok.Load(), timeout)
		}
	}
}

func (l *load) stop() loadStats {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats
	st.ok = int(l.ok.Load())
	return st
}

// stopNoFailures stops the load and fails the test if a request failed or
// was refused.
func (l *load) stopNoFailures(t testing.TB) loadStats {
	t.Helper()
	st := l.stop()
	if len(st.failures) > 0 || st.refused > 0 {
		t.Errorf("%d failed (first %v), %d refused", len(st.failures), st.failures[:min(3, len(st.failures))], st.refused)
	}
	return st
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
