package supervise

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// An instance is one run of a process's program: one process group, from
// its start until the group is gone. Its service decides what happens to
// it (see supervisor.go); the instance carries the decisions out and
// reports what its process does.
//
// One goroutine starts the child, waits for it and reaps it, on a locked OS
// thread that lives as long as the child: the parent-death signal is tied
// to the thread that forked. Every signal to the group goes through
// signal, which sends nothing once the group is no longer ours.
type instance struct {
	svc      *service
	def      *Process                // what it was started from
	settings atomic.Pointer[Process] // its stop signal, timeouts: def, or a newer definition of the same key
	key      string                  // spawnKey(def)
	port     int                     // its port (`port`), 0 if none
	slot     int                     // its place in the service's serving set

	// owned by the service's loop
	state           state
	cond            conditions // besides its state: see conditions
	startedAt       time.Time
	stopBegan       time.Time     // when its stop signal went out, if it did
	retireReason    string        // why it retires, for its stop
	retireGen       int           // its retirements, to tell a stale bound from the current one
	retireTimer     int           // the retirement whose bounds run
	retiredAt       time.Time     // when it left service
	drainDeadline   time.Time     // when its ordinary requests have had drain_timeout
	streamsClosed   string        // why its streams were ended, if they were
	streamsClosedAt time.Time     // and when
	streamsSpread   time.Duration // over how long
	closedStreams   int           // how many
	notReady        string        // why it failed its readiness probe ("" if it did not)
	unwatch         func()        // ends its watch (watch.go)
	watchGen        int           // its watches, to tell a stale report from the current one
	recycleFails    int           // failed replacements of its recycle, for the retry's back-off
	recycleRetryAt  time.Time     // no retry before (a failed health check does not wait)
	recycled        bool          // its recycle was logged and counted
	restarts        int           // the service's restarts when it started, for its log
	canary          bool          // a new release's instance that takes a canary's share (see canary.go)
	servedCanary    bool          // it took one
	rejected        bool          // it retires because its release did not take over: nothing puts it back

	// the dynamic upstream's requests (see admit)
	accepting atomic.Bool               // it serves: requests may be sent to it
	inflight  atomic.Int64              // requests sent to it that have not ended (streams included)
	streams   atomic.Int64              // those of them that are open streams (see streams.go)
	wsStreams atomic.Int64              // those of them that are WebSockets
	served    atomic.Int64              // requests sent to it, ever (max_lifetime_requests)
	countDue  atomic.Bool               // it reached max_lifetime_requests and said so
	outcomes  [numOutcomes]atomic.Int64 // how its requests ended (supervise_streams sees them; see stream.outcome)
	awaited   atomic.Int64              // requests sent to it that began to wait for its response's status (supervise_streams)
	answered  atomic.Int64              // those of them that got one, or ended without one (see awaitStatus)

	streamsEnding bool // its streams end as they open; guarded by openStreams

	exited chan struct{} // closed once the group is gone and the leader reaped
	result exitResult    // set before exited is closed
	tail   outputTail    // its last output lines, for errors

	mu       sync.Mutex
	pid      int              // its PID, which is also its process group's ID
	pinned   bool             // the leader is not reaped yet: pid is ours to signal
	execed   bool             // the shim has exec'd the program (see awaitExec)
	held     []syscall.Signal // signals sent before that
	stopping bool             // its stop signal went out: its exit is expected
	deadline time.Time        // then SIGKILL
	killer   *time.Timer
}

// exitResult is how an instance's leader ended.
type exitResult struct {
	code  int           // its exit status, as a shell reports it
	how   string        // "exit code 3", "killed by SIGKILL"
	upFor time.Duration // from the start to the leader's exit
}

// The states of an instance. A move that the table below does not allow
// is a bug: setState refuses it and logs an error.
type state string

const (
	stateNone     state = ""
	stateStarting state = "starting" // started; its readiness probe has not passed yet
	stateReady    state = "ready"    // ready: it serves (or is about to, a new instance of a transition)
	stateRetiring state = "retiring" // out of service: it finishes the requests sent to it, then stops
	stateStopping state = "stopping" // its stop signal went out
	stateExited   state = "exited"   // its process group is gone
)

