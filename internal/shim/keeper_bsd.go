//go:build unix && !linux

package shim

import (
	"errors"
	"os"
	"syscall"
)

// keeperPrivileges refuses to run with privileges its exec gave it: there
// are no file capabilities here, so without a set-user-ID or set-group-ID
// bit the keeper can kill only what whoever started it could kill.
func keeperPrivileges() error {
	if os.Geteuid() != os.Getuid() || os.Getegid() != os.Getgid() {
		return errors.New("refusing to run set-user-ID or set-group-ID: it would kill for whoever runs it")
	}
	return nil
}

// group is a registered process group.
type group struct{ pgid int }

// pin takes a group: the keeper has no privilege of its own here.
func pin(pgid, _ int) (*group, error) { return &group{pgid}, nil }

func (g *group) kill()    { _ = syscall.Kill(-g.pgid, syscall.SIGKILL) }
func (g *group) release() {}
