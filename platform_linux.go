package supervise

import "syscall"

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
