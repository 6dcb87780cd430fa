// Package supervise is a Caddy app that starts and supervises the app server
// behind Caddy, and on shutdown lets Caddy's HTTP servers drain before it
// signals that app server.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `supervise` app: it starts the configured processes when Caddy
// starts, keeps a process running across config reloads while its
// definition is unchanged, replaces it (beside the old one, or in its
// place) when its definition changes, and when Caddy's process exits, stops
// each process only after Caddy's HTTP servers have drained (bounded by the
// process's drain_timeout). Caddy's process exits only after every child is
// gone.
//
// A config's App is one holder of its processes: the processes themselves
// (services, see supervisor.go) live across configs.
type App struct {
	// Processes to start and supervise. Each runs in a process group of its
	// own. Default: none.
	Processes []*Process `json:"processes,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	link   *configLink

	started  chan struct{} // closed once Start has run, or Stop
	acquired []*service    // the services this config holds
	yielded  []*service    // those it stopped to take their ports

	hasHTTP    bool          // the config has HTTP servers to drain on exit
	exitOnce   sync.Once     // starts the exit sequence once
	drainBegan chan struct{} // closed when the exit's drain begins: a server of this config begins to shut down
	beganOnce  sync.Once
	drained    chan struct{} // closed when the exit's drain is over
	drainOnce  sync.Once     // closes drained once
	drainedWhy string        // why the drain is over; read after <-drained
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "supervise",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks and completes the configuration. It starts nothing:
// `caddy validate` runs it too.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.drained = make(chan struct{})
	a.drainBegan = make(chan struct{})
	a.started = make(chan struct{})
	names := make(map[string]int, len(a.Processes))
	for i, p := range a.Processes {
		if p == nil {
			return fmt.Errorf("process %d: null", i)
		}
		if err := p.provision(i); err != nil {
			return err
		}
		if j, dup := names[p.Name]; dup {
			return fmt.Errorf("process %d: name %q: already used by process %d; give each process a distinct name", i, p.Name, j)
		}
		names[p.Name] = i
		p.warnEmptiedVariables(a.logger)
		if p.envFileMissing {
			a.logger.Info(fmt.Sprintf("process %s: env_file %q does not exist; it is optional, so the process gets no variables from it", p.Name, p.EnvFile))
		}
	}
	bound := make(map[string]string)
	for _, p := range a.Processes {
		e := p.endpoint(0)
		if other, dup := bound[e]; dup && e != "" {
			what := fmt.Sprintf("port %s", p.Port)
			if p.Socket != "" {
				what = fmt.Sprintf("socket %q", p.Socket)
			}
			return fmt.Errorf("process %q: %s: process %q binds it too", p.Name, what, other)
		}
		bound[e] = p.Name
	}

	// Metrics are read from the processes at each scrape; each config has a
	// registry of its own.
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := reg.Register(collector{}); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return fmt.Errorf("registering metrics: %v", err)
			}
		}
	}

	// the dynamic upstreams of this config name processes of this app
	a.link = linkConfig(ctx)
	if err := a.link.setApp(a); err != nil {
		return err
	}

	if err := a.hookHTTP(ctx); err != nil {
		return err
	}
	// (the http app is provisioned now: every dynamic upstream of the
	// config is linked)
	if err := a.checkCanaries(a.link.upstreamNames()); err != nil {
		return err
	}

	// The "stopping" event is emitted before any app's Stop: it tells us when
	// the exit began, even when the http app is stopped (and blocks) first.
	events, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %v", err)
	}
	return events.(*caddyevents.App).On("stopping", stoppingHandler{a})
}

// Start starts every process, keeps running those a previous config
// started from the same definition, and replaces those whose definition
// changed, before it returns: a reload with a broken release fails here,
// and the previous config serves on. In order:
//
//  1. Caddy must be able to run each process as its user and stop it
//     again (checkPrivileges).
//  2. Processes of the previous config that this one drops and whose port
//     or socket address one of its processes takes stop now (yield), so
//     that it can be bound; they come back if this config fails.
//  3. Sockets are opened, so that an address in use fails the config
//     before anything starts.
//  4. Each process is acquired: kept, started, or replaced.
//
// If anything fails, the config lets go of everything it took, and what
// ran before runs again.
func (a *App) Start() error {
	defer close(a.started)
	for _, def := range a.Processes {
		if err := def.checkPrivileges(); err != nil {
			return err
		}
	}
	a.yieldPorts()
	if err := a.holdSockets(); err != nil {
		a.releaseAll()
		return err
	}
	for _, def := range a.Processes {
		reply := make(chan error, 1)
		s := ask(def.Name, acquireEv{app: a, def: def, candidate: a.takesPortOf(def), reload: configActive(), reply: reply})
		a.acquired = append(a.acquired, s)
		if err := <-reply; err != nil {
			a.releaseAll()
			return err
		}
	}
	releaseSockets(a) // the processes' services hold them now
	onExitOnce.Do(func() {
		caddy.OnExit(waitForChildren)
		if os.Getpid() == 1 {
			a.logger.Warn("Caddy runs as PID 1 without an init: processes orphaned inside the container " +
				"(a supervised app's own children whose parent died) become zombies that nobody reaps, " +
				"and the kernel ignores signals PID 1 has no handler for. Run Caddy under an init: " +
				"`docker run --init`, `init: true` in Compose, or tini as the ENTRYPOINT (tini -- caddy run ...)")
		}
	})
	return nil
}

// Stop lets go of the processes on a reload or when the config is
// unloaded: those no other config holds stop, and Stop returns once they
// are gone (the next config may need their ports). When Caddy's process
// exits and this is the config it stops last, Stop does not block: the
// exit sequence (exitSequence) runs in the background so that the http
// app, which Caddy may stop after this app, can drain; Caddy waits for the
// children at the very end of its exit. A config that Caddy stops during
// its exit but that is not the last (a reload that finished, or failed, as
// the exit began) only lets go.
func (a *App) Stop() error {
	if isFinalStop() {
		a.logger.Debug("supervise app stopping: processes stay up until the drain is over")
		a.beginExit(time.Now())
		return nil
	}
	a.releaseAll()
	return nil
}

// Cleanup unlinks the config's modules. It stops nothing: processes are
// stopped by Stop, or by the exit sequence, and must stay alive while
// Caddy's servers drain.
func (a *App) Cleanup() error {
	if a.link != nil {
		a.link.unlink()
	}
	return nil
}

// releaseAll lets go of every process the config acquired, then of the
// sockets it opened, then of the processes it stopped for their ports (which
// then come back if a config holds them); it returns once the processes
// no config holds any more are gone.
func (a *App) releaseAll() {
	var wg sync.WaitGroup
	release := func(services []*service) {
		for _, s := range services {
			wg.Go(func() {
				reply := make(chan struct{})
				if s.post(releaseEv{app: a, reply: reply}) {
					<-reply
				}
			})
		}
		wg.Wait()
	}
	release(a.acquired)
	releaseSockets(a)
	release(a.yielded)
	a.acquired, a.yielded = nil, nil
}

// yieldPorts stops, before this config starts anything, each process of
// the previous config that this one drops and whose port or socket address
// one of its processes takes.
func (a *App) yieldPorts() {
	for _, s := range allServices() {
		if slices.ContainsFunc(a.Processes, func(d *Process) bool { return d.Name == s.name }) {
			continue
		}
		v := s.fresh()
		if !slices.ContainsFunc(a.Processes, func(d *Process) bool { return d.takes(v.status.Port, v.status.Socket) }) {
			continue
		}
		reply := make(chan struct{})
		if s.post(yieldEv{app: a, reply: reply}) {
			<-reply
			a.yielded = append(a.yielded, s)
		}
	}
}

// takesPortOf reports whether def takes the port of a process this config
// stopped: its first start must succeed, or the config fails (and that
// process comes back).
func (a *App) takesPortOf(def *Process) bool {
	for _, s := range a.yielded {
		st := s.fresh().status
		if def.takes(st.Port, st.Socket) {
			return true
		}
	}
	return false
}

// takes reports whether the process binds what a process on port (or with
// socket) binds: the same TCP port, or the same unix socket path.
func (p *Process) takes(port int, socket string) bool {
	mine := p.endpoint(0)
	return mine != "" && (mine == "tcp:"+strconv.Itoa(port) && port != 0 || socket != "" && mine == socketEndpoint(socket))
}

// endpoint is what a process of this definition binds, for conflicts: a
// fixed port or a socket's ("tcp:3000"), a unix socket's path
// ("unix:/run/app.sock"), or "".
func (p *Process) endpoint(port int) string {
	switch {
	case p.Socket != "":
		return socketEndpoint(p.Socket)
	case port != 0:
		return "tcp:" + strconv.Itoa(port)
	case p.Port != "" && p.Port != "auto":
		return "tcp:" + p.Port
	}
	return ""
}

// socketEndpoint is endpoint for a socket address.
func socketEndpoint(socket string) string {
	address, _, err := splitSocketMode(socket)
	if err != nil {
		return ""
	}
	addr, err := caddy.ParseNetworkAddress(address)
	switch {
	case err != nil:
		return ""
	case addr.IsUnixNetwork():
		return "unix:" + addr.Host
	}
	return "tcp:" + strconv.Itoa(int(addr.StartPort))
}

// isFinalStop reports whether Caddy is stopping its last config: its
// process exits, and no config is active any more (Caddy's Stop clears the
// active config before it stops its apps). A config that is stopped while
// another is active is one a reload replaced, or one that failed to start.
func isFinalStop() bool {
	return callerExiting() && !configActive()
}

// callerExiting reports whether Caddy's process began to exit.
func callerExiting() bool {
	if testCaddy.set.Load() {
		return testCaddy.exiting.Load()
	}
	return caddy.Exiting()
}

// configActive reports whether Caddy runs a config.
func configActive() bool {
	if testCaddy.set.Load() {
		return testCaddy.active.Load()
	}
	return caddy.ActiveContext().Context != nil
}

// testCaddy stands for Caddy's process state in tests of the engine, which
// run without one.
var testCaddy struct{ set, exiting, active atomic.Bool }

// stoppingHandler receives Caddy's "stopping" event.
type stoppingHandler struct{ a *App }

func (h stoppingHandler) Handle(context.Context, caddy.Event) error {
	if isFinalStop() {
		h.a.beginExit(time.Now())
	}
	return nil
}

var onExitOnce sync.Once

// configLink links the modules of one config: its supervise app and its
// dynamic upstreams, which name the app's processes. Caddy gives modules
// no way to find an app of their config without provisioning it (and the
// supervise app provisions the http app: a cycle), so they meet here, by
// the config's own metrics registry (one per config).
type configLink struct {
	mu        sync.Mutex
	key       *prometheus.Registry
	app       *App
	upstreams []*Upstreams    // provisioned before the app: checked once it is
	named     map[string]bool // the processes the config's dynamic upstreams name
	refs      int
}

var configLinks = struct {
	sync.Mutex
	m map[*prometheus.Registry]*configLink
}{m: make(map[*prometheus.Registry]*configLink)}

// linkConfig returns the link of ctx's config.
func linkConfig(ctx caddy.Context) *configLink {
	key := ctx.GetMetricsRegistry()
	configLinks.Lock()
	defer configLinks.Unlock()
	l := configLinks.m[key]
	if l == nil {
		l = &configLink{key: key}
		if key != nil {
			configLinks.m[key] = l
		}
	}
	l.refs++
	return l
}

func (l *configLink) unlink() {
	configLinks.Lock()
	defer configLinks.Unlock()
	if l.refs--; l.refs == 0 && configLinks.m[l.key] == l {
		delete(configLinks.m, l.key)
	}
}

// setApp records the config's supervise app and checks the names of the
// dynamic upstreams provisioned before it.
func (l *configLink) setApp(a *App) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.app = a
	for _, u := range l.upstreams {
		if err := u.checkName(a); err != nil {
			return err
		}
	}
	l.upstreams = nil
	return nil
}

// addUpstream checks u's name against the config's supervise app, now if
// it was provisioned, else when it is.
func (l *configLink) addUpstream(u *Upstreams) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.named == nil {
		l.named = make(map[string]bool)
	}
	l.named[u.Name] = true
	if l.app != nil {
		return u.checkName(l.app)
	}
	l.upstreams = append(l.upstreams, u)
	return nil
}

// upstreamNames are the processes the config's dynamic upstreams name.
func (l *configLink) upstreamNames() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.named
}

// getApp is the config's supervise app, or nil if it has none.
func (l *configLink) getApp() *App {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.app
}

// names lists the app's process names, for errors.
func (a *App) names() string {
	names := make([]string, len(a.Processes))
	for i, p := range a.Processes {
		names[i] = p.Name
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// Interface guards
var (
	_ caddy.App           = (*App)(nil)
	_ caddy.Provisioner   = (*App)(nil)
	_ caddy.CleanerUpper  = (*App)(nil)
	_ caddyevents.Handler = stoppingHandler{}
)
