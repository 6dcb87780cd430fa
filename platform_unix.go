//go:build unix

package supervise

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/caddy-supervise/supervise/internal/shim"
	"golang.org/x/sys/unix"
)

// parseSignal accepts a signal name with or without the SIG prefix, in any
// case ("SIGTERM", "term", "USR1"), or its number.
func parseSignal(name string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(name); err == nil {
		if unix.SignalName(syscall.Signal(n)) == "" {
			return 0, fmt.Errorf("no such signal number on %s", osName)
		}
		return syscall.Signal(n), nil
	}
	upper := strings.ToUpper(name)
	if !strings.HasPrefix(upper, "SIG") {
		upper = "SIG" + upper
	}
	sig := unix.SignalNum(upper)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal; use a name such as SIGTERM, SIGINT, SIGQUIT, SIGUSR1")
	}
	return sig, nil
}

// signalGroup sends sig to every process of the group pgid. It refuses
// pgid <= 1: kill(0) would signal Caddy's own group, kill(-1) every process.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return fmt.Errorf("refusing to signal process group %d", pgid)
	}
	return syscall.Kill(-pgid, sig)
}

// exitStatus returns the status a shell would report: the exit code, or
// 128+N for a child killed by signal N; and a description for the log.
func exitStatus(ps *os.ProcessState) (int, string) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), "killed by " + unix.SignalName(ws.Signal())
	}
	return ps.ExitCode(), "exit code " + strconv.Itoa(ps.ExitCode())
}

// command builds the child's exec.Cmd. The child is started through this
// binary (see internal/shim), which resets signal dispositions and the
// signal mask inherited from Caddy, drops every capability, and then execs
// the program. It gets a session of its own, so that signals reach
// wrappers' children and a terminal's Ctrl-C does not reach it before the
// drain. The returned file is the read end of the exec notice (see
// shim.Env and awaitExec).
//
// The shim itself runs with nothing in its environment but its marker: it
// is Caddy's own binary, and what the program's environment holds
// (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, GCONV_PATH…, from `env` or an
// `env_file` the app's user may write) would otherwise run code in it
// before it drops the capabilities Caddy holds. The program's environment
// reaches the shim on a descriptor, which it reads, closes, and hands to
// the exec.
func (in *instance) command(def *Process, at place) (*exec.Cmd, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	fail := func(files []*os.File, err error) (*exec.Cmd, *os.File, error) {
		for _, f := range append(files, r, w) {
			f.Close()
		}
		return nil, nil, err
	}
	args := append([]string{shim.Arg0, def.path}, def.argsFor(at)...)
	// ExtraFiles[i] is descriptor 3+i: the socket first (the protocol wants
	// it at 3), then the program's environment, then the exec notice
	var env []string
	var extra []*os.File
	if def.Socket != "" {
		sock, err := socketFile(def)
		if err == nil {
			sock, err = dupCloseOnExec(sock)
		}
		if err != nil {
			return fail(nil, err)
		}
		extra = append(extra, sock)
		env = append(env, "LISTEN_FDS=1", "LISTEN_FDNAMES="+def.Name)
	}
	cmd := newCommand(def, shimPath(), args, at, env...)
	envFile, err := environmentFile(cmd.Env)
	if err != nil {
		return fail(extra, fmt.Errorf("passing the environment: %v", err))
	}
	extra = append(extra, envFile, w)
	notice := fmt.Sprintf("%s=%d,%d,%s", shim.Env, os.Getpid(), 2+len(extra), shim.EnvFD)
	if def.Socket != "" {
		notice += "," + shim.ListenPID
	}
	if def.id != nil {
		notice += "," + shim.NoNewPrivs
	}
	cmd.Env = []string{notice}
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = sysProcAttr()
	if def.id != nil {
		cmd.SysProcAttr.Credential = def.id.credential()
	}
	return cmd, r, nil
}

// environmentFile is a descriptor from which the shim reads env, each
// variable followed by a NUL byte, to its end: a pipe that a goroutine
// fills (and closes), so that an environment larger than a pipe's buffer
// does not block the start.
func environmentFile(env []string) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, kv := range lastWins(env) {
		b.WriteString(kv)
		b.WriteByte(0)
	}
	go func() {
		_, _ = w.WriteString(b.String()) // (a shim that failed to start: EPIPE)
		w.Close()
	}()
	return r, nil
}

// writeOnlyAlready reports whether f was opened for writing only: a child
// that gets it cannot read through it.
func writeOnlyAlready(f *os.File) bool {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_ACCMODE == unix.O_WRONLY
}

