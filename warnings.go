package supervise

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// warnUnsafe warns, when the config loads (and at `caddy validate`), of
// combinations that work but fail requests at a transition, each with its
// fix:
//   - `shutdown_delay` + `grace_period` longer than a process's
//     `drain_timeout`: the process is stopped while Caddy still drains;
//   - a fixed port behind a static `reverse_proxy` without
//     `lb_try_duration`: every request in a restart's gap fails with 502;
//   - `port auto` that no `dynamic supervise` names: nothing finds its port;
//   - a `dynamic supervise` proxy without `supervise_streams` before it,
//     or, for a process replaced beside itself, with a
//     `stream_close_delay` shorter than its `stream_drain_timeout` (see
//     warnStreams);
//   - an `lb_policy` on the proxy of a pool: the dynamic upstream chooses
//     the instance, so it has no effect;
//   - a `dynamic supervise` wait as long as its server's write timeout,
//     without `supervise_streams` before it (which restarts the write
//     timeout once a request that waited goes to the app);
//   - a `handle_response` that rewrites to a header of the app's response
//     (`rewrite * {rp.header.X-Sendfile}`): rewrite reads it as a URL, so
//     a file name the app's users chose can reach another file; use
//     supervise_sendfile.
//
// It reads the http app's provisioned routes (handlers nested in
// `handle`, `route` and the like are subroutes).
//
// And it refuses what would let an app of another user read with Caddy's
// rights (guardFiles), and a canary without supervise_streams before each
// of its proxies (the verdict would see no request).
func (a *App) warnUnsafe(httpApp *caddyhttp.App) error {
	if httpApp == nil {
		return nil
	}
	var proxies []*reverseproxy.Handler
	var files []caddyhttp.MiddlewareHandler                       // supervise_sendfile and supervise_public
	streamsBefore := make(map[*reverseproxy.Handler]bool)         // supervise_streams comes before it
	writeTimeout := make(map[*reverseproxy.Handler]time.Duration) // its server's
	var serverWriteTimeout time.Duration
	var walk func(routes caddyhttp.RouteList, covered bool) bool
	walk = func(routes caddyhttp.RouteList, covered bool) bool {
		for _, r := range routes {
			local := covered // in this route: what comes after a supervise_streams of it is covered
			for _, h := range r.Handlers {
				switch h := h.(type) {
				case *Sendfile, *Public:
					files = append(files, h.(caddyhttp.MiddlewareHandler))
				case *Streams:
					local = true
					covered = covered || len(r.MatcherSets) == 0 && r.Group == "" // (with matchers, or in a group, only some requests go on through it)
				case *reverseproxy.Handler:
					proxies = append(proxies, h)
					streamsBefore[h] = local
					writeTimeout[h] = serverWriteTimeout
					for _, hr := range h.HandleResponse {
						a.warnHeaderRewrites(hr.Routes)
						walk(hr.Routes, local)
					}
				case *caddyhttp.Subroute:
					// what it covers goes on after it only if every request
					// goes through it (a site or a `handle` has matchers)
					inner := walk(h.Routes, local)
					local = inner
					if len(r.MatcherSets) == 0 && r.Group == "" {
						covered = inner
					}
				}
			}
		}
		return covered
	}
	for _, srv := range httpApp.Servers {
		serverWriteTimeout = time.Duration(srv.WriteTimeout)
		walk(srv.Routes, false)
		if srv.Errors != nil {
			walk(srv.Errors.Routes, false)
		}
		for _, r := range srv.NamedRoutes {
			if r != nil {
				walk(caddyhttp.RouteList{*r}, false)
			}
		}
	}
	if err := a.guardFiles(files); err != nil {
		return err
	}
	budget := time.Duration(httpApp.ShutdownDelay) + time.Duration(httpApp.GracePeriod)
	for _, p := range a.Processes {
		var named []*reverseproxy.Handler // the proxies with `dynamic supervise <name>`
		for _, h := range proxies {
			if u, ok := h.DynamicUpstreams.(*Upstreams); ok && u.Name == p.Name {
				named = append(named, h)
			}
		}
		if p.Canary != nil {
			for _, h := range named {
				if !streamsBefore[h] {
					return fmt.Errorf("process %q: canary: needs supervise_streams before the reverse_proxy with `dynamic supervise %s`: it counts how each request ends, which the verdict reads, keeps each client on one release, and sends a failed GET again to the old release; add `supervise_streams` to the site (it sorts itself before reverse_proxy)", p.Name, p.Name)
				}
			}
		}
		a.warnStreams(p, named, streamsBefore)
		for _, h := range named {
			wait, wt := time.Duration(h.DynamicUpstreams.(*Upstreams).Wait), writeTimeout[h]
			if !streamsBefore[h] && wt > 0 && wait >= wt {
				a.logger.Warn(fmt.Sprintf("process %s: `dynamic supervise %s` waits up to %s for the app, and the server's write timeout is %s: "+
					"a request that waits that long while the app boots is cut (the client gets an empty reply, logged with the app's status); "+
					"add `supervise_streams` to the site (the write timeout then counts from when the request goes to the app), or set `wait` below the write timeout",
					p.Name, p.Name, wait, wt))
			}
		}
		for _, h := range named {
			switch h.LoadBalancing.SelectionPolicy.(type) {
			case nil, reverseproxy.RandomSelection, *reverseproxy.RandomSelection:
			default:
				if p.count > 1 {
					a.logger.Warn(fmt.Sprintf("process %s: the lb_policy of the reverse_proxy with `dynamic supervise %s` has no effect: "+
						"the dynamic upstream chooses among the %d instances (the one with the fewest requests in flight) and gives the proxy one address",
						p.Name, p.Name, p.count))
				}
			}
		}
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
		if (len(named) > 0 || len(static) > 0) && budget > time.Duration(p.DrainTimeout) {
			a.logger.Warn(fmt.Sprintf("process %s: shutdown_delay + grace_period (%s) is longer than its drain_timeout (%s): it gets its stop signal while Caddy still drains; raise drain_timeout, or lower them",
				p.Name, budget, p.DrainTimeout))
		}
		if p.Port == "auto" && len(named) == 0 && len(proxies) > 0 {
			a.logger.Warn(fmt.Sprintf("process %s: port auto, but no reverse_proxy uses `dynamic supervise %s`: nothing else can find its port", p.Name, p.Name))
		}
		if p.Port != "auto" {
			for _, dial := range static {
				a.logger.Warn(fmt.Sprintf("process %s: port %s behind reverse_proxy %s without lb_try_duration or lb_retries: every request of a restart's gap fails with 502; use `dynamic supervise %s`",
					p.Name, p.Port, dial, p.Name))
			}
		}
	}
	return nil
}

