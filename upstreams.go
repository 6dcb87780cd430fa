package supervise

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a reverse_proxy dynamic upstream source that returns the
// address of a supervised process while it is ready. While it starts,
// restarts, or is being replaced (a reload or an admin restart), a request
// waits here until an instance is ready, up to `wait`, and is then sent to
// it at once: no 502, and no request of a config being unloaded left
// waiting in reverse_proxy's retry loop when that config goes (Caddy ends
// such retries with 503). A process that has ended for good, or that no
// config has, gives no address at once. reverse_proxy's lb_try_duration
// still applies after that:
//
//	reverse_proxy {
//		dynamic supervise web
//		lb_try_duration 30s
//	}
type Upstreams struct {
	// Name of the supervised process. Required.
	Name string `json:"name,omitempty"`

	// Wait is how long a request waits for the process to become ready
	// when no instance of it is ready. Default: `30s`.
	Wait Duration `json:"wait,omitempty"`

	ctx caddy.Context
}

// DefaultUpstreamWait is how long a request waits for a ready instance.
const DefaultUpstreamWait = 30 * time.Second

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.supervise",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision checks the configuration.
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
	return nil
}

// GetUpstreams returns the address of the process's ready instance,
// waiting for one while the process starts, restarts or is replaced.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	if addr := u.readyAddress(r); addr != "" {
		return []*reverseproxy.Upstream{{Dial: addr}}, nil
	}
	return nil, nil
}

func (u *Upstreams) readyAddress(r *http.Request) string {
	var limit <-chan time.Time
	for {
		registry.Lock()
		p, changing, moved := registry.procs[u.Name], registry.changing[u.Name], registry.movedCh
		registry.Unlock()
		var changed <-chan struct{}
		if p != nil {
			if addr := p.readyAddress(); addr != "" {
				return addr
			}
			p.mu.Lock()
			changed = p.changed
			p.mu.Unlock()
		}
		if !changing && (p == nil || p.finished()) {
			return "" // nothing will come back by itself
		}
		if limit == nil {
			timer := time.NewTimer(time.Duration(u.Wait))
			defer timer.Stop()
			limit = timer.C
		}
		select {
		case <-moved:
		case <-changed:
		case <-r.Context().Done():
			return ""
		case <-u.ctx.Done():
			return ""
		case <-limit:
			return ""
		}
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
	_ caddyfile.Unmarshaler       = (*Upstreams)(nil)
)
