package shim

import (
	"errors"
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
//
// Capabilities: a Caddy that runs as a non-root user with ambient
// capabilities (systemd's AmbientCapabilities=, setpriv --ambient-caps)
// hands them to every child, across a change of user and across exec; a
// program run as `user nobody` would keep CAP_SETUID and could become root
// again. And a binary with file capabilities gives them to the shim,
// whoever runs it. The shim drops every capability (ambient, inheritable,
// permitted, effective) before the exec, so the program gets none from
// Caddy: after the exec it has only what its own user has (root: all;
// another user: none). With noNewPrivs (the child runs as another user
// than Caddy), the no_new_privs bit is set too: setuid binaries and file
// capabilities grant nothing to the program or its children.
func prepare(parentPID int, noNewPrivs bool) error {
	if err := keepCapabilities(0); err != nil {
		return err
	}
	if noNewPrivs {
		const prSetNoNewPrivs = 38
		if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0, 0, 0, 0); errno != 0 {
			return errors.New("setting no_new_privs: " + errno.Error())
		}
	}
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
	return nil
}

// keepCapabilities leaves the calling thread with the capabilities of
// keep that it has, in its permitted and effective sets, and none in its
// inheritable and ambient sets (a kernel without ambient capabilities,
// before 4.3, has none to clear). Capabilities are a thread's: the caller
// has locked its thread, and execs (or does what needs them) from it.
func keepCapabilities(keep uint64) error {
	const prCapAmbient, prCapAmbientClearAll = 47, 4
	if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prCapAmbient, prCapAmbientClearAll, 0, 0, 0, 0); errno != 0 && errno != syscall.EINVAL {
		return errors.New("clearing the ambient capabilities: " + errno.Error())
	}
	header := struct {
		version uint32
		pid     int32
	}{version: 0x20080522} // _LINUX_CAPABILITY_VERSION_3: two 32-bit words
	var data [2]struct{ effective, permitted, inheritable uint32 }
	if _, _, errno := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&header)), uintptr(unsafe.Pointer(&data)), 0); errno != 0 {
		return errors.New("reading the capabilities: " + errno.Error())
	}
	want := data
	for i := range want {
		want[i].permitted &= uint32(keep >> (32 * i))
		want[i].effective = want[i].permitted
		want[i].inheritable = 0
	}
	if want == data {
		return nil
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&header)), uintptr(unsafe.Pointer(&want)), 0); errno != 0 {
		return errors.New("dropping capabilities: " + errno.Error())
	}
	return nil
}