// moves are the allowed state changes. A retiring instance that serves
// again is one a failed reload puts back.
var moves = map[state][]state{
	stateNone:     {stateStarting, stateReady},
	stateStarting: {stateReady, stateStopping, stateExited},
	stateReady:    {stateRetiring, stateStopping, stateExited},
	stateRetiring: {stateReady, stateStopping, stateExited},
	stateStopping: {stateExited},
}

// conditions are what an instance may be, besides its state, that other
// rules read. They are changed by the rules of retire.go and watch.go, and
// their valid combinations with the state are checked in one place
// (conditionsError), after every event:
//
//   - unhealthy: it failed its health check. It is out of the upstream,
//     replaced at once (its replacement waits for nothing), and killed
//     (never drained) once replaced. Only while ready or stopping.
//   - recycle: why it is recycled (a limit, or its health): its
//     replacement runs, or waits for another job. Not while starting.
//   - keptFor: a retiring instance stays until this config is gone (a
//     failed reload may put it back). Only while retiring.
//   - keepStreams: it retires beside its replacement, and its streams may
//     go on (see retire.go). Only while retiring.
type conditions struct {
	unhealthy   string
	recycle     string
	keptFor     *App
	keepStreams bool
}

// conditionsError says what is wrong with the instance's conditions, or
// "" if nothing.
func (in *instance) conditionsError() string {
	c := in.cond
	switch {
	case c.unhealthy != "" && in.state != stateReady && in.state != stateStopping && in.state != stateExited:
		return "unhealthy while " + string(in.state)
	case c.recycle != "" && (in.state == stateStarting || in.state == stateNone):
		return "recycled while " + string(in.state)
	case c.keptFor != nil && in.state != stateRetiring:
		return "kept for a config while " + string(in.state)
	case c.keepStreams && in.state != stateRetiring:
		return "keeps its streams while " + string(in.state)
	}
	return ""
}

// setState moves the instance to state to and logs the change. Called by
// the service's loop only. What only a retiring instance may be ends with
// its retirement.
func (in *instance) setState(to state) {
	if in.state == to {
		return
	}
	if !slices.Contains(moves[in.state], to) {
		in.svc.log().Error("invalid instance state change (a bug)", zap.String("from", string(in.state)),
			zap.String("to", string(to)), zap.Int("pid", in.getPID()))
		return
	}
	from := in.state
	in.state = to
	if to != stateRetiring {
		in.cond.keptFor, in.cond.keepStreams = nil, false
	}
	if to == stateReady {
		in.tail.ready()
	}
	in.watch() // while it is ready (watch.go)
	in.svc.log().Info("process state", zap.String("from", string(from)), zap.String("to", string(to)), zap.Int("pid", in.getPID()))
}

// admit counts a request the dynamic upstream sends to the instance, until
// the request ends; it reports false, and counts nothing, if the instance
// left service meanwhile. With the service's side (retire: out of service
// first, then a look at the count), either the request sees that the
// instance left, or the service sees the request: no request is sent to an
// instance that got its stop signal.
func (in *instance) admit(r *http.Request) bool {
	if !in.enter() {
		return false
	}
	stop := context.AfterFunc(r.Context(), in.requestEnded)
	if st := streamOf(r); st != nil {
		// a retry: the request left the instance it was sent to before,
		// which failed it (reverse_proxy retries an attempt that got no
		// answer, or an answer its lb_retry_match rejects)
		if st.innerProxy(r) {
			st.statusCame() // (the request's own attempt has its response: handle_response handles it)
			return true     // a reverse_proxy inside handle_response: the request's own attempt is not over
		}
		if st.inst != nil {
			st.inst.outcomes[st.attemptOutcome(true)].Add(1)
		}
		st.statusCame() // (of the attempt before, if it waited)
		if st.uncount != nil && st.uncount() {
			st.inst.requestEnded()
		}
		st.inst, st.uncount = in, stop // if it becomes a stream, it is this instance's
		if safeMethod(r.Method) {
			st.awaitStatus() // (not an upload, which the app may take long to read)
		}
	}
	return true
}

