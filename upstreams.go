package supervise

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a reverse_proxy dynamic upstream source that returns the
// address of a supervised process's ready instance; of a pool
// (`instances`), the one with the fewest requests in flight, ties taken in
// turn. It chooses rather than Caddy's `lb_policy` because it counts every
// request it sends to an instance until the request ends: that is what
// lets an instance that leaves service finish exactly what it was sent, and
// what `max_lifetime_requests` counts. While it starts,
// restarts, or is being replaced (a reload or an admin restart), a request
// waits here until an instance is ready, up to `wait`, and is then sent to
// it at once: no 502, and no request of a config being unloaded left
// waiting in reverse_proxy's retry loop when that config goes (Caddy ends
// such retries with 503). A process that has ended for good, or that no
// config has, gives no address at once. reverse_proxy's retries still
// apply after that (a GET cut by a crash is retried):
//
//	reverse_proxy {
//		dynamic supervise web
//		lb_retries 3
//	}
type Upstreams struct {
	// Name of the supervised process. Required.
	Name string `json:"name,omitempty"`

	// Wait is how long a request waits for the process to become ready
	// when no instance of it is ready. Default: `30s`.
	Wait Duration `json:"wait,omitempty"`

	ctx  caddy.Context
	link *configLink
}

// DefaultUpstreamWait is how long a request waits for a ready instance.
const DefaultUpstreamWait = 30 * time.Second

// waiting counts, by process name, the requests that wait for an app that
// is not ready (the admin API shows it; Caddy's exit says so).
var waiting sync.Map // name → *atomic.Int64

func waitingFor(name string) *atomic.Int64 {
	n, _ := waiting.LoadOrStore(name, new(atomic.Int64))
	return n.(*atomic.Int64)
}

// waitedVar is the request variable that keeps how long the request
// waited for the process so far, over reverse_proxy's retries (one per
// process: a handle_errors that proxies to another process has its own
// budget).
func waitedVar(name string) string { return "supervise.waited." + name }

// waitedTime is the value of waitedVar: set in the request's variables at
// the first attempt, before reverse_proxy dials anything, and added to in
// place after that. (Caddy's request variables are a plain map, which a
// dial of an earlier attempt, still running in the transport's
// background, may read while a retry waits: a retry must not write it.)
type waitedTime struct{ ns atomic.Int64 }

func (w *waitedTime) String() string { return time.Duration(w.ns.Load()).String() }

// waitedOf is the request's waitedTime for the process.
func waitedOf(r *http.Request, name string) *waitedTime {
	if w, ok := caddyhttp.GetVar(r.Context(), waitedVar(name)).(*waitedTime); ok {
		return w
	}
	w := new(waitedTime)
	caddyhttp.SetVar(r.Context(), waitedVar(name), w)
	return w
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.supervise",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision checks the configuration: the name must be one of the config's
// supervised processes (checked once the supervise app is provisioned too).
func (u *Upstreams) Provision(ctx caddy.Context) error {
	if u.Name == "" {
		return fmt.Errorf("dynamic supervise: name: the name of a supervised process is required")
	}
	if u.Wait < 0 {
		return fmt.Errorf("dynamic supervise: wait %q: must be positive", u.Wait)
	}
	if u.Wait == 0 {
		u.Wait = Duration(DefaultUpstreamWait)
	}
	u.ctx = ctx
	u.link = linkConfig(ctx)
	return u.link.addUpstream(u)
}

// Cleanup unlinks the module from its config.
func (u *Upstreams) Cleanup() error {
	if u.link != nil {
		u.link.unlink()
	}
	return nil
}

// checkName checks that the config's supervise app has a process named
// u.Name.
func (u *Upstreams) checkName(a *App) error {
	if slices.ContainsFunc(a.Processes, func(p *Process) bool { return p.Name == u.Name }) {
		return nil
	}
	return fmt.Errorf("dynamic supervise %q: no supervised process of that name in this config (its processes: %s)", u.Name, a.names())
}

// GetUpstreams returns the addresses of the process's ready instances,
// waiting for one while the process starts, restarts or is replaced.
//
// The wait is one budget per request: reverse_proxy's retries (lb_retries)
// call again, and wait only for what is left of it, so the client gets
// its 503 once `wait` has passed, not `wait` times the retries. A request
// that waits gets the server's write timeout anew (supervise_streams in
// front: see waitingForApp and waitedForApp), so that the wait does not
// cut the response.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	for {
		began := time.Now()
		v, waited := u.readyTargets(r)
		st := streamOf(r)
		if waited && st != nil {
			st.waitedForApp(time.Since(began))
		}
		if v == nil {
			return nil, nil
		}
		inner := st != nil && st.innerProxy(r) // (see admit)
		if st != nil && !inner {
			st.statusCame() // an attempt before this one waits no more
		}
		targets, onCanary := v.targets, false
		if v.canary != nil {
			attempt := st
			if inner {
				attempt = nil // a reverse_proxy inside handle_response: the request's own attempt is not this one
			}
			targets, onCanary = v.canary.choose(r, attempt, v.targets)
		}
		// counted until the request ends: an instance that leaves service
		// gets its stop signal once its requests ended (see retire)
		var avoid *instance
		if st != nil {
			avoid = st.inst // a retry: not the instance it failed on, if there is another
		}
		if in := pick(targets, avoid); in.admit(r) {
			if st != nil && !inner {
				st.attemptOnCanary(onCanary)
			}
			return []*reverseproxy.Upstream{{Dial: in.address()}}, nil
		}
	}
}

