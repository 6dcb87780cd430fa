package supervise

import (
	"context"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// drainSettle is how long the last connection must stay the last: a
// connection the listener accepted just before it closed reaches the
// server's ConnState hook a few microseconds after Accept returned, possibly
// after the other connections closed.
const drainSettle = time.Millisecond

// hookHTTP arranges for the exit's drain to end as soon as Caddy's HTTP
// servers have finished their last response. It runs at Provision: the
// servers apply ConnState and shutdown hooks when they start, which may
// come before this app's Start.
//
// Two signals end the drain, whichever comes first:
//   - every server of this config began shutting down and its last
//     connection closed (a connection closes right after its response once
//     the server is shutting down). HTTP/3 runs over QUIC, whose
//     connections net/http does not see: if a server may serve HTTP/3, this
//     one is not used.
//   - the servers' stop hooks, which run after every server finished its
//     Shutdown; net/http notices idle connections by polling, up to 500 ms
//     apart.
//
// Without HTTP servers there is nothing to drain.
//
// (On a reload, an instance that a new one replaces waits for its own
// requests instead: see retire.)
func (a *App) hookHTTP(ctx caddy.Context) error {
	httpApp, err := ctx.AppIfConfigured("http")
	if err != nil {
		return nil
	}
	if err := a.warnUnsafe(httpApp.(*caddyhttp.App)); err != nil {
		return err
	}
	servers := httpApp.(*caddyhttp.App).Servers
	if len(servers) == 0 {
		return nil
	}
	a.hasHTTP = true
	names := make([]string, 0, len(servers))
	for name := range servers {
		names = append(names, name)
	}
	sort.Strings(names)
	// The exit's drain begins when a server begins to shut down, after
	// shutdown_delay: then streams end (see exitSequence).
	for _, srv := range servers {
		srv.RegisterOnShutdown(func() {
			if caddy.Exiting() {
				a.beganOnce.Do(func() { close(a.drainBegan) })
			}
		})
	}
	// The stop hooks of all servers run once, after all servers stopped: one is enough.
	// (On a reload they run at once, as the servers begin to shut down.)
	tracked := !slices.ContainsFunc(slices.Collect(maps.Values(servers)), mayServeHTTP3)
	servers[names[0]].RegisterOnStop(func(context.Context) error {
		if caddy.Exiting() {
			a.endDrain("http app stopped")
		}
		return nil
	})
	if !tracked {
		return nil
	}
	t := &connTracker{servers: len(servers), conns: make(map[net.Conn]bool), drained: func() {
		if caddy.Exiting() {
			a.endDrain("the last connection closed")
		}
	}}
	for _, s := range servers {
		s.RegisterConnState(t.connState)
		s.RegisterOnShutdown(t.shuttingDown)
	}
	return nil
}

// mayServeHTTP3 reports whether a server may serve HTTP/3: it has TLS (set
// by automatic HTTPS at the http app's Provision) and h3 among its
// protocols (the default).
func mayServeHTTP3(s *caddyhttp.Server) bool {
	if len(s.TLSConnPolicies) == 0 {
		return false
	}
	if s.Protocols == nil || slices.Contains(s.Protocols, "h3") {
		return true
	}
	for _, p := range s.ListenProtocols {
		if slices.Contains(p, "h3") {
			return true
		}
	}
	return false
}

// connTracker counts the open connections of a config's HTTP servers and
// calls drained once all servers are shutting down and none is left.
type connTracker struct {
	mu       sync.Mutex
	servers  int // servers of the config
	shutdown int // servers that began shutting down
	conns    map[net.Conn]bool
	settle   *time.Timer
	drained  func()
}

func (t *connTracker) connState(c net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch state {
	case http.StateNew:
		t.conns[c] = true
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
		t.check()
	}
}

func (t *connTracker) shuttingDown() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.shutdown++
	t.check()
}

// check starts the settle timer once the drain looks over; the timer calls
// drained if it still is. The caller holds the lock.
func (t *connTracker) check() {
	if t.shutdown < t.servers || len(t.conns) > 0 || t.settle != nil {
		return
	}
	t.settle = time.AfterFunc(drainSettle, func() {
		t.mu.Lock()
		over := len(t.conns) == 0
		t.settle = nil
		t.mu.Unlock()
		if over {
			t.drained()
		}
	})
}
