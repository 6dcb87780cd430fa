// Tests against real processes: Linux only.

//go:build linux

package supervise

// In-process tests of the rule "a process group ID is signalled only while
// it is ours": supervised processes started by this test process, and a
// stranger that takes the ID of a child that is gone, as the kernel may
// hand it to any new process.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// logWatch is a logger whose messages a test can wait for.
type logWatch struct {
	logs    *observer.ObservedLogs
	mu      sync.Mutex
	changed chan struct{}
}

func newLogWatch() (*zap.Logger, *logWatch) {
	core, logs := observer.New(zapcore.DebugLevel)
	w := &logWatch{logs: logs, changed: make(chan struct{})}
	hooked := zapcore.RegisterHooks(core, func(zapcore.Entry) error {
		w.mu.Lock()
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
		return nil
	})
	return zap.New(hooked), w
}

// wait waits until msg was logged n times.
func (w *logWatch) wait(t *testing.T, msg string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		changed := w.changed
		w.mu.Unlock()
		if w.logs.FilterMessage(msg).Len() >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			var all []string
			for _, e := range w.logs.All() {
				all = append(all, e.Message)
			}
			t.Fatalf("%q not logged %d times within %s; logged: %q", msg, n, timeout, all)
		}
	}
}

// testService is a process supervised by this test process: a service
// that a config (a bare App) holds, as Caddy's Start does.
type testService struct {
	t   testing.TB
	s   *service
	app *App
}

// testProc starts def's process in this test process, as a config's Start
// does; the test's end stops it.
func testProc(t *testing.T, def *Process) (*testService, *logWatch) {
	t.Helper()
	logger, w := newLogWatch()
	return testProcLogger(t, def, logger), w
}

func testProcLogger(t testing.TB, def *Process, logger *zap.Logger) *testService {
	t.Helper()
	if def.Name == "" {
		// a service of its own: processes of a test never meet
		def.Name = fmt.Sprintf("test-%d", testServices.Add(1))
	}
	if err := def.provision(0); err != nil {
		t.Fatal(err)
	}
	ts := &testService{t: t, app: &App{logger: logger, started: make(chan struct{})}}
	reply := make(chan error, 1)
	ts.s = ask(def.Name, acquireEv{app: ts.app, def: def, reply: reply})
	if err := <-reply; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.stop() })
	return ts
}

var testServices atomic.Int64

// stop lets go of the process, as a config's Stop does: it returns once
// the process is gone.
func (ts *testService) stop() {
	reply := make(chan struct{})
	if ts.s.post(releaseEv{app: ts.app, reply: reply}) {
		<-reply
	}
	<-ts.s.done
}

func (ts *testService) status() Status { return ts.s.fresh().status }

func (ts *testService) getPID() int { return ts.status().PID }

// waitEnded waits until the process ended for good.
func (ts *testService) waitEnded(timeout time.Duration) {
	ts.t.Helper()
	deadline := time.After(timeout)
	for {
		v := ts.s.view.Load()
		if v.status.State == stateExited && !v.pending {
			return
		}
		select {
		case <-v.changed:
		case <-deadline:
			ts.t.Fatalf("the process did not end within %s: %+v", timeout, v.status)
		}
	}
}

// restart asks for a restart, as the admin API does.
func (ts *testService) restart() (Status, error) {
	reply := make(chan restartAnswer, 1)
	ts.s.post(restartEv{reply: reply})
	a := <-reply
	if a.err != nil {
		return Status{}, a.err
	}
	return a.view.statusNow(), nil
}

// inLoop runs f in the service's loop, between two events.
func (ts *testService) inLoop(f func(s *service)) {
	done := make(chan struct{})
	ts.s.post(func(s *service) { f(s); close(done) })
	<-done
}

// reusePID starts a stranger, a process group of its own, with the given
// PID, which must be free: it sets the kernel's last PID just below it
// (root only) and retries until the PID is not taken by someone else first.
func reusePID(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("taking a given PID needs root (/proc/sys/kernel/ns_last_pid)")
	}
	for range 100 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("setting the next PID: %v", err)
		}
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			})
			return cmd
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			// another task (a thread of any process counts) took it first
			t.Skipf("PID %d was taken by another task before the stranger: nothing to test this time", pid)
		}
	}
	t.Fatalf("could not start a process with PID %d", pid)
	return nil
}

// unharmed checks that the stranger still runs, and that the keeper would
// not kill its group if Caddy died now.
func unharmed(t *testing.T, stranger *exec.Cmd) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", stranger.Process.Pid))
	if i := strings.LastIndexByte(string(stat), ')'); err != nil || i < 0 || stat[i+2] == 'Z' {
		t.Errorf("the stranger with the old child's PID was killed")
	}
	keeper.Lock()
	registered := keeper.groups[stranger.Process.Pid]
	keeper.Unlock()
	if registered {
		t.Errorf("the keeper still holds the old child's group %d", stranger.Process.Pid)
	}
}

