package supervise

import (
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// warnUnsafe warns, when the config loads (and at `caddy validate`), of
// combinations that work but fail requests at a transition, each with its
// fix:
//   - `shutdown_delay` + `grace_period` longer than a process's
//     `drain_timeout`: the process is stopped while Caddy still drains;
//   - a fixed port behind a static `reverse_proxy` without
//     `lb_try_duration`: every request in a restart's gap fails with 502;
//   - `port auto` that no `dynamic supervise` names: nothing finds its port.
//
// It reads the http app's provisioned routes (handlers nested in
// `handle`, `route` and the like are subroutes).
func (a *App) warnUnsafe(httpApp *caddyhttp.App) {
	if httpApp == nil {
		return
	}
	var proxies []*reverseproxy.Handler
	var walk func(routes caddyhttp.RouteList)
	walk = func(routes caddyhttp.RouteList) {
		for _, r := range routes {
			for _, h := range r.Handlers {
				switch h := h.(type) {
				case *reverseproxy.Handler:
					proxies = append(proxies, h)
					for _, hr := range h.HandleResponse {
						walk(hr.Routes)
					}
				case *caddyhttp.Subroute:
					walk(h.Routes)
				}
			}
		}
	}
	for _, srv := range httpApp.Servers {
		walk(srv.Routes)
		if srv.Errors != nil {
			walk(srv.Errors.Routes)
		}
		for _, r := range srv.NamedRoutes {
			if r != nil {
				walk(caddyhttp.RouteList{*r})
			}
		}
	}
	budget := time.Duration(httpApp.ShutdownDelay) + time.Duration(httpApp.GracePeriod)
	for _, p := range a.Processes {
		named := slices.ContainsFunc(proxies, func(h *reverseproxy.Handler) bool {
			u, ok := h.DynamicUpstreams.(*Upstreams)
			return ok && u.Name == p.Name
		})
		var static []string // static upstreams on its port, on this host
		for _, h := range proxies {
			for _, u := range h.Upstreams {
				host, port, err := net.SplitHostPort(u.Dial)
				if err == nil && p.Port != "" && port == p.Port && (host == "" || host == "localhost" || net.ParseIP(host).IsLoopback()) {
					if h.LoadBalancing == nil || (h.LoadBalancing.TryDuration == 0 && h.LoadBalancing.Retries == 0) {
						static = append(static, u.Dial)
					}
				}
			}
		}
		if (named || len(static) > 0) && budget > time.Duration(p.DrainTimeout) {
			a.logger.Warn(fmt.Sprintf("process %s: shutdown_delay + grace_period (%s) is longer than its drain_timeout (%s): it gets its stop signal while Caddy still drains; raise drain_timeout, or lower them",
				p.Name, budget, p.DrainTimeout))
		}
		if p.Port == "auto" && !named && len(proxies) > 0 {
			a.logger.Warn(fmt.Sprintf("process %s: port auto, but no reverse_proxy uses `dynamic supervise %s`: nothing else can find its port", p.Name, p.Name))
		}
		if p.Port != "auto" {
			for _, dial := range static {
				a.logger.Warn(fmt.Sprintf("process %s: port %s behind reverse_proxy %s without lb_try_duration or lb_retries: every request of a restart's gap fails with 502; use `dynamic supervise %s`",
					p.Name, p.Port, dial, p.Name))
			}
		}
	}
}
