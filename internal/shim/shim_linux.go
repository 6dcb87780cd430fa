package shim

import (
	"os"
	"syscall"
	"unsafe"
)

// prepare runs just before the exec.
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
func prepare(parentPID int) {
	var dfl [64]byte // larger than any architecture's struct sigaction
	for sig := 1; sig < 65; sig++ {
		if sig == int(syscall.SIGKILL) || sig == int(syscall.SIGSTOP) {
			continue
		}
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig),
			uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
	}
	const prSetPdeathsig = 1
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetPdeathsig, uintptr(syscall.SIGKILL), 0)
	if os.Getppid() != parentPID {
		os.Exit(1)
	}
}
