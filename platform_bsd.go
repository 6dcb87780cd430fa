//go:build unix && !linux

package supervise

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

const osName = "this system"

// shimPath is the running Caddy binary.
func shimPath() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return os.Args[0]
}

// sysProcAttr puts the child in a session of its own (setsid: also a
// process group of its own) with no controlling terminal. There is no
// parent-death signal outside Linux: a child outlives a Caddy that is
// killed with SIGKILL.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true}
}

// openRegular opens the file name for reading if it is a regular file.
// There is no O_PATH here: it is opened non-blocking (a FIFO does not wait
// for a writer) and without becoming Caddy's terminal, then checked; a
// device's driver may see the open.
func openRegular(name string) (*os.File, fs.FileInfo, error) {
	return regularOnly(os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0))
}

// openWriteOnly: there is no portable way here to open a terminal anew
// from a descriptor (/dev/fd duplicates it, read access included): the
// app's output is relayed instead.
func openWriteOnly(*os.File) (*os.File, error) {
	return nil, errors.New("cannot open the terminal again write-only")
}

// waitLeader waits for the child and reaps it: this platform has no
// waitid(WNOWAIT) in Go. The group's ID stays reserved while a member is
// left; once the last one exits, it could in theory be reused before the
// supervisor notices, a window Linux does not have.
func waitLeader(cmd *exec.Cmd) error { return cmd.Wait() }

// reap does nothing: waitLeader reaped the child.
func reap(cmd *exec.Cmd) error { return nil }

// othersInGroup reports whether any process is left in the group (the
// leader was reaped).
func othersInGroup(pgid int) bool {
	if pgid <= 1 {
		return false
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ephemeralPorts: the range is not read on this platform; `port auto` lets
// the kernel pick a free port.
func ephemeralPorts() (lo, hi int, ok bool) { return 0, 0, false }

// bindPrivately binds a unix socket in tmp, a new private directory beside
// path, gives it mode and links it to path (which fails if anything is
// there). Outside Linux the directory is used by its path.
func bindPrivately(tmp, path string, mode fs.FileMode) (net.Listener, fs.FileInfo, error) {
	bound := filepath.Join(tmp, "s")
	if len(bound) >= 104 {
		// the temporary name does not fit a socket address: bind in place
		// and set the mode at once (the umask's mode holds for that moment)
		bound = path
	} else {
		defer os.Remove(bound)
	}
	ln, err := net.Listen("unix", bound)
	if err != nil {
		return nil, nil, err
	}
	node, err := os.Lstat(bound)
	if err == nil {
		err = unix.Fchmodat(unix.AT_FDCWD, bound, uint32(mode), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil && bound != path {
		err = os.Link(bound, path)
	}
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	return ln, node, nil
}

// chmodSocketFile gives the socket file at path mode, if it is still node;
// a symlink put in its place is not followed.
func chmodSocketFile(path string, node fs.FileInfo, mode fs.FileMode) error {
	if fi, err := os.Lstat(path); err != nil || node == nil || !os.SameFile(fi, node) {
		return fmt.Errorf("%s is no longer the socket Caddy made", path)
	}
	return unix.Fchmodat(unix.AT_FDCWD, path, uint32(mode), unix.AT_SYMLINK_NOFOLLOW)
}

// listeningAddrs: there is no /proc to read listening sockets from.
func listeningAddrs(pgid int) (addrs []string, known bool) { return nil, false }

// groupMemory: not measured on this platform.
func groupMemory(pgid int) int64 { return 0 }

// statCtime: not read here (its field's name differs between these
// systems); size, modification time and inode tell versions apart.
func statCtime(st *syscall.Stat_t) (sec, nsec int64) { return 0, 0 }

// usableCPUs is what `instances auto` means: the CPUs this process may use.
func usableCPUs() int { return runtime.NumCPU() }
