package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin endpoint's `/supervise/` routes (module
// `admin.api.supervise`), behind the admin endpoint's own origin and host
// checks:
//
//	GET  /supervise/                 every process's status, by name
//	GET  /supervise/<name>           one process's status
//	POST /supervise/<name>/restart   a graceful restart (see restart)
//	POST /supervise/<name>/signal/<SIG>  send a signal to the process group
//
// Errors are JSON, {"error": "..."}, with 400 (bad signal), 404 (no such
// process or endpoint), 405 (wrong method), 409 (the process is not running:
// it is stopping, restarting, in a restart back-off or ended) or 500.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.supervise",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/supervise/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// Status is what the admin API tells about a process.
type Status struct {
	Name       string     `json:"name"`
	PID        int        `json:"pid"`
	State      string     `json:"state"`
	Ready      bool       `json:"ready"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	Restarts   int        `json:"restarts"`
	LastExit   *int       `json:"last_exit_status,omitempty"`
	Port       int        `json:"port,omitempty"`
	Socket     string     `json:"socket,omitempty"`
	Command    []string   `json:"command"`
	StopSignal string     `json:"stop_signal"`
}

func (p *proc) status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{Name: p.name, PID: p.pid, State: p.state, Ready: p.state == stateReady, Restarts: p.restartN,
		LastExit: p.lastExit, Port: p.port, Socket: p.def.Socket, Command: p.def.argsFor(p.port), StopSignal: p.def.StopSignal}
	if !p.startedAt.IsZero() {
		t := p.startedAt
		st.StartedAt = &t
	}
	return st
}

func (a *AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/supervise"), "/"), "/")
	if parts[0] == "" {
		parts = nil
	}
	method := func(m string) error {
		if r.Method != m {
			return apiError(http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use %s", r.Method, r.URL.Path, m))
		}
		return nil
	}
	if len(parts) == 0 {
		if err := method(http.MethodGet); err != nil {
			return err
		}
		list := []Status{}
		for _, p := range allProcs() {
			list = append(list, p.status())
		}
		slices.SortFunc(list, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
		return writeJSONResponse(w, list)
	}
	registry.Lock()
	p := registry.procs[parts[0]]
	registry.Unlock()
	if p == nil {
		return apiError(http.StatusNotFound, fmt.Errorf("no supervised process named %q", parts[0]))
	}
	switch {
	case len(parts) == 1:
		if err := method(http.MethodGet); err != nil {
			return err
		}
		return writeJSONResponse(w, p.status())
	case len(parts) == 2 && parts[1] == "restart":
		if err := method(http.MethodPost); err != nil {
			return err
		}
		np, err := restartByName(p.name)
		if err != nil {
			return apiError(statusOf(err), err)
		}
		return writeJSONResponse(w, np.status())
	case len(parts) == 3 && parts[1] == "signal":
		if err := method(http.MethodPost); err != nil {
			return err
		}
		sig, err := parseSignal(parts[2])
		if err != nil {
			return apiError(http.StatusBadRequest, fmt.Errorf("signal %q: %v", parts[2], err))
		}
		p.mu.Lock()
		pid, running, logger := p.pid, p.running, p.logger
		p.mu.Unlock()
		err = errNotRunning
		if running {
			logger.Info("sending a signal asked through the admin API", zap.Int("pid", pid), zap.String("signal", parts[2]))
			err = p.signal(pid, sig)
		}
		if err != nil {
			return apiError(statusOf(err), fmt.Errorf("process %q: %v", p.name, err))
		}
		return writeJSONResponse(w, p.status())
	}
	return apiError(http.StatusNotFound, fmt.Errorf("%s: not an endpoint of /supervise/", r.URL.Path))
}

// errBusy: another transition of the process runs.
var errBusy = errors.New("busy")

// statusOf is the HTTP status for an error of an action on a process: 409
// when the process is not running (the request conflicts with its state),
// 500 otherwise.
func statusOf(err error) int {
	if errors.Is(err, errNotRunning) || errors.Is(err, errBusy) || errors.Is(err, errExiting) {
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func apiError(code int, err error) error {
	return caddy.APIError{HTTPStatus: code, Err: err, Message: err.Error()}
}

func writeJSONResponse(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// restart restarts the process gracefully and returns the process that runs
// now. With a readiness probe and `port auto`, a new instance starts on a
// new port beside the old one; once it is ready, the dynamic upstream
// switches to it, and only then is the old one stopped (stop signal: it
// finishes its requests; stop_timeout; SIGKILL). Otherwise the process is
// stopped the same way and started again at once, whatever its restart
// policy.
func (p *proc) restart() (*proc, error) {
	def, logger := p.current()
	if def.blueGreen() {
		return p.replace(def, logger)
	}
	timeout := time.Duration(def.StopTimeout)
	p.mu.Lock()
	if p.stopping || !p.running {
		p.mu.Unlock()
		return nil, fmt.Errorf("process %q: %w", p.name, errNotRunning)
	}
	p.restartReq, p.restartAt = true, time.Now()
	p.groupDeadline = p.restartAt.Add(timeout)
	pid := p.pid
	p.mu.Unlock()
	logger.Info("restarting process, as asked through the admin API", zap.Int("pid", pid))
	p.setState(stateStopping, pid)
	_ = p.signal(pid, def.signal)
	// p.signal sends nothing once this group is gone: never a stale kill
	killer := time.AfterFunc(timeout, func() { _ = p.signal(pid, syscall.SIGKILL) })
	defer killer.Stop()
	if err := p.waitReady(pid, time.Duration(def.StopTimeout)+time.Duration(def.ReadyTimeout)+10*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// restartByName restarts the process that serves as name. One transition of
// a process runs at a time: while a restart or a reload's replacement of it
// runs, another restart gets errBusy (409) at once.
func restartByName(name string) (*proc, error) {
	unlock, ok := lockName(name, false)
	if !ok {
		return nil, fmt.Errorf("process %q: a restart or a reload of it runs: %w", name, errBusy)
	}
	defer unlock()
	registry.Lock()
	p := registry.procs[name]
	registry.Unlock()
	if p == nil {
		return nil, fmt.Errorf("process %q: no longer in the config: %w", name, errNotRunning)
	}
	return p.restart()
}

// waitReady waits until a child other than oldPID is ready. It gives up
// with errExiting once Caddy's process began to exit: Caddy learns of its
// exit before it can stop a config (a reload that waits here holds the
// config lock), so this looks for it a few times a second.
func (p *proc) waitReady(oldPID int, limit time.Duration) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	exitCheck := time.NewTicker(exitCheckEvery)
	defer exitCheck.Stop()
	for {
		p.mu.Lock()
		pid, state, changed := p.pid, p.state, p.changed
		p.mu.Unlock()
		if pid != oldPID && state == stateReady {
			return nil
		}
		select {
		case <-changed:
		case <-p.exited:
			return fmt.Errorf("process %q ended instead of restarting", p.name)
		case <-deadline.C:
			return fmt.Errorf("process %q: not ready again within %s", p.name, limit)
		case <-exitCheck.C:
			if caddy.Exiting() {
				return fmt.Errorf("process %q: %w", p.name, errExiting)
			}
		}
	}
}

// exitCheckEvery is how often a wait for readiness looks whether Caddy's
// process began to exit.
const exitCheckEvery = 20 * time.Millisecond

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
