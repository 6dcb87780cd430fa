package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// proc is one supervised process: the child that runs now, and the ones
// that replace it when it restarts. Exactly one goroutine starts and waits
// for its children, on a locked OS thread, so that the parent-death signal
// stays armed for as long as a child lives.
type proc struct {
	name string
	key  string // identity across config reloads: what the child is started from

	exited chan struct{} // closed once no child runs and none will: the run loop ended
	done   chan struct{} // closed once stop has seen the whole process group gone
	stopCh chan struct{} // closed by stop: no more restarts
	stopMu sync.Mutex    // serialises stop sequences

	mu      sync.Mutex
	def     *Process // current definition; settings other than the key follow reloads
	logger  *zap.Logger
	owners  []*App           // configs that use this process, oldest first
	pid     int              // PID and process group of the current or last child
	running bool             // the child's leader has not exited yet
	pinned  bool             // pid is ours to signal: its leader is not reaped yet (see signal)
	execed  bool             // the shim has exec'd the program (see awaitExec)
	held    []syscall.Signal // signals sent before that
	// when a stop or an admin restart began, the moment its stop_timeout ends
	groupDeadline time.Time
	candidate     bool // a new instance not serving yet: if it exits, no restart, no on_end
	notReady      bool // the last child failed its readiness probe
	tail          outputTail
	port          int    // the process's port (`port`), 0 if none
	state         string // starting, ready, stopping, exited
	stopping      bool   // Caddy asked it to stop: its exit is expected
	restarts      []time.Time

	// for the admin API and metrics
	startedAt   time.Time     // when the current or last child started
	restartN    int           // restarts so far (policy and admin API), carried over to a replacement
	lastExit    *int          // the last child's exit status
	exits       map[int]int   // exit statuses seen, and how often
	restartReq  bool          // the admin API asked for a restart in place
	restartAt   time.Time     // when it asked
	changed     chan struct{} // closed and replaced on each state change
	lastStopDur time.Duration // how long the last stop took
	lastDrain   time.Duration // how long it was kept up while Caddy drained, at exit
}

// registry holds the processes of the whole Caddy process by name, so that
// a config reload finds the children the previous config started.
var registry = struct {
	sync.Mutex
	procs map[string]*proc // the instance that serves, by name
	// every process whose run loop runs: those that serve, candidates not
	// serving yet, instances a reload replaced that wait for the old
	// config's servers; Caddy's exit stops them all
	live map[*proc]bool
	// a replacement of the process of that name runs (see lockName)
	changing map[string]bool
	// closed and replaced when procs or changing change (see moved)
	movedCh chan struct{}
}{procs: make(map[string]*proc), live: make(map[*proc]bool), changing: make(map[string]bool), movedCh: make(chan struct{})}

// moved wakes those waiting for a change of the registry. The caller holds
// the registry's lock.
func moved() {
	close(registry.movedCh)
	registry.movedCh = make(chan struct{})
}

// lockName makes the caller the one transition of the process name (a
// reload's replacement, a restart through the admin API) until it calls
// the returned function. With wait, it waits for the transition that runs;
// without, it reports false at once if one runs.
func lockName(name string, wait bool) (unlock func(), ok bool) {
	registry.Lock()
	defer registry.Unlock()
	for registry.changing[name] {
		if !wait {
			return nil, false
		}
		changed := registry.movedCh
		registry.Unlock()
		<-changed
		registry.Lock()
	}
	registry.changing[name] = true
	moved()
	return func() {
		registry.Lock()
		defer registry.Unlock()
		delete(registry.changing, name)
		moved()
	}, true
}

// spawnKey is what must be equal for a reload to keep a child running: what
// the child was started from (after expanding placeholders and reading
// env_file), and as whom. Other settings (timeouts, stop signal,
// restart policy) apply to the running child from the reload on.
func spawnKey(def *Process) string {
	b, _ := json.Marshal(struct {
		Args     []string
		Dir      string
		Vars     map[string]string
		Unset    []string
		Identity string
		Port     string
		Socket   string
	}{def.args, def.dir, def.vars, def.UnsetEnv, fmt.Sprintf("%+v", def.id), def.Port, def.Socket})
	return string(b)
}

