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
	"sync"
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
// definition is unchanged, and when Caddy's process exits, stops each
// process only after Caddy's HTTP servers have drained (bounded by the
// process's drain_timeout). Caddy's process exits only after every child is
// gone.
type App struct {
	// Processes to start and supervise. Each runs in a process group of its
	// own. Default: none.
	Processes []*Process `json:"processes,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	procs  []*proc
	// processes of the previous config that this one replaced blue/green:
	// they serve again if this config stops before taking over
	replaced []*proc

	hasHTTP    bool          // the config has HTTP servers to drain on exit
	exitOnce   sync.Once     // starts the exit sequence once
	drained    chan struct{} // closed when the exit's drain is over
	drainOnce  sync.Once     // closes drained once
	drainedWhy string        // why the drain is over; read after <-drained
	// closed when this config's HTTP servers have finished their requests
	// (at a reload or at the exit; see hookHTTP)
	serversDrained chan struct{}
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

	a.hookHTTP(ctx)

	// The "stopping" event is emitted before any app's Stop: it tells us when
	// the exit began, even when the http app is stopped (and blocks) first.
	events, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading events app: %v", err)
	}
	return events.(*caddyevents.App).On("stopping", stoppingHandler{a})
}

// Start starts every process, or keeps running the one a previous config
// started if its definition is unchanged.
func (a *App) Start() error {
	for _, def := range a.Processes {
		if err := def.checkPrivileges(); err != nil {
			return err
		}
	}
	if err := a.holdSockets(); err != nil {
		return err
	}
	a.stopDroppedOnPorts()
	for _, def := range a.Processes {
		p, err := acquire(a, def)
		if err != nil {
			a.releaseAll()
			return err
		}
		registry.Lock()
		a.procs = append(a.procs, p)
		registry.Unlock()
	}
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

// Stop stops the processes this config no longer needs, on a reload or when
// the config is unloaded. When Caddy's process is exiting it does not block:
// the exit sequence (see exitSequence) runs in the background so that the
// http app, which Caddy may stop after this app, can drain; Caddy waits for
// the children at the very end of its exit.
func (a *App) Stop() error {
	if caddy.Exiting() {
		a.logger.Debug("supervise app stopping: processes stay up until the drain is over")
		a.beginExit(time.Now())
		return nil
	}
	a.releaseAll()
	return nil
}

// Cleanup releases nothing: processes are stopped by Stop, or by the exit
// sequence, and must stay alive while Caddy's servers drain.
func (a *App) Cleanup() error { return nil }

// currentProcs returns the app's processes (the admin API's restart may
// replace one).
func (a *App) currentProcs() []*proc {
	registry.Lock()
	defer registry.Unlock()
	return slices.Clone(a.procs)
}

// releaseAll gives up this config's claim on its processes and stops, in
// parallel, those no other config uses.
func (a *App) releaseAll() {
	var wg sync.WaitGroup
	for _, p := range a.currentProcs() {
		if !release(a, p) {
			continue
		}
		if a.replacedBy(p) {
			// A new instance serves now, but this config's servers may
			// still have requests that chose p and have not connected to it
			// yet (they cannot retry once this config is gone): p stops once
			// those servers have drained, or after drain_timeout.
			go func() {
				def, _ := p.current()
				timer := time.NewTimer(time.Duration(def.DrainTimeout))
				defer timer.Stop()
				select {
				case <-a.serversDrained:
				case <-timer.C:
				}
				p.stop("replaced by a new instance")
			}()
			continue
		}
		wg.Go(func() { p.stop("no longer in the config") })
	}
	wg.Wait()
	a.reviveReplaced()
	registry.Lock()
	a.procs = nil
	registry.Unlock()
	releaseSockets(a)
}

// replacedBy reports whether another instance of p's name serves now,
// started by the config that follows a: p was replaced blue/green. (When a
// stops before taking over, the instance that serves again is one a
// replaced: p stops at once.)
func (a *App) replacedBy(p *proc) bool {
	registry.Lock()
	defer registry.Unlock()
	q := registry.procs[p.name]
	return q != nil && q != p && !slices.Contains(a.replaced, q)
}

// stoppingHandler receives Caddy's "stopping" event.
type stoppingHandler struct{ a *App }

func (h stoppingHandler) Handle(context.Context, caddy.Event) error {
	if caddy.Exiting() {
		h.a.beginExit(time.Now())
	}
	return nil
}

var onExitOnce sync.Once

// Interface guards
var (
	_ caddy.App           = (*App)(nil)
	_ caddy.Provisioner   = (*App)(nil)
	_ caddy.CleanerUpper  = (*App)(nil)
	_ caddyevents.Handler = stoppingHandler{}
)
