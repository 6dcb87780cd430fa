//go:build unix

// Package shim is the first code a supervised child runs, and the keeper
// (see KeeperArg0). The supervise app
// starts each child as Caddy's own binary with Env set; this package's init
// sees it, restores what a process supervisor must hand a program and Go's
// os/exec cannot (default signal dispositions; the parent-death signal
// after a capability-bearing exec), and replaces itself with the program.
//
// It imports nothing but the standard library and golang.org/x/sys/unix,
// so that Go's initialization order (packages sorted by import path, each
// after its imports) runs this init before Caddy's and its modules'
// package initializers: the child pays for the Go runtime and those
// packages' init only, not for all of Caddy's.
package shim

import (
	"errors"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Env marks a shim invocation; its value is the PID of the Caddy process
// that started it, then, for a child, a comma and the number of the
// exec-notification descriptor: the write end of a pipe that the shim marks
// close-on-exec, so that Caddy reads EOF once the program replaced the shim
// (or the shim failed). Until then Caddy holds back the signals it sends:
// the shim's Go runtime would swallow those it handles (USR1, WINCH…).
// Arg0 is the shim's argv[0]; then come the program's path and its argv.
// Further comma-separated fields are flags: ListenPID asks the shim to set
// LISTEN_PID to the child's PID (the child got a listening socket);
// NoNewPrivs asks it to set the no_new_privs bit before the exec (the
// child runs as another user: no setuid binary or file capability may
// give it back a privilege Caddy had).
// EnvFD says that the program's environment (each variable followed by a
// NUL byte) is to be read from the descriptor just below the exec notice:
// the shim itself runs with its marker alone in its environment, so that
// nothing in the program's (LD_PRELOAD…) runs code in Caddy's binary
// before the shim has dropped its capabilities.
const (
	Env        = "CADDY_SUPERVISE_EXEC"
	Arg0       = "caddy-supervise-exec"
	ListenPID  = "listen"
	NoNewPrivs = "nnp"
	EnvFD      = "envfd"
)

func init() {
	v, ok := os.LookupEnv(Env)
	if !ok || len(os.Args) < 1 {
		return
	}
	if os.Args[0] == KeeperArg0 {
		runKeeper()
	}
	if len(os.Args) < 3 || os.Args[0] != Arg0 {
		return
	}
	fields := strings.Split(v, ",")
	parent, _ := strconv.Atoi(fields[0])
	notice := -1
	if len(fields) > 1 {
		if n, err := strconv.Atoi(fields[1]); err == nil && n > 2 {
			notice = n
			closeFrom(n)
		}
	}
	noNewPrivs, listenPID := false, false
	env := os.Environ()
	for _, flag := range fields[min(2, len(fields)):] {
		switch flag {
		case ListenPID:
			// the socket-activation protocol: the receiver checks that the
			// sockets are meant for it; only the child knows its PID, and
			// exec keeps it
			listenPID = true
		case NoNewPrivs:
			noNewPrivs = true
		case EnvFD:
			var err error
			if env, err = readEnvironment(notice - 1); err != nil {
				os.Stderr.WriteString("supervise: reading the program's environment: " + err.Error() + "\n")
				os.Exit(127)
			}
		}
	}
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, Env+"=") })
	if listenPID {
		env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	}
	path, argv := os.Args[1], os.Args[2:]
	runtime.LockOSThread() // prepare sets this thread's signal mask; exec keeps it
	if err := prepare(parent, noNewPrivs); err != nil {
		os.Stderr.WriteString("supervise: " + err.Error() + "\n")
		os.Exit(127)
	}
	err := syscall.Exec(path, argv, env)
	os.Stderr.WriteString("supervise: exec " + path + ": " + err.Error() + "\n")
	os.Exit(127)
}

// readEnvironment reads the program's environment from descriptor fd (see
// EnvFD) to its end, and closes it.
func readEnvironment(fd int) ([]string, error) {
	if fd < 3 {
		return nil, errors.New("no descriptor")
	}
	f := os.NewFile(uintptr(fd), "environment")
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	env := strings.Split(string(b), "\x00")
	return env[:len(env)-1], nil // (each ends with a NUL)
}

// closeFrom marks every descriptor from first on close-on-exec: the exec
// notice (the last descriptor Caddy passes), and whatever Caddy itself
// inherited from its parent without close-on-exec (a service manager's
// sockets, a shell's or a CI runner's descriptors), which os/exec passes on
// to every child. The program gets 0-2, and its socket if it has one.
func closeFrom(first int) {
	dir := "/proc/self/fd"
	if _, err := os.Stat(dir); err != nil {
		dir = "/dev/fd"
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		syscall.CloseOnExec(first) // the notice at least
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			syscall.CloseOnExec(fd)
		}
	}
}