// acquire returns the running process for def on behalf of app a: the one a
// previous config started if it was started from the same definition,
// otherwise a new one, after gracefully stopping a differing one of the same
// name so that the new one can bind the same port.
func acquire(a *App, def *Process) (*proc, error) {
	key := spawnKey(def)
	logger := a.logger.Named(def.Name)
	unlock, free := lockName(def.Name, false)
	if !free {
		logger.Info("waiting for the restart of the process that runs")
		unlock, _ = lockName(def.Name, true)
	}
	defer unlock()

	registry.Lock()
	old := registry.procs[def.Name]
	if old != nil && old.key == key && !old.finished() {
		old.adopt(a, def, logger)
		registry.Unlock()
		logger.Info("process kept running across config change", zap.Int("pid", old.getPID()))
		return old, nil
	}
	registry.Unlock()

	if old != nil && !old.finished() && def.blueGreen() {
		np, err := startCandidate(def, key, logger, old.status().Restarts, "its definition changed", old.getPID())
		if err != nil {
			return nil, err
		}
		a.switchTo(old, np)
		return np, nil // old stops with the old config (see replace.go)
	}

	if old != nil && !old.finished() {
		// the new instance needs the old one's port: stop it first; if the
		// new one fails, start the old definition again
		began := time.Now()
		old.stop("its definition changed")
		logger.Info("previous process stopped; starting the new definition",
			zap.Int("old_pid", old.getPID()), zap.Duration("stop_took", time.Since(began)))
		np, err := startCandidate(def, key, logger, old.status().Restarts, "its definition changed", old.getPID())
		if err != nil {
			if caddy.Exiting() {
				// the old config's exit sequence follows; nothing to bring back
				return nil, err
			}
			if _, rerr := revive(old); rerr != nil {
				return nil, fmt.Errorf("%v; starting the previous definition again failed too: %v", err, rerr)
			}
			return nil, fmt.Errorf("%v; the previous definition was started again", err)
		}
		a.switchTo(old, np)
		return np, nil
	}

	port, err := def.fixedPort()
	if err != nil {
		return nil, fmt.Errorf("process %q: port auto: %v", def.Name, err)
	}
	var p *proc
	if a.tookPort(def) {
		// a dropped process was stopped for this port: this one is a
		// candidate, and if it fails, the reload fails and that one returns
		if p, err = startCandidate(def, key, logger, 0, "it takes the port of a process the config drops", 0); err != nil {
			return nil, err
		}
	} else {
		p = newProc(def, key, logger, port)
		if err := p.start(); err != nil {
			return nil, err
		}
	}
	registry.Lock()
	p.mu.Lock()
	p.owners = []*App{a}
	p.mu.Unlock()
	registry.procs[def.Name] = p
	moved()
	registry.Unlock()
	return p, nil
}

// newProc returns a process of definition def, not started yet.
func newProc(def *Process, key string, logger *zap.Logger, port int) *proc {
	return &proc{
		name: def.Name, key: key, def: def, logger: logger, port: port,
		changed: make(chan struct{}), exited: make(chan struct{}), done: make(chan struct{}), stopCh: make(chan struct{}),
	}
}

// release gives up app a's claim on p; it reports whether a was the last
// owner, in which case the caller must stop p.
func release(a *App, p *proc) (last bool) {
	registry.Lock()
	defer registry.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.owners = slices.DeleteFunc(p.owners, func(o *App) bool { return o == a })
	if len(p.owners) > 0 {
		owner := p.owners[len(p.owners)-1]
		p.logger = owner.logger.Named(p.name)
		if i := slices.IndexFunc(owner.Processes, func(d *Process) bool { return d.Name == p.name }); i >= 0 {
			p.def = owner.Processes[i]
		}
		return false
	}
	if registry.procs[p.name] == p {
		delete(registry.procs, p.name)
		moved()
		// a must have failed to start, or was stopped before the old
		// config it was to replace: the instance p replaced serves again
		for _, prev := range a.replaced {
			if prev.name == p.name && !prev.finished() && prev.hasOwners() {
				registry.procs[p.name] = prev
				prev.log().Info("the new config did not take over: the old instance serves on", zap.Int("pid", prev.getPID()))
			}
		}
	}
	return true
}

// hasOwners reports whether a config still uses p.
func (p *proc) hasOwners() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.owners) > 0
}

