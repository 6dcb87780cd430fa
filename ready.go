package supervise

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultReadyTimeout is how long a process may take to become ready.
const DefaultReadyTimeout = 60 * time.Second

// ReadyProbe tells when a process is ready to take requests. Exactly one of
// TCP and HTTP is set.
type ReadyProbe struct {
	// TCP: ready once a TCP connection to this address succeeds. An address
	// is used as written, also with `port`. Empty (only with `port`):
	// 127.0.0.1:<port>.
	TCP *string `json:"tcp,omitempty"`

	// HTTP: ready once a GET of this URL answers 2xx or 3xx. A URL is used
	// as written, also with `port`. A path alone (`/up`, only with `port`):
	// that path on http://127.0.0.1:<port>. Empty (only with `port`):
	// http://127.0.0.1:<port>/.
	HTTP *string `json:"http,omitempty"`

	// Off: no probe; the process counts as ready once started (Caddyfile
	// `ready off`). A process with `port` is probed with a TCP connection
	// to its port unless its probe is off.
	Off bool `json:"off,omitempty"`
}

// provisionReady checks the probe and the port, and fills in defaults.
func (p *Process) provisionReady() error {
	if p.Port != "" && p.Port != "auto" {
		n, err := strconv.Atoi(p.Port)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: must be auto or a port number", p.Port)
		}
	}
	if p.ReadyTimeout < 0 {
		return fmt.Errorf("ready_timeout %q: must be positive", p.ReadyTimeout)
	}
	if p.Ready != nil && p.Ready.Off {
		if p.Ready.TCP != nil || p.Ready.HTTP != nil {
			return fmt.Errorf("ready: off, or one of tcp and http")
		}
		if p.ReadyTimeout != 0 {
			return fmt.Errorf("ready_timeout %q: only means something with a probe (ready is off)", p.ReadyTimeout)
		}
		p.Ready = nil
		return nil
	}
	if p.Ready == nil && p.Port != "" {
		// a process with a port is ready once it accepts connections there,
		// not once it started: a reload or restart waits for that, and with
		// `port auto` replaces it beside the old one
		p.Ready = &ReadyProbe{TCP: new(string)}
		p.readyDefault = true
	}
	if p.Ready == nil {
		if p.ReadyTimeout != 0 {
			return fmt.Errorf("ready_timeout %q: only means something with ready (or port)", p.ReadyTimeout)
		}
		return nil
	}
	if p.ReadyTimeout == 0 {
		p.ReadyTimeout = Duration(DefaultReadyTimeout)
	}
	return p.checkProbe("ready", p.Ready)
}

// checkProbe checks the target of probe r, set by option (ready, health).
func (p *Process) checkProbe(option string, r *ReadyProbe) error {
	switch {
	case (r.TCP == nil) == (r.HTTP == nil):
		return fmt.Errorf("%s: set exactly one of tcp and http", option)
	case r.TCP != nil && *r.TCP == "" && p.Port == "" && p.Socket == "",
		r.HTTP != nil && *r.HTTP == "" && p.Port == "" && p.Socket == "":
		return fmt.Errorf("%s: an address is needed without port or socket", option)
	case r.HTTP != nil && strings.HasPrefix(*r.HTTP, "/"):
		if p.Port == "" && p.Socket == "" {
			return fmt.Errorf("%s http %q: a path alone is probed on the process's port or socket: set port or socket, or give a whole URL", option, *r.HTTP)
		}
		if u, err := url.Parse(*r.HTTP); err != nil || u.Host != "" || u.Scheme != "" {
			return fmt.Errorf("%s http %q: not a valid path", option, *r.HTTP)
		}
	case r.TCP != nil && *r.TCP != "":
		if _, _, err := net.SplitHostPort(*r.TCP); err != nil {
			return fmt.Errorf("%s tcp %q: %v", option, *r.TCP, err)
		}
	case r.HTTP != nil && *r.HTTP != "":
		u, err := url.Parse(*r.HTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s http %q: must be an http:// or https:// URL", option, *r.HTTP)
		}
	}
	return nil
}

