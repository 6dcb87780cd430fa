package supervise

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Blue/green replacement: the one way a running process is replaced by a
// new instance beside it, used by a config reload that changes a process
// with `port auto` and a readiness probe (acquire) and by the admin API's
// restart of such a process (replace).
//
//  1. The new instance starts on a new port as a candidate: the dynamic
//     upstream still routes to the old one, and if the candidate exits or is
//     not ready within ready_timeout, it is stopped, its restart and on_end
//     do not apply, and the error names its exit status and last output
//     lines (startCandidate). The old instance serves on.
//  2. Once it is ready, the registry (and with it the dynamic upstream)
//     switches to it.
//  3. Then the old instance gets its stop signal: at once for an admin
//     restart; for a reload, once Caddy stopped the old config (which it
//     does only after every app of the new one started) and the old
//     config's servers finished their requests (App.releaseAll). If the new
//     config fails to start instead, its Stop puts the old instance back
//     (release).
//
// Without `port auto` and a probe, a reload that changes a process must stop
// the old instance first (the new one needs its port); the new one is then
// a candidate the same way (with a probe, until it is ready), and if it
// fails, or the new config fails to start, the old definition is started
// again (revive).

// blueGreen reports whether a definition is replaced beside the running
// instance: it needs a port of its own and a way to know it is ready.
func (p *Process) blueGreen() bool { return p.Port == "auto" && p.Ready != nil }

// startCandidate starts a new instance of def on a new port and waits until
// it is ready. restarts is the count it carries on.
func startCandidate(def *Process, key string, logger *zap.Logger, restarts int, why string, oldPID int) (*proc, error) {
	port, err := def.fixedPort()
	if err != nil {
		return nil, fmt.Errorf("process %q: port auto: %v", def.Name, err)
	}
	np := newProc(def, key, logger, port)
	np.restartN = restarts
	np.candidate = true
	logger.Info("starting a new instance", zap.String("why", why), zap.Int("old_pid", oldPID), zap.Int("port", port))
	if err := np.start(); err != nil {
		return nil, fmt.Errorf("the new instance: %w; the old instance still serves", err)
	}
	err = np.waitReady(0, time.Duration(def.ReadyTimeout)+time.Second)
	if errors.Is(err, errExiting) || err == nil && caddy.Exiting() {
		// it serves nothing yet: it stops now, the old one gets the exit sequence
		np.stop("Caddy is exiting")
		return nil, fmt.Errorf("process %q: the new instance: %w; the old instance gets the exit sequence", def.Name, errExiting)
	}
	if err != nil {
		np.stop("the new instance did not become ready")
		return nil, np.candidateError(err)
	}
	np.mu.Lock()
	alive := np.running && np.state == stateReady
	np.candidate = !alive
	np.mu.Unlock()
	if !alive {
		np.stop("the new instance did not stay ready")
		return nil, np.candidateError(fmt.Errorf("process %q: the new instance ended as it became ready", def.Name))
	}
	logger.Info("the new instance is ready and serves", zap.Int("pid", np.getPID()), zap.Int("old_pid", oldPID))
	return np, nil
}

// takeOver makes np serve in place of old for every config that used old:
// the registry, and the configs' process lists.
func takeOver(old, np *proc) {
	registry.Lock()
	defer registry.Unlock()
	old.mu.Lock()
	owners := old.owners
	old.owners = nil
	old.mu.Unlock()
	np.mu.Lock()
	np.owners = owners
	np.mu.Unlock()
	registry.procs[np.name] = np
	moved()
	for _, a := range owners {
		for i, q := range a.procs {
			if q == old {
				a.procs[i] = np
			}
		}
	}
}

// switchTo makes np, started by a reload to a's config in place of old,
// the process the registry (and the dynamic upstream) knows; old keeps
// serving the old config until that config stops, and serves again if a
// stops before taking over.
func (a *App) switchTo(old, np *proc) {
	registry.Lock()
	defer registry.Unlock()
	np.mu.Lock()
	np.owners = []*App{a}
	np.mu.Unlock()
	registry.procs[np.name] = np
	moved()
	a.replaced = append(a.replaced, old)
}