// allProcs returns every process the registry knows.
func allProcs() []*proc {
	registry.Lock()
	defer registry.Unlock()
	ps := make([]*proc, 0, len(registry.procs))
	for _, p := range registry.procs {
		ps = append(ps, p)
	}
	return ps
}

func (p *proc) adopt(a *App, def *Process, logger *zap.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.owners = append(p.owners, a)
	p.def, p.logger = def, logger
}

// setState records and logs a change of state of the child pid.
func (p *proc) setState(state string, pid int) { p.changeState(state, pid, "") }

// becomeReady records that the child pid passed its readiness probe: only
// while it is starting. A probe that succeeds once the stop began (or the
// child exited) changes nothing.
func (p *proc) becomeReady(pid int) { p.changeState(stateReady, pid, stateStarting) }

// changeState moves the child pid to state, if it is in state from (any
// state if from is empty).
func (p *proc) changeState(state string, pid int, from string) {
	p.mu.Lock()
	if p.pid != pid || p.state == state || (from != "" && p.state != from) {
		p.mu.Unlock()
		return
	}
	was := p.state
	p.state = state
	logger := p.logger
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	logger.Info("process state", zap.String("from", was), zap.String("to", state), zap.Int("pid", pid))
}

// readyAddress is where the process serves while it is ready, else "".
func (p *proc) readyAddress() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateReady {
		return ""
	}
	return p.def.address(p.port)
}

// current returns the definition and logger in force.
func (p *proc) current() (*Process, *zap.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.def, p.logger
}

func (p *proc) log() *zap.Logger {
	_, logger := p.current()
	return logger
}

func (p *proc) getPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *proc) finished() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// start starts the run loop and returns once the first child runs (or
// failed to start).
func (p *proc) start() error {
	registry.Lock()
	if caddy.Exiting() {
		// waitForChildren may have taken its list already
		registry.Unlock()
		close(p.exited)
		close(p.done)
		return fmt.Errorf("process %q: %w", p.name, errExiting)
	}
	registry.live[p] = true
	registry.Unlock()
	started := make(chan error, 1)
	go p.run(started)
	return <-started
}

// run starts the child, waits for it, and restarts it as its restart policy
// says, until Caddy stops it or it ends for good. It runs on one locked OS
// thread: the parent-death signal is tied to the thread that forked, so the
// thread must live as long as the children. The goroutine never unlocks the
// thread; when it returns, Go ends the thread.
func (p *proc) run(started chan<- error) {
	runtime.LockOSThread()
	defer func() {
		registry.Lock()
		delete(registry.live, p)
		registry.Unlock()
		close(p.exited)
	}()
	var delay time.Duration // the last restart back-off
	for n := 0; ; n++ {
		def, logger := p.current()
		cmd, execNotice, err := p.command(def, p.port)
		var out *output
		if err == nil {
			out, err = p.attachOutput(cmd, def)
		}
		p.mu.Lock()
		stopping := p.stopping
		if err == nil && !stopping {
			err = cmd.Start()
		}
		if err == nil && !stopping {
			p.pid, p.running, p.startedAt = cmd.Process.Pid, true, time.Now()
			if n > 0 {
				p.restartN++
			}
			p.pinned, p.execed, p.held = true, execNotice == nil, nil
			keepGroup(cmd.Process.Pid, logger)
		}
		p.mu.Unlock()
		// the child has its copies of the pipes and descriptors, or nothing
		// will start: close the parent's
		closeParentEnds(cmd, out)
		if (err != nil || stopping) && execNotice != nil {
			execNotice.Close()
		}
		if stopping {
			return
		}
		if n == 0 {
			if err != nil {
				close(p.done)
				started <- fmt.Errorf("starting process %q (%s): %v", def.Name, def.path, startError(def, err))
				return
			}
			started <- nil
		}

		var code int
		var upFor time.Duration
		if err != nil {
			code = 127
			logger.Error("restarting process failed", zap.Error(startError(def, err)))
		} else {
			pid := cmd.Process.Pid
			if execNotice != nil {
				go p.awaitExec(pid, execNotice)
			}
			logger.Info("process started", zap.Int("pid", pid), zap.Strings("command", def.argsFor(p.port)), zap.Int("restarts", p.status().Restarts))
			probeCtx, probeDone := context.WithCancel(context.Background())
			if def.Ready != nil {
				p.setState(stateStarting, pid)
				go p.probeReady(probeCtx, def, pid, p.port, logger)
			} else {
				p.setState(stateReady, pid)
			}
			began := time.Now()
			_ = waitLeader(cmd) // the leader exited; unreaped, it keeps its group's ID ours
			probeDone()
			upFor = time.Since(began)
			p.mu.Lock()
			p.running = false
			p.mu.Unlock()
			p.setState(stateExited, pid)
			p.endGroup(pid, out)
			_ = reap(cmd) // the only Wait; the status is in cmd.ProcessState
			var how string
			code, how = exitStatus(cmd.ProcessState)
			fields := []zap.Field{zap.Int("pid", pid), zap.Int("exit_status", code), zap.String("exit", how), zap.Duration("up_for", upFor)}
			p.mu.Lock()
			expected, restartReq := p.stopping, p.restartReq
			p.restartReq = false
			p.lastExit = &code
			if p.exits == nil {
				p.exits = make(map[int]int)
			}
			p.exits[code]++
			def, logger = p.def, p.logger
			p.mu.Unlock()
			if expected {
				logger.Info("process exited", fields...)
				return
			}
			p.mu.Lock()
			candidate := p.candidate
			p.mu.Unlock()
			if candidate {
				// the instance it was to replace still serves
				logger.Error("the new instance exited before it was ready", fields...)
				return
			}
			if restartReq {
				p.mu.Lock()
				p.lastStopDur = time.Since(p.restartAt)
				p.mu.Unlock()
				logger.Info("process exited for the restart asked through the admin API", fields...)
				continue
			}
			logger.Error("process exited unexpectedly", fields...)
		}

		wait, why := p.nextRestart(def, code, upFor, &delay)
		if why != "" {
			logger.Error("process ended for good", zap.String("why", why), zap.Int("exit_status", code))
			go processEnded(def, logger, code)
			return
		}
		logger.Info("restarting process", zap.Duration("after", wait), zap.Int("restarts", p.status().Restarts+1))
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-p.stopCh:
			timer.Stop()
			return
		}
	}
}