// responseCounts is how the instance's requests ended, by outcome name
// (nil if none was counted: no supervise_streams in front).
func (in *instance) responseCounts() map[string]int64 {
	var counts map[string]int64
	for o := range numOutcomes {
		if n := in.outcomes[o].Load(); n > 0 && outcomeNames[o] != "" {
			if counts == nil {
				counts = make(map[string]int64, numOutcomes)
			}
			counts[outcomeNames[o]] = n
		}
	}
	return counts
}

// enter counts a request sent to the instance, unless it left service: the
// caller then sends it elsewhere. The request is counted until
// requestEnded.
func (in *instance) enter() bool {
	in.inflight.Add(1)
	if !in.accepting.Load() {
		in.requestEnded()
		return false
	}
	if n, limit := in.served.Add(1), in.settings.Load().MaxLifetimeRequests; limit > 0 && n >= limit && in.countDue.CompareAndSwap(false, true) {
		in.svc.w.postLater(in.svc, instanceRecycle{in: in, reason: "max_lifetime_requests", gen: -1})
	}
	return true
}

// requestEnded uncounts a request. Of an instance that left service, it
// tells the service what its rules wait for: its last request (it may
// stop: stopIfRetired), and its last request that is not a stream (a roll
// waits for old instances that serve more than their streams: oldsLeft).
func (in *instance) requestEnded() {
	if n := in.inflight.Add(-1); !in.accepting.Load() && (n == 0 || n == in.streams.Load()) {
		in.svc.post(instanceIdle{in})
	}
}

// serves reports whether requests may be sent to the instance: it is
// ready, in the serving set (or takes a canary's share), and did not fail its health check. Called by
// the service's loop only.
func (in *instance) serves() bool {
	return in.state == stateReady && in.cond.unhealthy == "" && (in.canary || slices.Contains(in.svc.slots, in))
}

// live reports whether the instance's group may still exist.
func (in *instance) live() bool { return in.state != stateExited }

func (in *instance) getPID() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.pid
}

// place is where the instance runs: its port and its index.
func (in *instance) place() place { return place{in.port, in.slot} }

// address is where the instance serves, for the dynamic upstream.
func (in *instance) address() string { return in.def.address(in.port) }

// start starts the instance's process and returns once it runs (or failed
// to start). From then on its goroutine reports to the service: ready or
// not ready (the probe), and exited.
func (in *instance) start() error {
	in.exited = make(chan struct{})
	started := make(chan error, 1)
	go in.run(started)
	err := <-started
	if err == nil {
		in.startedAt = time.Now()
	}
	return err
}

// run starts the child, waits for its leader, finishes its group, reaps
// it, and reports its exit. It runs on one locked OS thread, which Go ends
// when it returns (the goroutine never unlocks it).
func (in *instance) run(started chan<- error) {
	runtime.LockOSThread()
	def, logger := in.def, in.svc.log()
	cmd, execNotice, err := in.command(def, in.place())
	var out *output
	if err == nil {
		out, err = in.attachOutput(cmd, def)
	}
	if err == nil {
		err = cmd.Start()
	}
	if err == nil {
		in.mu.Lock()
		in.pid, in.pinned, in.execed = cmd.Process.Pid, true, execNotice == nil
		in.mu.Unlock()
		keepGroup(cmd.Process.Pid, logger)
	}
	// the child has its copies of the pipes and descriptors, or nothing
	// will start: close the parent's
	closeParentEnds(cmd, out)
	if err != nil {
		if execNotice != nil {
			execNotice.Close()
		}
		close(in.exited)
		started <- fmt.Errorf("starting process %q (%s): %v", def.Name, def.path, startError(def, err))
		return
	}
	pid := cmd.Process.Pid
	if execNotice != nil {
		go in.awaitExec(pid, execNotice)
	}
	logger.Info("process started", zap.Int("pid", pid), zap.Strings("command", def.argsFor(in.place())), zap.Int("restarts", in.restarts))
	probeCtx, probeDone := context.WithCancel(context.Background())
	if def.Ready != nil {
		go in.probe(probeCtx, def)
	}
	started <- nil

	began := time.Now()
	_ = waitLeader(cmd) // the leader exited; unreaped, it keeps its group's ID ours
	probeDone()
	upFor := time.Since(began)
	in.endGroup(pid, out)
	_ = reap(cmd) // the only Wait; the status is in cmd.ProcessState
	code, how := exitStatus(cmd.ProcessState)
	in.result = exitResult{code: code, how: how, upFor: upFor}
	close(in.exited)
	in.svc.post(instanceExited{in})
}

