package supervise

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/caddyserver/caddy/v2"
)

// Listening sockets that Caddy holds for a process (`socket`): Caddy opens
// the socket when a config that uses it starts, hands it to every instance
// of the process as descriptor 3 (the systemd socket-activation protocol),
// and keeps it open across restarts, crashes and reloads that keep the
// address, so that connections that arrive while no instance accepts wait
// in the kernel's accept queue instead of being refused. It is closed (a
// unix socket's file removed) once no config uses it, or when Caddy exits
// after its processes.

// socketFD is the descriptor an instance gets its socket as.
const socketFD = 3

// heldSocket is one listening socket Caddy holds.
type heldSocket struct {
	file  *os.File    // the listening socket, in blocking mode; Caddy never accepts on it
	path  string      // a unix socket's path, "" for TCP
	node  fs.FileInfo // the unix socket's file as created, to remove only that one
	users []*App      // the configs that use it
}

// sockets are the held sockets by address (the key socketKey).
var sockets = struct {
	sync.Mutex
	held map[string]*heldSocket
}{held: make(map[string]*heldSocket)}

// provisionSocket checks `socket` and resolves its address. It opens
// nothing: `caddy validate` runs it. What can be known before the socket is
// opened is an error here: an address that does not parse, a range, another
// network, a unix path whose directory is missing or that is something other
// than a socket, `socket` together with `port` or with a TCP probe.
func (p *Process) provisionSocket() error {
	for _, a := range p.Command {
		if strings.Contains(a, "{supervise.fd}") && p.Socket == "" {
			return fmt.Errorf("command %q: {supervise.fd} needs socket", a)
		}
	}
	if p.Socket == "" {
		return nil
	}
	if !socketsSupported {
		return fmt.Errorf("socket %q: handing a listening socket to a process is not supported on %s", p.Socket, osName)
	}
	if p.Port != "" {
		return fmt.Errorf("socket %q: socket and port %q are exclusive: the process gets its socket, not a port", p.Socket, p.Port)
	}
	addr, err := caddy.ParseNetworkAddress(p.Socket)
	if err != nil {
		return fmt.Errorf("socket %q: %v", p.Socket, err)
	}
	switch {
	case addr.IsUnixNetwork():
		if addr.Network != "unix" {
			return fmt.Errorf("socket %q: network %s: a stream socket is needed: unix/PATH", p.Socket, addr.Network)
		}
		path := addr.Host
		if len(path) >= 108 {
			return fmt.Errorf("socket %q: the path is %d bytes long; a unix socket's path is at most 107", p.Socket, len(path))
		}
		if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
			return fmt.Errorf("socket %q: the directory %s does not exist", p.Socket, filepath.Dir(path))
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("socket %q: %s exists and is not a socket", p.Socket, path)
		}
	case addr.Network == "tcp" || addr.Network == "tcp4" || addr.Network == "tcp6":
		if addr.PortRangeSize() != 1 {
			return fmt.Errorf("socket %q: one port, not a range", p.Socket)
		}
		if addr.StartPort == 0 {
			return fmt.Errorf("socket %q: a port is needed", p.Socket)
		}
	default:
		return fmt.Errorf("socket %q: network %s: must be TCP (HOST:PORT) or unix/PATH", p.Socket, addr.Network)
	}
	if p.Ready != nil && p.Ready.TCP != nil && *p.Ready.TCP == "" {
		return fmt.Errorf("ready tcp: a TCP probe of the socket Caddy holds always connects (the kernel queues the connection): use ready http")
	}
	for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if _, set := p.vars[k]; set {
			return fmt.Errorf("socket %q: %s is also set by env or env_file; with socket, Caddy sets it", p.Socket, k)
		}
	}
	p.sockAddr = addr
	return nil
}

// socketKey identifies the socket of a definition across configs.
func (p *Process) socketKey() string { return p.sockAddr.String() }