// lastWins keeps, of the variables env sets more than once, the last
// value, as os/exec does with Cmd.Env (the module appends what it sets,
// PORT say, after what Caddy's environment holds).
func lastWins(env []string) []string {
	seen := make(map[string]bool, len(env))
	out := make([]string, 0, len(env))
	for i := len(env) - 1; i >= 0; i-- {
		k, _, _ := strings.Cut(env[i], "=")
		if !seen[k] {
			seen[k] = true
			out = append(out, env[i])
		}
	}
	slices.Reverse(out)
	return out
}

// requestExit makes Caddy exit gracefully, exactly as on SIGTERM.
func requestExit() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
}

// identity is the user and groups a child runs as.
type identity struct {
	uid, gid   uint32
	groups     []uint32
	name, home string
}

// lookupIdentity resolves `user` and `group` (names or numbers) in the user
// and group databases.
func lookupIdentity(userSpec, groupSpec string) (*identity, error) {
	id := &identity{uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
	if userSpec != "" {
		u, err := lookupUser(userSpec)
		switch {
		case err == nil:
			uid, _ := strconv.ParseUint(u.Uid, 10, 32)
			gid, _ := strconv.ParseUint(u.Gid, 10, 32)
			id.uid, id.gid, id.name, id.home = uint32(uid), uint32(gid), u.Username, u.HomeDir
			gids, err := u.GroupIds()
			if err != nil {
				return nil, fmt.Errorf("user %q: listing its groups: %v", userSpec, err)
			}
			for _, g := range gids {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					id.groups = append(id.groups, uint32(n))
				}
			}
		case isNumber(userSpec) && groupSpec != "":
			uid, _ := strconv.ParseUint(userSpec, 10, 32)
			id.uid, id.name, id.home = uint32(uid), userSpec, "/"
		case isNumber(userSpec):
			return nil, fmt.Errorf("user %q: no such user in the user database; with a bare UID, set group too", userSpec)
		default:
			return nil, fmt.Errorf("user %q: %v", userSpec, err)
		}
	}
	if groupSpec != "" {
		g, err := user.LookupGroup(groupSpec)
		if err != nil && isNumber(groupSpec) {
			g, err = user.LookupGroupId(groupSpec)
			if err != nil { // a bare GID is fine
				g, err = &user.Group{Gid: groupSpec}, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("group %q: %v", groupSpec, err)
		}
		gid, _ := strconv.ParseUint(g.Gid, 10, 32)
		id.gid = uint32(gid)
	}
	if len(id.groups) == 0 {
		id.groups = []uint32{id.gid} // never keep Caddy's supplementary groups
	}
	return id, nil
}

func lookupUser(spec string) (*user.User, error) {
	if isNumber(spec) {
		if u, err := user.LookupId(spec); err == nil {
			return u, nil
		}
	}
	return user.Lookup(spec)
}

func isNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// startError explains a failure to start the process.
func startError(def *Process, err error) error {
	if def.id != nil && errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("%v: Caddy (uid %d) cannot switch to %s: it must run as root or with CAP_SETUID and CAP_SETGID", err, os.Geteuid(), def.identityName())
	}
	if def.id != nil && errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%v: the child starts through Caddy's own binary (%s), which %s must be able to execute, and dir must be accessible to it", err, shimPath(), def.identityName())
	}
	return err
}

// executableMode reports whether a file with this mode can be executed.
func executableMode(m os.FileMode) bool { return m&0o111 != 0 }

// openQuietly opens a FIFO without waiting for a writer, and a terminal
// without it becoming Caddy's (a file that is not regular is refused once
// it is open).
const openQuietly = syscall.O_NONBLOCK | syscall.O_NOCTTY

// socketsSupported: a process can be handed a listening socket (`socket`).
const socketsSupported = true

// setBlocking puts a held socket into blocking mode, as the
// socket-activation protocol hands sockets over (a server may expect a
// blocking accept); Caddy itself never accepts on it.
func setBlocking(f *os.File) error {
	return unix.SetNonblock(int(f.Fd()), false)
}

// dupCloseOnExec duplicates f for one child: the child gets it through
// ExtraFiles, and the parent's copy is closed after the start.
func dupCloseOnExec(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// fileID is the device, inode and change time of a file.
func fileID(fi os.FileInfo) ([4]int64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return [4]int64{}, false
	}
	sec, nsec := statCtime(st)
	return [4]int64{int64(st.Dev), int64(st.Ino), sec, nsec}, true
}

// lockDir takes an exclusive lock (flock) on a directory, without waiting,
// and holds it until the returned file is closed or the process ends,
// however it ends: a directory that `caddy supervise` uses for its admin
// socket is locked for as long as it runs, so that another start's sweep
// (removeStaleAdminDirs) tells a directory in use from one a forced exit
// left behind.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir) // (close-on-exec: no child holds the lock)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