// After the child ended for good (on_end keep_running), a stop (at a
// reload, at Caddy's exit) signals no one.
func TestStopAfterEndSignalsNoOne(t *testing.T) {
	p, _ := testProc(t, &Process{Command: []string{"true"}, Restart: RestartNever, OnEnd: OnEndKeepRunning, StopTimeout: Duration(200 * time.Millisecond)})
	p.waitEnded(5 * time.Second)
	stranger := reusePID(t, p.getPID())
	p.stop()
	unharmed(t, stranger)
}

// During a restart back-off, a stop signals no one.
func TestStopDuringBackoffSignalsNoOne(t *testing.T) {
	p, w := testProc(t, &Process{Command: []string{"sh", "-c", "exit 3"}, Restart: RestartAlways, StopTimeout: Duration(200 * time.Millisecond)})
	w.wait(t, "restarting process", 1, 5*time.Second)
	stranger := reusePID(t, p.getPID())
	p.stop()
	unharmed(t, stranger)
}

// A restart in place kills the old group at stop_timeout only if it is
// still there: not a stranger that took its ID while the new instance got
// ready.
func TestRestartInPlaceKillsNoStranger(t *testing.T) {
	port := freePort(t)
	p, w := testProc(t, &Process{
		Command:     []string{upstreamBin, "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-delay", "2s"},
		Ready:       &ReadyProbe{TCP: ptr(fmt.Sprintf("127.0.0.1:%d", port))},
		StopTimeout: Duration(500 * time.Millisecond),
	})
	w.wait(t, "process state", 2, 10*time.Second) // starting, then ready
	old := p.getPID()
	began := time.Now()
	restarted := make(chan error, 1)
	go func() {
		_, err := p.restart()
		restarted <- err
	}()
	w.wait(t, "process exited for the restart asked through the admin API", 1, 5*time.Second)
	w.wait(t, "process started", 2, 5*time.Second) // before the stranger: the new instance must not get the old PID
	stranger := reusePID(t, old)
	if time.Since(began) > 500*time.Millisecond {
		t.Skip("the stranger started after stop_timeout: the test proves nothing this time")
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	unharmed(t, stranger)
}

// A leader that exits before its children: the rest of its group gets the
// stop signal, and once it is gone the group leaves the keeper.
func TestLeftoversLeaveTheKeeper(t *testing.T) {
	p, w := testProc(t, &Process{Command: []string{"sh", "-c", "sleep 30 & exit 3"}, Restart: RestartNever, OnEnd: OnEndKeepRunning})
	p.waitEnded(10 * time.Second)
	if w.logs.FilterMessage("stopping the rest of the exited process's group").Len() != 1 {
		t.Error("the leftover sleep was not stopped")
	}
	if othersInGroup(p.getPID()) {
		t.Error("the leftover sleep still runs")
	}
	keeper.Lock()
	defer keeper.Unlock()
	if keeper.groups[p.getPID()] {
		t.Errorf("the keeper still holds the gone group %d", p.getPID())
	}
}

func ptr[T any](v T) *T { return &v }

func deref(p *int) any {
	if p == nil {
		return "none"
	}
	return *p
}

// slowCore is a log whose writes of output lines block until gate is
// closed: a slow log writer.
type slowCore struct {
	zapcore.Core
	gate chan struct{}
}

func (c slowCore) With(f []zapcore.Field) zapcore.Core { return slowCore{c.Core.With(f), c.gate} }

func (c slowCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slowCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	for _, f := range fields {
		if f.Key == "stream" {
			<-c.gate
		}
	}
	return c.Core.Write(e, fields)
}

// With a log writer that blocks for longer than a second, every line the
// process wrote is still logged, and before its exit.
func TestOutputSlowLogWriter(t *testing.T) {
	def := &Process{Command: []string{"seq", "1", "5000"}, Restart: RestartNever, OnEnd: OnEndKeepRunning}
	core, logs := observer.New(zapcore.DebugLevel)
	gate := make(chan struct{})
	p := testProcLogger(t, def, zap.New(slowCore{core, gate}))
	time.Sleep(2 * time.Second) // the slow writer: the first line's write takes this long
	close(gate)
	p.waitEnded(10 * time.Second)
	var lines []string
	exited := false
	for _, e := range logs.All() {
		switch {
		case e.ContextMap()["stream"] == "stdout":
			if exited {
				t.Fatalf("line %q logged after the exit", e.Message)
			}
			lines = append(lines, e.Message)
		case e.Message == "process exited unexpectedly":
			exited = true
		}
	}
	if len(lines) != 5000 || lines[4999] != "5000" || !exited {
		t.Errorf("%d lines logged (want 5000), exit logged %v", len(lines), exited)
	}
}

// A stop signal sent while the shim is still starting (its Go runtime
// catches USR1, and would swallow it) reaches the program once it runs: the
// process dies of USR1, not of the SIGKILL at stop_timeout. The test sends
// the stop while the shim's runtime catches USR1 (SigCgt in /proc) and it
// has not exec'd the program yet.
func TestStopSignalBeforeExecIsHeld(t *testing.T) {
	hits := 0
	for attempt := 0; attempt < 50 && hits < 3; attempt++ {
		p, _ := testProc(t, &Process{Command: []string{"sleep", "60"}, StopSignal: "USR1", StopTimeout: Duration(3 * time.Second)})
		pid := p.getPID()
		inShim := false
		for range 10000 {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil || !strings.HasPrefix(string(cmdline), "caddy-supervise-exec\x00") {
				break // exec'd already
			}
			if catches(string(status), syscall.SIGUSR1) {
				inShim = true
				break
			}
		}
		p.stop()
		if !inShim {
			continue
		}
		hits++
		if st := p.status(); st.LastExit == nil || *st.LastExit != 128+int(syscall.SIGUSR1) {
			t.Fatalf("exit status %v, want %d (killed by SIGUSR1)", deref(st.LastExit), 128+int(syscall.SIGUSR1))
		}
	}
	if hits == 0 {
		t.Skip("never caught the shim before its exec")
	}
	t.Logf("caught the shim before its exec %d times", hits)
}

// catches reports whether a /proc/PID/status says the process catches sig.
func catches(status string, sig syscall.Signal) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "SigCgt:\t"); ok {
			n, _ := strconv.ParseUint(v, 16, 64)
			return n&(1<<(sig-1)) != 0
		}
	}
	return false
}

