package supervise

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const osName = "linux"

// shimPath is the running Caddy binary, even if the file was replaced or
// deleted since Caddy started (a package upgrade).
func shimPath() string { return "/proc/self/exe" }

// sysProcAttr puts the child in a process group of its own and arms the
// parent-death signal: if Caddy dies without stopping it (SIGKILL, SIGQUIT,
// a second SIGINT), the kernel kills the child.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// shimPrepare runs in the shim just before it execs the program.
//
// Every signal gets its default disposition: Caddy ignores SIGPIPE, and a
// Caddy started in the background by a shell ignores SIGINT and SIGQUIT;
// ignored signals survive exec, and the program would inherit them. A zeroed
// kernel sigaction is SIG_DFL with no flags and an empty mask on every
// architecture.
//
// The parent-death signal is armed again: the kernel clears it when a binary
// with file capabilities is executed (Caddy's packages give it
// cap_net_bind_service), and the shim is that binary. If Caddy died before
// that, the shim exits instead of running an orphan.
func shimPrepare(parentPID int) {
	var dfl [64]byte // larger than any architecture's struct sigaction
	for sig := 1; sig < 65; sig++ {
		if sig == int(syscall.SIGKILL) || sig == int(syscall.SIGSTOP) {
			continue
		}
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig),
			uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
	}
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0)
	if os.Getppid() != parentPID {
		os.Exit(1)
	}
}