// closeParentEnds closes the parent's copies of what the child was given:
// the output pipes' write ends (so that the streams reach EOF when the child
// and everything that inherited them exit) and the extra descriptors.
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
// is left of the group gets the stop signal (unless a stop or restart already
// sent it) and SIGKILL at the deadline; then the output is logged to its
// last line, bounded by stop_timeout once the group is gone (a process that
// left the group may hold the pipes); then the group is unregistered from
// the keeper and stops being ours to signal. The caller reaps the leader
// right after: only then can its ID be reused.
func (p *proc) endGroup(pid int, out *output) {
	p.mu.Lock()
	def, logger := p.def, p.logger
	signalled, deadline := p.stopping || p.restartReq, p.groupDeadline
	p.mu.Unlock()
	timeout := time.Duration(def.StopTimeout)
	if othersInGroup(pid) {
		if !signalled {
			// what is left is orphaned, and may hold the process's port
			logger.Warn("stopping the rest of the exited process's group", zap.Int("pgid", pid))
			_ = p.signal(pid, def.signal)
			deadline = time.Now().Add(timeout)
		}
		if !waitGroupGone(pid, deadline) {
			logger.Warn("process group outlived stop_timeout; killing it", zap.Int("pgid", pid))
			_ = p.signal(pid, syscall.SIGKILL)
			waitGroupGone(pid, time.Now().Add(time.Second))
		}
	}
	if out != nil && !out.wait(timeout) {
		logger.Warn("output still open stop_timeout after the process group ended (a process that left the group holds it); not waiting for the rest",
			zap.Int("pgid", pid), zap.Duration("stop_timeout", timeout))
	}
	releaseGroup(pid)
	p.mu.Lock()
	p.pinned, p.held = false, nil
	p.mu.Unlock()
}

// errNotRunning: the process group a signal was meant for is not ours now.
var errNotRunning = errors.New("not running")

// errExiting: Caddy's process is exiting; nothing new starts.
var errExiting = errors.New("Caddy is exiting")