// socketDial is where the process serves through its socket, as Caddy's
// reverse_proxy dials it: HOST:PORT (the loopback for a wildcard host), or
// unix//PATH.
func (p *Process) socketDial() string {
	if p.sockAddr.IsUnixNetwork() {
		return "unix/" + p.sockAddr.Host
	}
	host := p.sockAddr.Host
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.FormatUint(uint64(p.sockAddr.StartPort), 10))
}

// holdSockets opens, or keeps, the sockets of a's processes for a. If one
// cannot be opened, a holds none and the error names the process, the
// option and the value: nothing has started yet.
func (a *App) holdSockets() error {
	for _, def := range a.Processes {
		if def.Socket == "" {
			continue
		}
		if err := holdSocket(a, def); err != nil {
			releaseSockets(a)
			return fmt.Errorf("process %q: socket %q: %v", def.Name, def.Socket, err)
		}
	}
	return nil
}

func holdSocket(a *App, def *Process) error {
	sockets.Lock()
	defer sockets.Unlock()
	key := def.socketKey()
	if s := sockets.held[key]; s != nil {
		s.users = append(s.users, a)
		return nil
	}
	s, err := openSocket(def.sockAddr)
	if err != nil {
		return err
	}
	s.users = []*App{a}
	sockets.held[key] = s
	return nil
}

// openSocket opens a listening socket. A unix socket file that nothing
// listens on any more (left by a Caddy that was killed) is replaced.
func openSocket(addr caddy.NetworkAddress) (*heldSocket, error) {
	network, address := addr.Network, addr.JoinHostPort(0)
	if addr.IsUnixNetwork() {
		address = addr.Host
	}
	ln, err := net.Listen(network, address)
	if err != nil && addr.IsUnixNetwork() && errors.Is(err, syscall.EADDRINUSE) {
		if c, derr := net.Dial("unix", address); derr == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process listens on it", address)
		} else if errors.Is(derr, syscall.ECONNREFUSED) {
			// stale: a socket file nobody listens on
			if rerr := os.Remove(address); rerr != nil {
				return nil, fmt.Errorf("removing the stale socket file: %v", rerr)
			}
			ln, err = net.Listen(network, address)
		}
	}
	if err != nil {
		return nil, err
	}
	s := &heldSocket{}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the file stays while Caddy holds the socket
		s.path = address
		s.node, _ = os.Lstat(address)
	}
	s.file, err = ln.(interface{ File() (*os.File, error) }).File()
	ln.Close() // s.file is a duplicate: the socket stays open
	if err != nil {
		return nil, err
	}
	if err := setBlocking(s.file); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// close closes the socket and removes its file if it is still the one
// Caddy created.
func (s *heldSocket) close() {
	s.file.Close()
	if s.path != "" {
		if fi, err := os.Lstat(s.path); err == nil && s.node != nil && os.SameFile(fi, s.node) {
			os.Remove(s.path)
		}
	}
}

// releaseSockets gives up a's claim on its sockets; those no config uses
// any more are closed.
func releaseSockets(a *App) {
	sockets.Lock()
	defer sockets.Unlock()
	for key, s := range sockets.held {
		s.users = slices.DeleteFunc(s.users, func(u *App) bool { return u == a })
		if len(s.users) == 0 {
			s.close()
			delete(sockets.held, key)
		}
	}
}

// closeSockets closes every held socket: at Caddy's exit, once every
// process is gone.
func closeSockets() {
	sockets.Lock()
	defer sockets.Unlock()
	for key, s := range sockets.held {
		s.close()
		delete(sockets.held, key)
	}
}

// socketFile is the held socket of def, for a new instance.
func socketFile(def *Process) (*os.File, error) {
	sockets.Lock()
	defer sockets.Unlock()
	s := sockets.held[def.socketKey()]
	if s == nil {
		return nil, fmt.Errorf("socket %q: not open", def.Socket)
	}
	return s.file, nil
}
