//go:build unix && !linux

package supervise

import (
	"errors"
	"os"
	"os/exec"
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