// signal sends sig to the process group pid, if pid is the current group
// and still ours: from its start until endGroup saw it gone, the unreaped
// leader keeps the ID from being reused. Until the shim has exec'd the
// program, signals other than SIGKILL are held and sent right after.
// Every signal to a child goes through here.
func (p *proc) signal(pid int, sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.pinned || p.pid != pid {
		return errNotRunning
	}
	if !p.execed && sig != syscall.SIGKILL {
		if !slices.Contains(p.held, sig) {
			p.held = append(p.held, sig)
		}
		return nil
	}
	err := signalGroup(pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return errNotRunning
	}
	return err
}

// awaitExec reads the exec notice of child pid: EOF once the program
// replaced the shim, or the shim exited. Then the held signals go out.
func (p *proc) awaitExec(pid int, r *os.File) {
	var b [1]byte
	_, _ = r.Read(b[:])
	r.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid != pid || !p.pinned {
		return
	}
	p.execed = true
	p.logger.Debug("the program replaced the exec shim", zap.Int("pid", pid))
	for _, sig := range p.held {
		_ = signalGroup(pid, sig)
	}
	p.held = nil
}

// nextRestart applies the restart policy to an exit: it returns how long to
// wait before the restart, or why there is none.
func (p *proc) nextRestart(def *Process, code int, upFor time.Duration, delay *time.Duration) (time.Duration, string) {
	switch {
	case def.Restart == RestartNever:
		return 0, "restart is never"
	case def.Restart == RestartOnFailure && code == 0:
		return 0, "exited successfully and restart is on_failure"
	}
	if upFor >= restartResetAfter || *delay == 0 {
		*delay = restartFirstDelay
	} else {
		*delay = min(2**delay, restartMaxDelay)
	}
	if def.MaxRestarts > 0 {
		now := time.Now()
		window := time.Duration(def.RestartWindow)
		p.restarts = slices.DeleteFunc(p.restarts, func(t time.Time) bool { return now.Sub(t) > window })
		if len(p.restarts) >= def.MaxRestarts {
			return 0, fmt.Sprintf("restarted %d times within restart_window %s (max_restarts)", len(p.restarts), window)
		}
		p.restarts = append(p.restarts, now.Add(*delay))
	}
	return *delay, ""
}

// stop ends the process: no more restarts; the stop signal to the current
// child's process group, up to stop_timeout for the group to exit, then
// SIGKILL to the group. It returns when the group is gone and reaped.
// Concurrent and repeated calls are safe; all return when the group is gone.
func (p *proc) stop(reason string) {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}

	def, logger := p.current()
	timeout := time.Duration(def.StopTimeout)
	stopBegan := time.Now()
	p.mu.Lock()
	if !p.stopping {
		p.stopping = true
		p.groupDeadline = stopBegan.Add(timeout)
		close(p.stopCh)
	}
	pid, running := p.pid, p.running
	p.mu.Unlock()
	if running {
		p.setState(stateStopping, pid)
		logger.Info("stopping process", zap.Int("pid", pid), zap.String("reason", reason),
			zap.String("signal", def.StopSignal), zap.Duration("stop_timeout", timeout))
		if err := p.signal(pid, def.signal); err != nil && err != errNotRunning {
			logger.Warn("sending stop signal", zap.Int("pid", pid), zap.Error(err))
		}
	}
	timer := time.NewTimer(timeout)
	select {
	case <-p.exited:
		timer.Stop()
	case <-timer.C:
		if p.signal(pid, syscall.SIGKILL) == nil {
			logger.Warn("process group did not exit within stop_timeout; killing its process group",
				zap.Int("pgid", pid), zap.Duration("stop_timeout", timeout))
		}
		<-p.exited
	}
	p.mu.Lock()
	p.lastStopDur = time.Since(stopBegan)
	p.mu.Unlock()
	close(p.done)
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

// newCommand returns the exec.Cmd every platform starts from: stdin from
// /dev/null, the merged environment. Output is attached by attachOutput.
func newCommand(def *Process, path string, args []string, port int, extraEnv ...string) *exec.Cmd {
	if port != 0 {
		extraEnv = append(extraEnv, "PORT="+strconv.Itoa(port))
	}
	return &exec.Cmd{
		Path:  path,
		Args:  args,
		Dir:   def.dir,
		Env:   append(slices.Clip(def.env), extraEnv...),
		Stdin: nil, // os/exec opens the null device
	}
}
