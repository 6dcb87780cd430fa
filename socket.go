package supervise

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
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
// unix socket's file removed) once no config uses it and no instance has
// it, or when Caddy exits after its processes.
//
// Its users: a config while it starts (App.Start opens its sockets before
// anything starts), each service whose configs name it, each instance
// that has it. A socket that only configs and services use may be closed
// to make room for a new one on the same port or path (a reload that moves
// the socket, or from `port 3000` to `socket :3000`): the old instance has
// stopped first (its replacement is in place), and it is opened again if
// the old definition comes back.

// socketFD is the descriptor an instance gets its socket as.
const socketFD = 3

// heldSocket is one listening socket Caddy holds.
type heldSocket struct {
	file     *os.File    // the listening socket, in blocking mode; Caddy never accepts on it
	path     string      // a unix socket's path, "" for TCP
	endpoint string      // what it binds (Process.endpoint)
	node     fs.FileInfo // the unix socket's file as created, to remove only that one
	mode     fs.FileMode // the unix socket's file's mode
	users    map[any]bool
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
	address, mode, err := splitSocketMode(p.Socket)
	if err != nil {
		return fmt.Errorf("socket %q: %v", p.Socket, err)
	}
	addr, err := caddy.ParseNetworkAddress(address)
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
		if !heldPath(filepath.Dir(path), p.uidOf()) {
			// Caddy dials the path: whoever can put a socket of their own
			// there gets the app's requests (and answers them)
			return fmt.Errorf("socket %q: users other than Caddy's, the process's and root can change the directory %s (or one above it): one of them could put a socket of its own at the path, and Caddy would send the app's requests to it; use a directory only they can change (/run/app/, the app's tmp/)", p.Socket, filepath.Dir(path))
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("socket %q: %s exists and is not a socket", p.Socket, path)
		}
	case addr.Network == "tcp" || addr.Network == "tcp4" || addr.Network == "tcp6":
		if addr.PortRangeSize() != 1 {
			return fmt.Errorf("socket %q: one port, not a range", p.Socket)
		}
		if addr.StartPort == 0 && (strings.HasPrefix(p.Socket, "/") || strings.HasPrefix(p.Socket, ".")) {
			return fmt.Errorf("socket %q: a unix socket's path is written unix/PATH: unix/%s", p.Socket, p.Socket)
		}
		if addr.StartPort == 0 {
			return fmt.Errorf("socket %q: a port is needed", p.Socket)
		}
		if mode != 0 {
			return fmt.Errorf("socket %q: a mode (|%o) is for unix sockets only", p.Socket, mode)
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
	if mode == 0 {
		mode = defaultSocketMode
	}
	p.sockAddr, p.sockMode = addr, mode
	return nil
}

// defaultSocketMode is a unix socket's mode unless the address says
// otherwise: only Caddy's user, which dials it, can connect.
const defaultSocketMode fs.FileMode = 0o600

// splitSocketMode splits Caddy's `|MODE` suffix off a unix socket's
// address (`unix//run/app.sock|0660`): the octal permission bits the
// socket's file gets. Caddy reads this suffix for its own listeners; its
// parser is internal, so this is written here.
func splitSocketMode(s string) (string, fs.FileMode, error) {
	i := strings.LastIndexByte(s, '|')
	if i < 0 {
		return s, 0, nil
	}
	bits := s[i+1:]
	n, err := strconv.ParseUint(bits, 8, 32)
	if err != nil || len(bits) < 3 || len(bits) > 4 || n == 0 || n > 0o777 {
		return "", 0, fmt.Errorf("mode %q: octal permission bits such as 0600 or 0660", bits)
	}
	if n&0o200 == 0 {
		return "", 0, fmt.Errorf("mode %q: the owner needs write permission to connect", bits)
	}
	return s[:i], fs.FileMode(n), nil
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

// holdSockets opens, or keeps, the sockets of a's processes for a, before
// anything starts. If one cannot be opened, a holds none and the error
// names the process, the option and the value. An address that a process
// of the same name still binds is left to that process's replacement, which
// stops the old instance first.
func (a *App) holdSockets() error {
	for _, def := range a.Processes {
		if def.Socket == "" {
			continue
		}
		err := useSocket(a, def)
		if err != nil && errors.Is(err, syscall.EADDRINUSE) && a.boundByOwnName(def) {
			continue
		}
		if err != nil {
			releaseSockets(a)
			return fmt.Errorf("process %q: socket %q: %v", def.Name, def.Socket, err)
		}
	}
	return nil
}

// boundByOwnName reports whether the process of def's name binds what def's
// socket needs: its port, or its socket's address.
func (a *App) boundByOwnName(def *Process) bool {
	s := serviceNamed(def.Name)
	if s == nil {
		return false
	}
	st := s.fresh().status
	return def.takes(st.Port, st.Socket)
}

// useSocket makes user a user of def's socket, opening it if it is not
// open. A socket that conflicts with it (same port, same path) and that no
// instance has is closed first.
func useSocket(user any, def *Process) error {
	sockets.Lock()
	defer sockets.Unlock()
	key := def.socketKey()
	if s := sockets.held[key]; s != nil {
		if err := s.setMode(def.sockMode); err != nil {
			return err
		}
		s.users[user] = true
		return nil
	}
	endpoint := def.endpoint(0)
	clearEndpoint(endpoint)
	s, err := openSocket(def.sockAddr, def.sockMode)
	if err != nil {
		return err
	}
	s.endpoint, s.mode, s.users = endpoint, def.sockMode, map[any]bool{user: true}
	sockets.held[key] = s
	return nil
}

// clearEndpoint closes the held sockets that bind endpoint and that no
// instance has, so that something else can bind it. The caller holds the
// lock.
func clearEndpoint(endpoint string) {
	if endpoint == "" {
		return
	}
	for key, s := range sockets.held {
		if s.endpoint != endpoint {
			continue
		}
		inUse := false
		for u := range s.users {
			_, inUse = u.(*instance)
			if inUse {
				break
			}
		}
		if !inUse {
			s.close()
			delete(sockets.held, key)
		}
	}
}

// takeSocket gives a new instance its socket (opening it if a change of
// address closed it), or, for an instance on a fixed port, closes a held
// socket on that port that no instance has.
func takeSocket(in *instance) error {
	if in.def.Socket == "" {
		sockets.Lock()
		defer sockets.Unlock()
		if in.def.Port != "" && in.def.Port != "auto" {
			clearEndpoint(in.def.endpoint(0))
		}
		return nil
	}
	return useSocket(in, in.def)
}

// dropSocket ends an instance's use of its socket.
func dropSocket(in *instance) { dropUser(in) }

// holdServiceSockets makes service s a user of the sockets its configs
// name, and of no other: a socket stays open while a config has it, also
// when no instance runs (a restart back-off, a process that ended).
func holdServiceSockets(s *service) {
	keys := make(map[string]bool)
	for _, h := range s.holders {
		if h.def.Socket != "" {
			keys[h.def.socketKey()] = true
		}
	}
	sockets.Lock()
	defer sockets.Unlock()
	for key, hs := range sockets.held {
		if keys[key] {
			hs.users[s] = true
		} else if hs.users[s] {
			delete(hs.users, s)
			closeUnused(key, hs)
		}
	}
}

// dropUser ends user's use of every socket; those nobody uses close.
func dropUser(user any) {
	sockets.Lock()
	defer sockets.Unlock()
	for key, s := range sockets.held {
		if s.users[user] {
			delete(s.users, user)
			closeUnused(key, s)
		}
	}
}

// closeUnused closes a socket nobody uses. The caller holds the lock.
func closeUnused(key string, s *heldSocket) {
	if len(s.users) == 0 {
		s.close()
		delete(sockets.held, key)
	}
}

// openSocket opens a listening socket. A unix socket's file gets its mode
// before it appears at its path (see bindUnix); a socket file that nothing
// listens on any more (left by a Caddy that was killed) is replaced; any
// other file at the path is an error, never removed.
func openSocket(addr caddy.NetworkAddress, mode fs.FileMode) (*heldSocket, error) {
	var ln net.Listener
	var err error
	s := &heldSocket{}
	if addr.IsUnixNetwork() {
		ln, s.node, err = bindUnix(addr.Host, mode)
		s.path = addr.Host
	} else {
		ln, err = net.Listen(addr.Network, addr.JoinHostPort(0))
	}
	if err != nil {
		return nil, err
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the file stays while Caddy holds the socket
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

// bindUnix binds a unix socket at path with the given mode. The socket is
// bound in a new private directory beside path, given its mode there, and
// then linked to path, which fails if anything is there: no moment with the
// umask's mode, and nothing at path is ever replaced (see bindPrivately). What is at path may
// only be removed if it is a socket that refuses connections (stale), and
// is checked again right before.
func bindUnix(path string, mode fs.FileMode) (net.Listener, fs.FileInfo, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := removeStaleSocket(path); err != nil {
			return nil, nil, err
		}
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".caddy-supervise-")
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(tmp)
	ln, node, err := bindPrivately(tmp, path, mode)
	if err != nil && errors.Is(err, fs.ErrExist) {
		return nil, nil, fmt.Errorf("%s appeared while the socket was being made: %w", path, syscall.EADDRINUSE)
	}
	if err != nil {
		return nil, nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // its name in tmp is gone; path stays
	return ln, node, nil
}

// removeStaleSocket removes the socket file at path if nothing listens on
// it; it is an error if something does.
func removeStaleSocket(path string) error {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another process listens on it: %w", path, syscall.EADDRINUSE)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: %v", path, err)
	}
	// stale: a socket file nobody listens on; still a socket right now?
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s changed while it was checked", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the stale socket file %s: %v", path, err)
	}
	return nil
}

// setMode gives a unix socket's file the mode a new config asks for.
func (s *heldSocket) setMode(mode fs.FileMode) error {
	if s.path == "" || mode == s.mode {
		return nil
	}
	if err := chmodSocketFile(s.path, s.node, mode); err != nil {
		return err
	}
	s.mode = mode
	return nil
}

// close closes the socket and removes its file if it is still the one
// Caddy created.
func (s *heldSocket) close() {
	s.file.Close()
	if s.path != "" {
		if fi, err := os.Lstat(s.path); err == nil && s.node != nil && fi.Mode().Type() == fs.ModeSocket && os.SameFile(fi, s.node) {
			os.Remove(s.path)
		}
	}
}

// releaseSockets ends a config's own use of its sockets (its services hold
// them once it started).
func releaseSockets(a *App) { dropUser(a) }

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
