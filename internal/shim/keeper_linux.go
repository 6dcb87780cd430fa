package shim

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// capKill is CAP_KILL, the one capability the keeper keeps.
const capKill = 5

// keeperPrivileges leaves the keeper's thread with CAP_KILL alone, if it
// had it (to kill the groups of a process run as another user), and no
// inheritable or ambient capability.
func keeperPrivileges() error { return keepCapabilities(1 << capKill) }

// group is a registered process group, pinned by its leader.
type group struct {
	pgid  int
	fd    int    // a pidfd of the leader; -1 on a kernel without pidfds
	start string // the leader's start time (field 22 of /proc/PID/stat)
}

// pin takes group pgid if its leader is a child of parent and leads its
// own group: a pidfd (or, before Linux 5.3, its start time) pins the
// leader, and the checks are made through /proc while the pidfd holds it,
// so they are about that very process. The leader is not reaped while
// Caddy registers it (Caddy reaps a child only after it unregistered it).
func pin(pgid, parent int) (*group, error) {
	g := &group{pgid: pgid, fd: -1}
	fd, err := unix.PidfdOpen(pgid, 0)
	switch {
	case err == nil:
		g.fd = fd
	case errors.Is(err, syscall.ESRCH):
		return nil, err
	default:
		// no pidfds here (before Linux 5.3: ENOSYS; a seccomp profile that
		// refuses unknown calls: EPERM): the start time pins it
	}
	ppid, pgrp, start, err := leaderStat(pgid)
	switch {
	case err != nil:
	case ppid != parent:
		err = errors.New("its leader is not a child of the keeper's parent")
	case pgrp != pgid:
		err = errors.New("not a process group's leader")
	case os.Getppid() != parent:
		// the parent is gone: its PID may be another process's now, and
		// so may the children that seem to be its
		err = errors.New("the keeper's parent is gone")
	case g.fd >= 0 && unix.PidfdSendSignal(g.fd, 0, nil, 0) != nil:
		err = errors.New("the process went away")
	}
	if err != nil {
		g.release()
		return nil, err
	}
	g.start = start
	return g, nil
}

// leaderStat reads the parent, the process group and the start time of
// process pid from /proc.
func leaderStat(pid int) (ppid, pgrp int, start string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, "", err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state ppid pgrp session … starttime (f[19])
	if len(f) < 20 {
		return 0, 0, "", errors.New("unreadable /proc stat")
	}
	ppid, _ = strconv.Atoi(f[1])
	pgrp, _ = strconv.Atoi(f[2])
	return ppid, pgrp, f[19], nil
}

// leaderStill reports whether the pinned leader still exists (alive, or a
// zombie not reaped yet): then the group's ID is still its own.
func (g *group) leaderStill() bool {
	if g.fd >= 0 {
		return unix.PidfdSendSignal(g.fd, 0, nil, 0) == nil
	}
	_, _, start, err := leaderStat(g.pgid)
	return err == nil && start == g.start
}

// kill sends SIGKILL to the group: while its leader is still there, or,
// once the leader is gone (the parent-death signal killed it and init
// reaped it), only while no other process has taken the leader's PID: the
// members left keep the group's ID from being reused, and a new process
// with that PID would be a stranger.
func (g *group) kill() {
	if _, err := os.Stat("/proc/" + strconv.Itoa(g.pgid)); g.leaderStill() || errors.Is(err, os.ErrNotExist) {
		_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
	}
	g.release()
}

func (g *group) release() {
	if g.fd >= 0 {
		unix.Close(g.fd)
		g.fd = -1
	}
}
