package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

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

	mu       sync.Mutex
	def      *Process // current definition; settings other than the key follow reloads
	logger   *zap.Logger
	owners   []*App // configs that use this process, oldest first
	pid      int    // PID and process group of the current or last child
	running  bool   // a child runs now
	port     int    // the process's port (`port`), 0 if none
	state    string // starting, ready, stopping, exited
	stopping bool   // Caddy asked it to stop: its exit is expected
	restarts []time.Time

	// for the admin API and metrics
	startedAt   time.Time     // when the current or last child started
	restartN    int           // restarts so far (policy and admin API)
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
	procs map[string]*proc
}{procs: make(map[string]*proc)}

// spawnKey is what must be equal for a reload to keep a child running: what
// the child was started from (after expanding placeholders and reading
// env_file), and as whom. Other settings (timeouts, stop signal,
// restart policy) apply to the running child from the reload on.
func spawnKey(def *Process) string {
	b, _ := json.Marshal(struct {
		Args     []string
		Dir      string
		Vars     map[string]string
		Identity string
		Port     string
	}{def.args, def.dir, def.vars, fmt.Sprintf("%+v", def.id), def.Port})
	return string(b)
}

// acquire returns the running process for def on behalf of app a: the one a
// previous config started if it was started from the same definition,
// otherwise a new one, after gracefully stopping a differing one of the same
// name so that the new one can bind the same port.
func acquire(a *App, def *Process) (*proc, error) {
	key := spawnKey(def)
	logger := a.logger.Named(def.Name)

	registry.Lock()
	old := registry.procs[def.Name]
	if old != nil && old.key == key && !old.finished() {
		old.adopt(a, def, logger)
		registry.Unlock()
		logger.Info("process kept running across config change", zap.Int("pid", old.getPID()))
		return old, nil
	}
	registry.Unlock()

	if old != nil && !old.finished() {
		began := time.Now()
		old.stop("its definition changed")
		logger.Info("previous process stopped; starting the new definition",
			zap.Int("old_pid", old.getPID()), zap.Duration("stop_took", time.Since(began)))
	}

	port, err := def.fixedPort()
	if err != nil {
		return nil, fmt.Errorf("process %q: port auto: %v", def.Name, err)
	}
	p := &proc{
		changed: make(chan struct{}),
		port:    port,
		name:    def.Name,
		key:     key,
		def:     def,
		logger:  logger,
		owners:  []*App{a},
		exited:  make(chan struct{}),
		done:    make(chan struct{}),
		stopCh:  make(chan struct{}),
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	registry.Lock()
	registry.procs[def.Name] = p
	registry.Unlock()
	return p, nil
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
	}
	return true
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
func (p *proc) setState(state string, pid int) {
	p.mu.Lock()
	if p.pid != pid || p.state == state {
		p.mu.Unlock()
		return
	}
	from := p.state
	p.state = state
	logger := p.logger
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	logger.Info("process state", zap.String("from", from), zap.String("to", state), zap.Int("pid", pid))
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
	defer close(p.exited)
	var delay time.Duration // the last restart back-off
	for n := 0; ; n++ {
		def, logger := p.current()
		cmd := p.command(def, p.port)
		out, err := p.attachOutput(cmd, def)
		p.mu.Lock()
		if p.stopping {
			p.mu.Unlock()
			if out != nil {
				out.started() // nothing will start: let the streams end
			}
			return
		}
		if err == nil {
			err = cmd.Start()
			out.started()
		}
		if err == nil {
			p.pid, p.running, p.startedAt, p.restartN = cmd.Process.Pid, true, time.Now(), n
			keepGroup(cmd.Process.Pid, logger)
		}
		p.mu.Unlock()
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
			logger.Info("process started", zap.Int("pid", cmd.Process.Pid), zap.Strings("command", def.argsFor(p.port)), zap.Int("restarts", n))
			probeCtx, probeDone := context.WithCancel(context.Background())
			if def.Ready != nil {
				p.setState(stateStarting, cmd.Process.Pid)
				go p.probeReady(probeCtx, def, cmd.Process.Pid, p.port, logger)
			} else {
				p.setState(stateReady, cmd.Process.Pid)
			}
			began := time.Now()
			_ = cmd.Wait() // the only Wait; the status is in cmd.ProcessState
			probeDone()
			p.setState(stateExited, cmd.Process.Pid)
			upFor = time.Since(began)
			if !groupAlive(cmd.Process.Pid) {
				releaseGroup(cmd.Process.Pid)
				// Nothing of the group holds the output pipes any more: log
				// the last lines before saying it exited. (A process that
				// left the group could hold them: stop waiting once a second
				// passes without a line.)
				out.wait(time.Second)
			}
			var how string
			code, how = exitStatus(cmd.ProcessState)
			fields := []zap.Field{zap.Int("pid", cmd.Process.Pid), zap.Int("exit_status", code), zap.String("exit", how), zap.Duration("up_for", upFor)}
			p.mu.Lock()
			p.running = false
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
			if restartReq {
				p.mu.Lock()
				p.lastStopDur = time.Since(p.restartAt)
				p.mu.Unlock()
				logger.Info("process exited for the restart asked through the admin API", fields...)
				stopLeftovers(cmd.Process.Pid, def, logger)
				continue
			}
			logger.Error("process exited unexpectedly", fields...)
			// What is left of its group is orphaned, and may hold its port.
			stopLeftovers(cmd.Process.Pid, def, logger)
		}

		wait, why := p.nextRestart(def, code, upFor, &delay)
		if why != "" {
			logger.Error("process ended for good", zap.String("why", why), zap.Int("exit_status", code))
			go processEnded(def, logger, code)
			return
		}
		logger.Info("restarting process", zap.Duration("after", wait), zap.Int("restarts", n+1))
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-p.stopCh:
			timer.Stop()
			return
		}
	}
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
// child's process group, up to stop_timeout for it to exit, then SIGKILL to
// the group. Group members that outlive the child get the rest of
// stop_timeout, then SIGKILL too. It returns when the group is gone.
// Concurrent and repeated calls are safe; all return when the group is gone.
func (p *proc) stop(reason string) {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}

	p.mu.Lock()
	if !p.stopping {
		p.stopping = true
		close(p.stopCh)
	}
	pgid, running, def, logger := p.pid, p.running, p.def, p.logger
	p.mu.Unlock()
	if running {
		p.setState(stateStopping, pgid)
	}

	timeout := time.Duration(def.StopTimeout)
	stopBegan := time.Now()
	deadline := stopBegan.Add(timeout)
	if running {
		logger.Info("stopping process", zap.Int("pid", pgid), zap.String("reason", reason),
			zap.String("signal", def.StopSignal), zap.Duration("stop_timeout", timeout))
		if err := signalGroup(pgid, def.signal); err != nil && !errors.Is(err, syscall.ESRCH) {
			logger.Warn("sending stop signal", zap.Int("pid", pgid), zap.Error(err))
		}
	}
	timer := time.NewTimer(timeout)
	select {
	case <-p.exited:
		timer.Stop()
	case <-timer.C:
		logger.Warn("process did not exit within stop_timeout; killing its process group",
			zap.Int("pid", pgid), zap.Duration("stop_timeout", timeout))
		_ = signalGroup(pgid, syscall.SIGKILL)
		<-p.exited
	}
	if groupAlive(pgid) && !waitGroupGone(pgid, deadline) {
		logger.Warn("process group outlived stop_timeout; killing it", zap.Int("pgid", pgid))
		_ = signalGroup(pgid, syscall.SIGKILL)
		waitGroupGone(pgid, time.Now().Add(time.Second))
	}
	releaseGroup(pgid)
	p.mu.Lock()
	p.lastStopDur = time.Since(stopBegan)
	p.mu.Unlock()
	close(p.done)
}

// stopLeftovers ends what is left of a process group whose leader exited:
// the stop signal, the stop_timeout, SIGKILL.
func stopLeftovers(pgid int, def *Process, logger *zap.Logger) {
	if !groupAlive(pgid) {
		return
	}
	logger.Warn("stopping the rest of the exited process's group", zap.Int("pgid", pgid))
	_ = signalGroup(pgid, def.signal)
	if !waitGroupGone(pgid, time.Now().Add(time.Duration(def.StopTimeout))) {
		_ = signalGroup(pgid, syscall.SIGKILL)
		waitGroupGone(pgid, time.Now().Add(time.Second))
	}
	releaseGroup(pgid)
}

// waitGroupGone waits until no process is left in the group or the deadline
// passes. Members of the group are not our children, so nothing notifies us
// of their exit: this is the one place that polls, with a short back-off, and
// only when a group outlives its leader.
func waitGroupGone(pgid int, deadline time.Time) bool {
	for wait := time.Millisecond; groupAlive(pgid); wait = min(2*wait, 50*time.Millisecond) {
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