// readyTargets waits, up to wait, until the process has a ready
// instance, and returns the view that has it (its ready instances, and a
// canary window's); nil if none will come by
// itself (the process ended for good, or no config has it), or once the
// client is gone. A request keeps waiting when its own config is unloaded
// meanwhile (a reload that failed, say): its server still finishes it, and
// the process, which another config holds, serves it.
func (u *Upstreams) readyTargets(r *http.Request) (ready *view, waited bool) {
	began := time.Now()
	spent := waitedOf(r, u.Name)
	left := time.Duration(u.Wait) - time.Duration(spent.ns.Load()) // (less on a retry of the same request)
	defer func() {
		if waited {
			spent.ns.Add(int64(time.Since(began)))
		}
	}()
	deadline := time.NewTimer(max(left, 0))
	defer deadline.Stop()
	for {
		var changed <-chan struct{}
		s := serviceNamed(u.Name)
		switch a := u.link.getApp(); {
		case s != nil:
			v := s.view.Load()
			if len(v.targets) > 0 || v.canary != nil {
				return v, waited
			}
			if !v.pending || left <= 0 {
				return nil, waited
			}
			changed = v.changed
		case a != nil && !isClosed(a.started):
			changed = a.started // the config's processes start (Caddy may start its apps in any order)
		default:
			return nil, waited
		}
		var ended <-chan struct{}
		if s != nil {
			ended = s.done
		}
		if !waited {
			n := waitingFor(u.Name)
			n.Add(1)
			defer n.Add(-1)
			if st := streamOf(r); st != nil {
				st.waitingForApp(left)
			}
		}
		waited = true
		select {
		case <-changed:
		case <-ended:
		case <-r.Context().Done():
			return nil, waited
		case <-deadline.C:
			return nil, waited
		}
	}
}

// isClosed reports whether c is closed.
func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	dynamic supervise <name> {
//		wait <duration>
//	}
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "supervise"
	if !d.NextArg() {
		return d.Err("dynamic supervise: the name of a supervised process is required")
	}
	u.Name = d.Val()
	if d.NextArg() {
		return d.Errf("dynamic supervise: one name only, got also %q", d.Val())
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "wait":
			if !d.NextArg() {
				return d.Err("dynamic supervise: wait: a duration is required")
			}
			v, err := parseDuration(d.Val())
			if err != nil {
				return d.Errf("dynamic supervise: wait %v", err)
			}
			u.Wait = Duration(v)
			if d.NextArg() {
				return d.Errf("dynamic supervise: wait: one value only, got also %q", d.Val())
			}
		default:
			return d.Errf("dynamic supervise: unknown subdirective %q (known: wait)", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
	_ caddy.CleanerUpper          = (*Upstreams)(nil)
	_ caddyfile.Unmarshaler       = (*Upstreams)(nil)
)