// probeTarget is what the readiness probe checks: the address or URL as
// written, else the process's port (a path alone: that path on it).
func (p *Process) probeTarget(port int) string { return p.targetOf(p.Ready, port) }

// targetOf is what probe r checks (the readiness probe, or the health
// check): the address or URL as written, else the process's port.
func (p *Process) targetOf(r *ReadyProbe, port int) string {
	own := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if p.Socket != "" {
		own = p.socketDial()
		if p.sockAddr.IsUnixNetwork() {
			own = "localhost" // the probe dials the socket (probeDial)
		}
	}
	switch {
	case r.TCP != nil && *r.TCP != "":
		return *r.TCP
	case r.TCP != nil:
		return own
	case strings.HasPrefix(*r.HTTP, "/"):
		return "http://" + own + *r.HTTP
	case *r.HTTP != "":
		return *r.HTTP
	}
	return "http://" + own + "/"
}

// checkOf is the check of probe r for an instance on port (dflt: r is the
// default probe of a process with a port), each attempt bounded by
// timeout, and what it does, for logs ("GET http://127.0.0.1:3000/up",
// "TCP connect 127.0.0.1:3000").
func (p *Process) checkOf(r *ReadyProbe, dflt bool, port int, timeout time.Duration) (check, string) {
	target := p.targetOf(r, port)
	switch {
	case r.HTTP != nil:
		return httpCheck(target, p.dialOf(r), timeout), "GET " + target
	case dflt:
		return portCheck(port), fmt.Sprintf("TCP connect 127.0.0.1:%d or [::1]:%d", port, port)
	}
	return tcpCheck(target), "TCP connect " + target
}

// address is where the process serves, for the dynamic upstream: its port
// on the loopback, or the address its readiness probe checks.
func (p *Process) address(port int) string {
	switch {
	case p.Socket != "":
		return p.socketDial()
	case port != 0:
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	case p.Ready != nil && p.Ready.TCP != nil:
		return *p.Ready.TCP
	case p.Ready != nil && p.Ready.HTTP != nil:
		if u, err := url.Parse(*p.Ready.HTTP); err == nil {
			if u.Port() == "" {
				return net.JoinHostPort(u.Hostname(), map[bool]string{true: "443", false: "80"}[u.Scheme == "https"])
			}
			return u.Host
		}
	}
	return ""
}

// probeAttempt bounds one readiness check.
const probeAttempt = 2 * time.Second

// A check is one attempt of a readiness probe: nil when it passed, else
// what went wrong, for the log ("connection refused", "503 Service
// Unavailable").
type check func(context.Context) error

func tcpCheck(addr string) check {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return netCause(err)
		}
		c.Close()
		return nil
	}
}

// httpCheck GETs target; if unixPath is set, through that unix socket.
func httpCheck(target, unixPath string, timeout time.Duration) check {
	client := &http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if unixPath != "" {
		client.Transport = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", unixPath)
			},
			DisableKeepAlives: true,
		}
	}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return netCause(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return errors.New(cut(resp.Status, 100))
		}
		return nil
	}
}

// netCause is the part of a network error a person needs: "connection
// refused", "timed out", rather than the whole chain of operations.
func netCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		if op.Timeout() {
			return errors.New("timed out")
		}
		var sys *os.SyscallError
		if errors.As(op.Err, &sys) {
			return sys.Err
		}
		return op.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errors.New("timed out")
	}
	return err
}

