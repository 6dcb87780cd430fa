package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// proc is one running (or finished) child process and its process group.
// Exactly one goroutine starts and waits for it, on a locked OS thread, so
// that the parent-death signal stays armed for as long as the child lives.
type proc struct {
	def *Process
	key string // identity of the definition across config reloads

	exited chan struct{} // closed once the child (the group leader) is reaped
	done   chan struct{} // closed once the whole group is gone after exited
	stopMu sync.Mutex    // serialises stop sequences

	mu       sync.Mutex
	logger   *zap.Logger
	owners   []*App // configs that use this process, oldest first
	pid      int
	state    *os.ProcessState
	stopping bool // Caddy asked it to stop: its exit is expected
}

// registry holds the processes of the whole Caddy process by name, so that
// a config reload finds the children the previous config started.
var registry = struct {
	sync.Mutex
	procs map[string]*proc
}{procs: make(map[string]*proc)}

// definitionKey is what must be equal for a reload to keep a child running.
func definitionKey(def *Process) string {
	b, _ := json.Marshal(def)
	return string(b)
}

// acquire returns the running process for def on behalf of app a: the one a
// previous config started if its definition is unchanged, otherwise a new
// one, after gracefully stopping a differing one of the same name so that the
// new one can bind the same port.
func acquire(a *App, def *Process) (*proc, error) {
	key := definitionKey(def)
	logger := a.logger.Named(def.Name)

	registry.Lock()
	old := registry.procs[def.Name]
	if old != nil && old.key == key && !old.finished() {
		old.adopt(a, logger)
		registry.Unlock()
		logger.Info("process kept running across config change", zap.Int("pid", old.getPID()))
		return old, nil
	}
	registry.Unlock()

	if old != nil && !old.finished() {
		began := time.Now()
		old.stop("definition changed")
		logger.Info("previous process stopped; starting the new definition",
			zap.Int("old_pid", old.getPID()), zap.Duration("stop_took", time.Since(began)))
	}

	p := &proc{
		def:    def,
		key:    key,
		logger: logger,
		owners: []*App{a},
		exited: make(chan struct{}),
		done:   make(chan struct{}),
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
		p.logger = p.owners[len(p.owners)-1].logger.Named(p.def.Name)
		return false
	}
	if registry.procs[p.def.Name] == p {
		delete(registry.procs, p.def.Name)
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

func (p *proc) adopt(a *App, logger *zap.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.owners = append(p.owners, a)
	p.logger = logger
}

func (p *proc) log() *zap.Logger {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logger
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

// start spawns the child and returns once it runs (or failed to start).
func (p *proc) start() error {
	started := make(chan error, 1)
	go p.run(started)
	return <-started
}

// run starts the child and waits for it on one locked OS thread: the
// parent-death signal is tied to the thread that forked, so the thread must
// live exactly as long as the child. The goroutine never unlocks the thread;
// when it returns, Go ends the thread.
func (p *proc) run(started chan<- error) {
	runtime.LockOSThread()

	cmd := p.command()
	if err := cmd.Start(); err != nil {
		close(p.exited)
		close(p.done)
		started <- fmt.Errorf("starting process %q (%s): %v", p.def.Name, p.def.path, err)
		return
	}
	p.mu.Lock()
	p.pid = cmd.Process.Pid
	logger := p.logger
	p.mu.Unlock()
	logger.Info("process started", zap.Int("pid", cmd.Process.Pid), zap.Strings("command", p.def.Command))
	started <- nil

	_ = cmd.Wait() // the only Wait; the status is in cmd.ProcessState

	p.mu.Lock()
	p.state = cmd.ProcessState
	expected := p.stopping
	logger = p.logger
	p.mu.Unlock()
	close(p.exited)

	code, how := exitStatus(cmd.ProcessState)
	fields := []zap.Field{zap.Int("pid", cmd.Process.Pid), zap.Int("exit_status", code), zap.String("exit", how)}
	if expected {
		logger.Info("process exited", fields...)
		return
	}
	logger.Error("process exited unexpectedly", fields...)
	// Its children, if any, are orphans now: stop them like at shutdown.
	go p.stop("process exited unexpectedly")
}

// stop ends the process group: the stop signal, up to stop_timeout for the
// child to exit, then SIGKILL to the group. Group members that outlive the
// child get the rest of stop_timeout, then SIGKILL too. It returns when the
// group is gone. Concurrent and repeated calls are safe; all return when the
// group is gone.
func (p *proc) stop(reason string) {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}

	p.mu.Lock()
	p.stopping = true
	pgid, logger := p.pid, p.logger
	p.mu.Unlock()

	timeout := time.Duration(p.def.StopTimeout)
	deadline := time.Now().Add(timeout)
	if !p.finished() || groupAlive(pgid) {
		logger.Info("stopping process", zap.Int("pid", pgid), zap.String("reason", reason),
			zap.String("signal", p.def.StopSignal), zap.Duration("stop_timeout", timeout))
		if err := signalGroup(pgid, p.def.signal); err != nil && !errors.Is(err, syscall.ESRCH) {
			logger.Warn("sending stop signal", zap.Int("pid", pgid), zap.Error(err))
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
	}
	if groupAlive(pgid) {
		logger.Info("waiting for the rest of the process group", zap.Int("pgid", pgid))
		if !waitGroupGone(pgid, deadline) {
			logger.Warn("process group outlived stop_timeout; killing it", zap.Int("pgid", pgid))
			_ = signalGroup(pgid, syscall.SIGKILL)
			waitGroupGone(pgid, time.Now().Add(time.Second))
		}
	}
	close(p.done)
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
// /dev/null, Caddy's stdout and stderr, the merged environment.
func (p *proc) newCommand(path string, args []string, extraEnv ...string) *exec.Cmd {
	return &exec.Cmd{
		Path:   path,
		Args:   args,
		Dir:    p.def.Dir,
		Env:    append(slices.Clip(p.def.env), extraEnv...),
		Stdin:  nil, // os/exec opens the null device
		Stdout: os.Stdout,
		Stderr: os.Stderr,
	}
}