// closeParentEnds closes the parent's copies of what a child was given:
// the output pipes' write ends (so that the streams reach EOF when the
// child and everything that inherited them exit) and the extra
// descriptors.
func closeParentEnds(cmd *exec.Cmd, out *output) {
	if out != nil {
		out.started()
	}
	if cmd != nil {
		for _, f := range cmd.ExtraFiles {
			f.Close()
		}
	}
}

// endGroup finishes the process group pid once its leader has exited: what
// is left of the group gets the stop signal (unless a stop already sent
// it) and SIGKILL at the deadline; then the output is logged to its last
// line, bounded by stop_timeout once the group is gone (a process that
// left the group may hold the pipes); then the group is unregistered from
// the keeper and stops being ours to signal. The caller reaps the leader
// right after: only then can its ID be reused.
func (in *instance) endGroup(pid int, out *output) {
	def, logger := in.settings.Load(), in.svc.log()
	timeout := time.Duration(def.StopTimeout)
	in.mu.Lock()
	signalled, deadline := in.stopping, in.deadline
	in.mu.Unlock()
	if othersInGroup(pid) {
		if !signalled {
			// what is left is orphaned, and may hold the process's port
			logger.Warn("stopping the rest of the exited process's group", zap.Int("pgid", pid))
			_ = in.signal(def.signal)
			deadline = time.Now().Add(timeout)
		}
		if !waitGroupGone(pid, deadline) {
			logger.Warn("process group outlived stop_timeout; killing it", zap.Int("pgid", pid))
			_ = in.signal(syscall.SIGKILL)
			waitGroupGone(pid, time.Now().Add(time.Second))
		}
	}
	if out != nil && !out.wait(timeout) {
		logger.Warn("output still open stop_timeout after the process group ended (a process that left the group holds it); not waiting for the rest",
			zap.Int("pgid", pid), zap.Duration("stop_timeout", timeout))
	}
	releaseGroup(pid)
	in.mu.Lock()
	in.pinned, in.held = false, nil
	if in.killer != nil {
		in.killer.Stop()
	}
	in.mu.Unlock()
}

// waitGroupGone waits until no process but the unreaped leader is left in
// the group, or the deadline passes. Members of the group are not our
// children, so nothing notifies us of their exit: this is the one place that
// polls, with a short back-off, and only when a group outlives its leader.
func waitGroupGone(pgid int, deadline time.Time) bool {
	for wait := time.Millisecond; othersInGroup(pgid); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(min(wait, time.Until(deadline)+time.Millisecond))
	}
	return true
}

// errNotRunning: the process group a signal was meant for is not ours now.
var errNotRunning = errors.New("not running")

// errExiting: Caddy's process is exiting; nothing new starts.
var errExiting = errors.New("Caddy is exiting")

// signal sends sig to the instance's process group while it is ours: from
// its start until endGroup saw it gone, the unreaped leader keeps the ID
// from being reused. Until the shim has exec'd the program, signals other
// than SIGKILL are held and sent right after. Every signal to a child goes
// through here.
func (in *instance) signal(sig syscall.Signal) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.pinned {
		return errNotRunning
	}
	if !in.execed && sig != syscall.SIGKILL {
		if !slices.Contains(in.held, sig) {
			in.held = append(in.held, sig)
		}
		return nil
	}
	err := signalGroup(in.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return errNotRunning
	}
	return err
}

// awaitExec reads the exec notice of child pid: EOF once the program
// replaced the shim, or the shim exited. Then the held signals go out.
func (in *instance) awaitExec(pid int, r *os.File) {
	var b [1]byte
	_, _ = r.Read(b[:])
	r.Close()
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.pinned {
		return
	}
	in.execed = true
	in.svc.log().Debug("the program replaced the exec shim", zap.Int("pid", pid))
	for _, sig := range in.held {
		_ = signalGroup(pid, sig)
	}
	in.held = nil
}