// portCheck is the default probe of a process with a port: a TCP
// connection to it on either loopback address (an app may listen on
// 127.0.0.1, on ::1 only, or on both).
func portCheck(port int) check {
	v4 := tcpCheck(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	v6 := tcpCheck(net.JoinHostPort("::1", strconv.Itoa(port)))
	return func(ctx context.Context) error {
		err := v4(ctx)
		if err != nil && v6(ctx) == nil {
			return nil
		}
		return err
	}
}

// probeName says what the readiness probe does: "GET
// http://127.0.0.1:3000/up", "TCP connect 127.0.0.1:3000".
func (p *Process) probeName(port int) string {
	_, name := p.checkOf(p.Ready, p.readyDefault, port, probeAttempt)
	return name
}

// listeningHint tells where a process that is not ready listens, when that
// is not where it is probed (best effort: Linux, TCP and unix sockets of
// its process group): "the app listens on 127.0.0.1:9292".
func (p *Process) listeningHint(pgid, port int) string {
	if p.Socket != "" && p.sockAddr.IsUnixNetwork() {
		return "" // it is probed through its socket: nothing to compare
	}
	addrs, known := listeningAddrs(pgid)
	target := p.probeTarget(port)
	if u, err := url.Parse(target); err == nil && u.Host != "" {
		target = u.Host
	}
	host, tport, _ := net.SplitHostPort(target)
	for _, a := range addrs {
		if h, port, err := net.SplitHostPort(a); err == nil && port == tport && (h == host || h == "0.0.0.0" || h == "::") {
			return "" // it listens where it is probed: it does not answer yet
		}
	}
	fix := ""
	if port != 0 && p.Socket == "" {
		fix = fmt.Sprintf(": make it listen on the port in $PORT (%d), or put {supervise.port} in its command", port)
	}
	switch {
	case len(addrs) > 5:
		return "the app listens on " + strings.Join(addrs[:5], ", ") + fmt.Sprintf(" and %d more", len(addrs)-5) + fix
	case len(addrs) > 0:
		return "the app listens on " + strings.Join(addrs, ", ") + fix
	case known:
		return "the app listens on no TCP port or unix socket yet"
	}
	return ""
}

// cut shortens s to n bytes.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// freeLoopbackPort picks a port for `port auto`: one that is free on the
// loopback now and that the kernel never hands out as the local port of an
// outbound connection (outside net.ipv4.ip_local_port_range), so that
// nothing takes it while the process restarts and it is not listening.
// Where the range is unknown, the kernel picks a free port.
func freeLoopbackPort() (int, error) {
	lo, hi, ok := ephemeralPorts()
	if !ok {
		return kernelPickedPort()
	}
	free := (lo - 1024) + (65535 - hi) // ports in [1024, lo) and (hi, 65535]
	if free <= 0 {
		return kernelPickedPort()
	}
	var err error
	for range 100 {
		port := 1024 + rand.IntN(free)
		if port >= lo {
			port += hi - lo + 1
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port outside the ephemeral range %d-%d: %v", lo, hi, err)
}

func kernelPickedPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// place is where an instance runs: its port (0 if none) and its index in
// the serving set.
type place struct{ port, index int }

// expand replaces {supervise.port} and {supervise.instance} in an argument
// or an env value.
func (at place) expand(arg string) string {
	if at.port != 0 {
		arg = strings.ReplaceAll(arg, "{supervise.port}", strconv.Itoa(at.port))
	}
	return strings.ReplaceAll(arg, "{supervise.instance}", strconv.Itoa(at.index))
}

// fixedPort is the port a new process of this definition gets: the
// configured number, a free one for auto, or 0.
func (p *Process) fixedPort() (int, error) {
	switch p.Port {
	case "":
		return 0, nil
	case "auto":
		return freeLoopbackPort()
	}
	return strconv.Atoi(p.Port)
}

// dialOf is the unix socket an HTTP check r of the process's own socket
// dials, else "".
func (p *Process) dialOf(r *ReadyProbe) string {
	if p.Socket == "" || !p.sockAddr.IsUnixNetwork() || r.HTTP == nil ||
		(*r.HTTP != "" && !strings.HasPrefix(*r.HTTP, "/")) {
		return ""
	}
	return p.sockAddr.Host
}

// argsFor is the command with {supervise.port}, {supervise.instance} and
// {supervise.fd} replaced.
func (p *Process) argsFor(at place) []string {
	args := make([]string, len(p.args))
	for i, a := range p.args {
		a = at.expand(a)
		if p.Socket != "" {
			a = strings.ReplaceAll(a, "{supervise.fd}", strconv.Itoa(socketFD))
		}
		args[i] = a
	}
	return args
}
