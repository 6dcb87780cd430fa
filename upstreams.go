package supervise

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a reverse_proxy dynamic upstream source that returns the
// address of a supervised process while it is ready, and none while it
// starts, restarts or stops. With reverse_proxy's lb_try_duration, requests
// that arrive meanwhile wait for it instead of failing with 502:
//
//	reverse_proxy {
//		dynamic supervise web
//		lb_try_duration 30s
//	}
type Upstreams struct {
	// Name of the supervised process. Required.
	Name string `json:"name,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.supervise",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision checks the configuration.
func (u *Upstreams) Provision(caddy.Context) error {
	if u.Name == "" {
		return fmt.Errorf("dynamic supervise: name: the name of a supervised process is required")
	}
	return nil
}

// GetUpstreams returns the process's address while it is ready.
func (u *Upstreams) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	registry.Lock()
	p := registry.procs[u.Name]
	registry.Unlock()
	if p == nil {
		return nil, nil
	}
	if addr := p.readyAddress(); addr != "" {
		return []*reverseproxy.Upstream{{Dial: addr}}, nil
	}
	return nil, nil
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	dynamic supervise <name>
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "supervise"
	if !d.NextArg() {
		return d.Err("dynamic supervise: the name of a supervised process is required")
	}
	u.Name = d.Val()
	if d.NextArg() {
		return d.Errf("dynamic supervise: one name only, got also %q", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("dynamic supervise: unknown subdirective %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
	_ caddyfile.Unmarshaler       = (*Upstreams)(nil)
)
