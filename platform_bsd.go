//go:build unix && !linux

package supervise

import (
	"os"
	"syscall"
)

const osName = "this system"

// shimPath is the running Caddy binary.
func shimPath() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return os.Args[0]
}

// sysProcAttr puts the child in a process group of its own. There is no
// parent-death signal outside Linux: a child outlives a Caddy that is killed
// with SIGKILL.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