// stop sends the stop signal to the instance's group and arms SIGKILL for
// stop_timeout later; the instance reports its exit as always. Stopping an
// instance that is stopping already changes nothing. It reports whether a
// signal went out now.
func (in *instance) stop() bool {
	def := in.settings.Load()
	timeout := time.Duration(def.StopTimeout)
	in.mu.Lock()
	if in.stopping || !in.pinned {
		in.mu.Unlock()
		return false
	}
	in.stopping, in.deadline = true, time.Now().Add(timeout)
	in.killer = time.AfterFunc(timeout, func() {
		if in.signal(syscall.SIGKILL) == nil {
			in.svc.log().Warn("process group did not exit within stop_timeout; killing its process group",
				zap.Int("pgid", in.getPID()), zap.Duration("stop_timeout", timeout))
		}
	})
	in.mu.Unlock()
	if err := in.signal(def.signal); err != nil && err != errNotRunning {
		in.svc.log().Warn("sending stop signal", zap.Int("pid", in.getPID()), zap.Error(err))
	}
	return true
}

// kill sends SIGKILL to the instance's group: its exit is expected.
func (in *instance) kill() {
	in.mu.Lock()
	in.stopping = true
	in.mu.Unlock()
	_ = in.signal(syscall.SIGKILL)
}

// probe runs the readiness probe until it succeeds, the leader exits (ctx),
// or ready_timeout passes, and reports ready or not ready to the service.
// While it waits it says so every readyProgressEvery: what it probes, what
// went wrong the last time, and where the app listens if not there.
func (in *instance) probe(ctx context.Context, def *Process) {
	timeout := time.Duration(def.ReadyTimeout)
	began := time.Now()
	deadline, nextProgress := began.Add(timeout), began.Add(readyProgressEvery)
	check, name := def.checkOf(def.Ready, def.readyDefault, in.port, probeAttempt)
	var lastErr error
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		// each check ends by ready_timeout, and within probeAttempt: a
		// black-holed address would otherwise hold the dial for minutes
		end := deadline
		if d := time.Now().Add(probeAttempt); d.Before(end) {
			end = d
		}
		attempt, cancel := context.WithDeadline(ctx, end)
		err := check(attempt)
		cancel()
		if err == nil || lastErr == nil || end.Before(deadline) {
			lastErr = err // (an attempt that ready_timeout cut short tells nothing new)
		}
		if err == nil {
			in.svc.post(instanceReady{in})
			return
		}
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if now.After(deadline) {
			break
		}
		if now.After(nextProgress) {
			nextProgress = nextProgress.Add(readyProgressEvery)
			hint := def.listeningHint(in.getPID(), in.port)
			msg := fmt.Sprintf("waiting for %s: %s: %v (%s of %s)", def.Name, name, lastErr, now.Sub(began).Round(time.Second), timeout)
			log := in.svc.log().Info // (it boots)
			if hint != "" {
				msg += "; " + hint
				if strings.HasPrefix(hint, "the app listens on ") && !strings.HasPrefix(hint, "the app listens on no ") {
					log = in.svc.log().Warn // it listens elsewhere: the fix is the user's
				}
			}
			log(msg, zap.Int("pid", in.getPID()), zap.String("probe", name), zap.String("error", lastErr.Error()))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(wait, time.Until(deadline)+time.Millisecond)):
		}
	}
	why := fmt.Sprintf("%s: %v", name, lastErr)
	if hint := def.listeningHint(in.getPID(), in.port); hint != "" {
		why += "; " + hint
	}
	in.svc.post(instanceNotReady{in, why})
}

// readyProgressEvery is how often a process that is not ready yet says
// what it waits for.
const readyProgressEvery = 5 * time.Second

// newCommand returns the exec.Cmd every platform starts from: stdin from
// /dev/null, the merged environment. Output is attached by attachOutput.
func newCommand(def *Process, path string, args []string, at place, extraEnv ...string) *exec.Cmd {
	env := slices.Clip(def.env)
	if at.port != 0 {
		extraEnv = append(extraEnv, "PORT="+strconv.Itoa(at.port))
	}
	if def.envHasPort && at.port != 0 || def.envHasIndex {
		env = slices.Clone(env)
		for i, kv := range env {
			env[i] = at.expand(kv)
		}
	}
	return &exec.Cmd{
		Path:  path,
		Args:  args,
		Dir:   def.dir,
		Env:   append(env, extraEnv...),
		Stdin: nil, // os/exec opens the null device
	}
}
