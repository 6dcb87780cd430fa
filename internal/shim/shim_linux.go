package shim

import (
	"os"
	"syscall"
	"unsafe"
)

// prepare runs just before the exec.
//
// Every signal gets its default disposition and none is blocked: Caddy ignores SIGPIPE, and a
// Caddy started in the background by a shell ignores SIGINT and SIGQUIT;
// ignored signals survive exec, and the program would inherit them. A zeroed
// kernel sigaction is SIG_DFL with no flags and an empty mask on every
// architecture. The signal mask survives exec too: a Caddy started by a
// parent that blocked USR1 would otherwise hand the program USR1 blocked
// (Go's runtime unblocks only the signals it needs), and a `stop_signal
// USR1` or Puma's USR1 phased restart would never arrive. No signal from
// Caddy is pending here (Caddy holds them back until the exec), so
// unblocking delivers nothing to the shim.
//
// The parent-death signal is armed again: the kernel clears it when a binary
// with file capabilities is executed (Caddy's packages give it
// cap_net_bind_service), and the shim is that binary. If Caddy died before
// that, the shim exits instead of running an orphan.
func prepare(parentPID int) {
	var dfl [64]byte // larger than any architecture's struct sigaction
	for sig := 1; sig < 65; sig++ {
		if sig == int(syscall.SIGKILL) || sig == int(syscall.SIGSTOP) {
			continue
		}
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig),
			uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
	}
	var empty [8]byte // the kernel's sigset_t: 64 bits
	const sigSetmask = 2
	_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&empty)), 0, 8, 0, 0)
	const prSetPdeathsig = 1
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetPdeathsig, uintptr(syscall.SIGKILL), 0)
	if os.Getppid() != parentPID {
		os.Exit(1)
	}
}
