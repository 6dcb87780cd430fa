//go:build !unix

package supervise

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// Windows has no process groups to signal and no POSIX signals to send to
// another process: the stop "signal" is validated like on Unix and then
// carried out as TerminateProcess, of the direct child only.

var signalNames = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGKILL": syscall.SIGKILL, "SIGTERM": syscall.SIGTERM, "SIGABRT": syscall.SIGABRT,
	"SIGALRM": syscall.SIGALRM, "SIGPIPE": syscall.SIGPIPE,
}

func parseSignal(name string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(name); err == nil {
		for _, s := range signalNames {
			if int(s) == n {
				return s, nil
			}
		}
		return 0, fmt.Errorf("no such signal number")
	}
	upper := strings.ToUpper(name)
	if !strings.HasPrefix(upper, "SIG") {
		upper = "SIG" + upper
	}
	if s, ok := signalNames[upper]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal; use a name such as SIGTERM or SIGINT")
}

// processes maps a "group" (the child's PID) to the child, the only member
// we can reach on this platform.
func signalGroup(pgid int, sig syscall.Signal) error {
	proc, err := os.FindProcess(pgid)
	if err != nil {
		return err
	}
	return proc.Kill()
}

// No process groups: only the child, reaped at once.
func othersInGroup(pgid int) bool    { return false }
func waitLeader(cmd *exec.Cmd) error { return cmd.Wait() }
func reap(cmd *exec.Cmd) error       { return nil }

func exitStatus(ps *os.ProcessState) (int, string) {
	return ps.ExitCode(), "exit code " + strconv.Itoa(ps.ExitCode())
}

// command builds the child's exec.Cmd; there is no shim, so no exec notice.
func (in *instance) command(def *Process, at place) (*exec.Cmd, *os.File, error) {
	return newCommand(def, def.path, def.argsFor(at), at), nil, nil
}

// requestExit makes Caddy exit. Windows gives no way to start Caddy's own
// graceful exit from inside: the processes are stopped (without a drain)
// and the process exits.
func requestExit() {
	go func() {
		waitForChildren(context.Background())
		_, code, _ := endedStatus()
		os.Exit(code)
	}()
}

// identity is not supported on this platform.
type identity struct{ name, home string }

func (*identity) otherUser() bool          { return false }
func (*identity) mayRead(fs.FileInfo) bool { return true }
func (*identity) mayReach(string) bool     { return true }

// heldPath: Windows has no Unix modes to check (ACLs decide).
func heldPath(path string, _ ...int) bool { return true }

// writeOnlyAlready: a console is handed over as it is.
func writeOnlyAlready(*os.File) bool { return true }

func lookupIdentity(user, group string) (*identity, error) {
	if user != "" {
		return nil, fmt.Errorf("user %q: running a process as another user is not supported on Windows", user)
	}
	return nil, fmt.Errorf("group %q: running a process as another group is not supported on Windows", group)
}

func startError(def *Process, err error) error { return err }

// checkPrivileges: no other users to run processes as on this platform.
func (p *Process) checkPrivileges() error { return nil }

// There is no keeper on this platform (no process groups).
func keepGroup(pgid int, logger *zap.Logger) {}
func releaseGroup(pgid int)                  {}

// executableMode reports whether a file with this mode can be executed:
// Windows has no execute bit.
func executableMode(m os.FileMode) bool { return true }

// ephemeralPorts: the range is not read on this platform; `port auto` lets
// the kernel pick a free port.
func ephemeralPorts() (lo, hi int, ok bool) { return 0, 0, false }

// openRegular opens the file name for reading if it is a regular file.
func openRegular(name string) (*os.File, fs.FileInfo, error) {
	return regularOnly(os.Open(name))
}

// openWriteOnly: a console is handed over as it is (Windows has no
// controlling terminals a child could take).
func openWriteOnly(f *os.File) (*os.File, error) { return f, nil }

// openQuietly: Windows has no FIFOs that an open could wait on, nor
// controlling terminals.
const openQuietly = 0

// osName names the platform in messages.
const osName = "windows"

// socketsSupported: no socket handover on this platform.
const socketsSupported = false

func setBlocking(f *os.File) error { return nil }

// isPrivateDir reports whether path is a directory: Windows has no Unix
// modes to check (the directory's ACL decides who may enter it).
func isPrivateDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// No socket handover on this platform: never called.
func bindPrivately(tmp, path string, mode fs.FileMode) (net.Listener, fs.FileInfo, error) {
	return nil, nil, fmt.Errorf("unix sockets for processes are not supported on %s", osName)
}

func chmodSocketFile(path string, node fs.FileInfo, mode fs.FileMode) error { return nil }

// listeningAddrs: there is no /proc to read listening sockets from.
func listeningAddrs(pgid int) (addrs []string, known bool) { return nil, false }

// groupMemory: not measured on this platform.
func groupMemory(pgid int) int64 { return 0 }

// ownedPath reports whether path is a directory (Windows: its ACL decides
// who may change it).
func ownedPath(path string, _ ...int) bool { return isPrivateDir(path) }

func (p *Process) uidOf() int { return 0 }

// fileID: no inode here; size and modification time tell versions apart.
func fileID(fi os.FileInfo) ([4]int64, bool) { return [4]int64{}, false }

// usableCPUs is what `instances auto` means: the CPUs this process may use.
func usableCPUs() int { return runtime.NumCPU() }

// lockDir: no flock here; an open handle stands for the lock.
func lockDir(dir string) (*os.File, error) { return os.Open(dir) }