// blackHole returns a loopback address whose connections hang: a listening
// socket whose accept queue is full, so that the kernel drops new SYNs.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill the accept queue")
	return ""
}

// A readiness probe against an address that never answers (its dial hangs)
// still fails at ready_timeout.
func TestTCPProbeBlackHole(t *testing.T) {
	addr := blackHole(t)
	_, w := testProc(t, &Process{Command: []string{"sleep", "60"}, Ready: &ReadyProbe{TCP: &addr},
		ReadyTimeout: Duration(time.Second), StopTimeout: Duration(time.Second), Restart: RestartNever, OnEnd: OnEndKeepRunning})
	w.wait(t, "process not ready within ready_timeout; stopping it as failed", 1, 10*time.Second)
}

// `port auto` picks a free port that no outbound connection can take:
// outside the kernel's ephemeral range.
func TestPortAutoOutsideEphemeralRange(t *testing.T) {
	lo, hi, ok := ephemeralPorts()
	if !ok {
		t.Fatal("cannot read net.ipv4.ip_local_port_range")
	}
	for range 200 {
		port, err := freeLoopbackPort()
		if err != nil {
			t.Fatal(err)
		}
		if port < 1024 || (port >= lo && port <= hi) || port > 65535 {
			t.Fatalf("port %d: inside the ephemeral range %d-%d or privileged", port, lo, hi)
		}
	}
}

// `ready http /path` probes that path on the process's own port: /hang
// never answers, /sleep does.
func TestReadyPathOnOwnPort(t *testing.T) {
	for _, tc := range []struct {
		path, want string
	}{
		{"/sleep?d=1ms", `"process state"`},
		{"/hang", "process not ready within ready_timeout; stopping it as failed"},
	} {
		p, w := testProc(t, &Process{Command: []string{upstreamBin}, Port: "auto", Ready: &ReadyProbe{HTTP: ptr(tc.path)},
			ReadyTimeout: Duration(time.Second), Restart: RestartNever, OnEnd: OnEndKeepRunning})
		if tc.path == "/hang" {
			w.wait(t, tc.want, 1, 10*time.Second)
			continue
		}
		w.wait(t, "process state", 2, 10*time.Second) // starting, ready
		if st := p.status(); st.State != stateReady {
			t.Errorf("%s: state %s, want ready", tc.path, st.State)
		}
	}
}

// A probe that succeeds after the stop began does not make the process
// ready again.
func TestReadyNeverAfterStop(t *testing.T) {
	p, w := testProc(t, &Process{Command: []string{"sleep", "60"}, Ready: &ReadyProbe{TCP: ptr("127.0.0.1:1")}, Restart: RestartNever, OnEnd: OnEndKeepRunning})
	w.wait(t, "process state", 1, 5*time.Second) // starting
	var after state
	p.inLoop(func(s *service) {
		in := s.slots[0]
		s.stopInstance(in, "test")
		s.handle(instanceReady{in}) // what a probe that succeeds now does
		after = in.state
	})
	if after != stateStopping {
		t.Errorf("state %s after a late probe success, want stopping", after)
	}
}

// The probe's target: an address or URL as written, also with port; a path
// alone or nothing: the process's own port.
func TestProbeTarget(t *testing.T) {
	for _, tc := range []struct {
		probe ReadyProbe
		want  string
	}{
		{ReadyProbe{TCP: ptr("")}, "127.0.0.1:4000"},
		{ReadyProbe{TCP: ptr("10.0.0.1:5000")}, "10.0.0.1:5000"},
		{ReadyProbe{HTTP: ptr("")}, "http://127.0.0.1:4000/"},
		{ReadyProbe{HTTP: ptr("/up")}, "http://127.0.0.1:4000/up"},
		{ReadyProbe{HTTP: ptr("http://localhost:5000/health")}, "http://localhost:5000/health"},
	} {
		p := &Process{Ready: &tc.probe}
		if got := p.probeTarget(4000); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.probe, got, tc.want)
		}
	}
}