// revive starts prev's definition again in place of prev, which was stopped
// for a new definition that failed, or whose config failed to start: the
// configs that used prev use the new instance, and the registry points to
// it.
func revive(prev *proc) (*proc, error) {
	prev.mu.Lock()
	def, key, logger, port, restarts := prev.def, prev.key, prev.logger, prev.port, prev.restartN
	prev.mu.Unlock()
	np := newProc(def, key, logger, port)
	np.restartN = restarts
	if err := np.start(); err != nil {
		return nil, err
	}
	takeOver(prev, np)
	logger.Warn("the new definition did not take over: the previous one was started again", zap.Int("pid", np.getPID()))
	return np, nil
}

// reviveReplaced starts again, once a's processes are stopped, the
// processes of the previous config that a stopped to make room (the same
// name on a fixed port, or a dropped process whose fixed port a gives to
// another) if that config still uses them: a failed to start, or was
// stopped before taking over.
func (a *App) reviveReplaced() {
	for _, prev := range a.replaced {
		if prev.finished() && prev.hasOwners() {
			if _, err := revive(prev); err != nil {
				prev.log().Error("starting the previous definition again", zap.Error(err))
			}
		}
	}
}

// tookPort reports whether a stopped a dropped process of the previous
// config to give its fixed port to def.
func (a *App) tookPort(def *Process) bool {
	for _, prev := range a.replaced {
		if prev.name != def.Name && strconv.Itoa(prev.port) == def.Port {
			return true
		}
	}
	return false
}

// stopDroppedOnPorts stops, before a starts anything, each process of the
// previous config that a drops and whose fixed port one of a's processes
// takes (the new one could not bind it); reviveReplaced brings it back if a
// fails.
func (a *App) stopDroppedOnPorts() {
	names, ports := make(map[string]bool), make(map[int]bool)
	for _, def := range a.Processes {
		names[def.Name] = true
		if n, err := strconv.Atoi(def.Port); err == nil {
			ports[n] = true
		}
	}
	for _, p := range allProcs() {
		p.mu.Lock()
		port := p.port
		p.mu.Unlock()
		if names[p.name] || !ports[port] || p.finished() {
			continue
		}
		p.log().Info("stopping the process: the new config drops it and gives its port to another", zap.Int("port", port))
		p.stop("its port goes to another process of the new config")
		a.replaced = append(a.replaced, p)
	}
}

// candidateError explains why a new instance failed: err, its exit status
// if it exited, and its last output lines. The old instance still serves.
func (p *proc) candidateError(err error) error {
	st := p.status()
	p.mu.Lock()
	notReady, readyTimeout := p.notReady, time.Duration(p.def.ReadyTimeout)
	p.mu.Unlock()
	if notReady {
		err = fmt.Errorf("process %q: the new instance was not ready within ready_timeout %s", p.name, readyTimeout)
	}
	status := "it did not exit on its own"
	if st.LastExit != nil {
		status = fmt.Sprintf("exit status %d", *st.LastExit)
	}
	return fmt.Errorf("%v (%s; last output: %s); the old instance still serves", err, status, p.tail.String())
}

// replace is the admin API's restart of a blue/green process: a new
// instance of the same definition; once it serves, p stops. One runs at a
// time (see restart).
func (p *proc) replace(def *Process, logger *zap.Logger) (*proc, error) {
	p.mu.Lock()
	running := p.running && !p.stopping
	p.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("process %q: %w", p.name, errNotRunning)
	}
	np, err := startCandidate(def, p.key, logger, p.status().Restarts+1, "a restart through the admin API", p.getPID())
	if err != nil {
		return nil, err
	}
	takeOver(p, np)
	p.stop("replaced by a restart")
	return np, nil
}