// guardFiles keeps Caddy from reading for an app of another user what
// that user may not read. When a process runs as another user than
// Caddy's (a root Caddy with `user app`), Caddy's file handlers would read
// with Caddy's rights what the app names or places: supervise_sendfile
// without roots serves any file the app names (/etc/shadow, Caddy's TLS
// keys) — an error that asks for roots (other than /); supervise_public
// follows symbolic links out of its directory, below which the app's user
// may be able to write — it no longer follows them out (os.Root).
func (a *App) guardFiles(files []caddyhttp.MiddlewareHandler) error {
	var other *Process
	for _, p := range a.Processes {
		if p.id != nil && p.id.otherUser() {
			other = p
			break
		}
	}
	if other == nil {
		return nil
	}
	for _, h := range files {
		switch h := h.(type) {
		case *Sendfile:
			if len(h.Roots) == 0 || slices.Contains(h.Roots, string(filepath.Separator)) {
				return fmt.Errorf("supervise_sendfile without root: process %q runs as %s, another user than Caddy's: X-Sendfile would let its app read any file Caddy may (other users' secrets, Caddy's keys); give the directories it sends files from: supervise_sendfile { root <dir>... }",
					other.Name, other.identityName())
			}
		case *Public:
			if err := h.confine(); err != nil {
				return err
			}
		}
	}
	return nil
}

// warnStreams warns when the streams (WebSockets, SSE) of process p's
// proxies cannot be kept across transitions or ended cleanly at exit:
// without `supervise_streams` before the proxy, this module does not see
// them (a restart cuts them after drain_timeout, and an SSE response holds
// Caddy's exit drain); with it, a reload of a process replaced beside
// itself closes the WebSockets after the proxy's `stream_close_delay`
// (Caddy closes the upgraded connections of a config it unloads).
func (a *App) warnStreams(p *Process, named []*reverseproxy.Handler, streamsBefore map[*reverseproxy.Handler]bool) {
	for _, h := range named {
		switch {
		case !streamsBefore[h]:
			a.logger.Warn(fmt.Sprintf("process %s: no supervise_streams before the reverse_proxy with `dynamic supervise %s`: if the app serves WebSockets or server-sent events, a restart cuts them and they hold Caddy's exit drain; add `supervise_streams` to the site (it sorts itself before reverse_proxy)",
				p.Name, p.Name))
		case p.blueGreen() && time.Duration(h.StreamCloseDelay) < time.Duration(p.StreamDrainTimeout):
			a.logger.Warn(fmt.Sprintf("process %s: the reverse_proxy's stream_close_delay (%s) is shorter than the process's stream_drain_timeout (%s): a reload closes its WebSockets after stream_close_delay; set `stream_close_delay %s`",
				p.Name, time.Duration(h.StreamCloseDelay), time.Duration(p.StreamDrainTimeout), time.Duration(p.StreamDrainTimeout)))
		}
	}
}

// warnHeaderRewrites warns of a handle_response route that rewrites the
// request to a header of the app's response, as X-Sendfile was once
// answered (`rewrite * {rp.header.X-Sendfile}` + `file_server`): rewrite
// reads the value as a URL — it percent-decodes it and cuts it at ? and
// #, and file_server then resolves the .. that decoding made — so a stored
// upload named `..%2F..%2Fconfig%2Fmaster.key` is served as the app's key.
func (a *App) warnHeaderRewrites(routes caddyhttp.RouteList) {
	for _, r := range routes {
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *rewrite.Rewrite:
				if u := strings.ToLower(h.URI); strings.Contains(u, "{rp.header.") || strings.Contains(u, "{http.reverse_proxy.header.") {
					a.logger.Warn(fmt.Sprintf("a handle_response rewrites to the app's response header (%q): rewrite reads it as a URL (it percent-decodes it and cuts it at ? and #, and file_server then resolves ..), so a file name chosen by the app's users can reach any other file; for X-Sendfile use `supervise_sendfile` before reverse_proxy instead",
						h.URI))
				}
			case *caddyhttp.Subroute:
				a.warnHeaderRewrites(h.Routes)
			}
		}
	}
}
