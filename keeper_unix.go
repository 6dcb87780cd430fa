//go:build unix

package supervise

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/caddy-supervise/supervise/internal/shim"
	"go.uber.org/zap"
)

// keeper is Caddy's side of the keeper process (see internal/shim): it
// registers each process group while it exists, so that the keeper can kill
// the groups Caddy leaves behind if it dies without stopping them.
var keeper struct {
	sync.Mutex
	w      io.WriteCloser // the keeper's stdin; nil until the first child starts
	pid    int            // the keeper's PID while w is set
	groups map[int]bool
}

// startedKeeper starts the keeper if it is not running and returns its PID.
func startedKeeper() (int, error) {
	keeper.Lock()
	defer keeper.Unlock()
	if keeper.w != nil {
		return keeper.pid, nil
	}
	if err := startKeeper(); err != nil {
		return 0, err
	}
	return keeper.pid, nil
}

// keepGroup registers a process group with the keeper, starting the keeper
// if it is not running (the first time, or after it died).
func keepGroup(pgid int, logger *zap.Logger) {
	keeper.Lock()
	defer keeper.Unlock()
	if keeper.groups == nil {
		keeper.groups = make(map[int]bool)
	}
	keeper.groups[pgid] = true
	if keeper.w != nil {
		if _, err := fmt.Fprintf(keeper.w, "+%d\n", pgid); err == nil {
			return
		}
		keeper.w.Close()
		keeper.w = nil
		logger.Warn("the keeper process is gone; starting a new one")
	}
	if err := startKeeper(); err != nil {
		logger.Error("starting the keeper process: a wrapper's children may outlive a Caddy that is killed", zap.Error(err))
	}
}

// releaseGroup unregisters a process group once it is gone.
func releaseGroup(pgid int) {
	keeper.Lock()
	defer keeper.Unlock()
	delete(keeper.groups, pgid)
	if keeper.w != nil {
		_, _ = fmt.Fprintf(keeper.w, "-%d\n", pgid)
	}
}

// startKeeper starts the keeper and registers every known group with it.
// The caller holds the lock.
func startKeeper() error {
	cmd := &exec.Cmd{
		Path:        shimPath(),
		Args:        []string{shim.KeeperArg0},
		Env:         append(os.Environ(), shim.Env+"="+strconv.Itoa(os.Getpid())),
		Dir:         "/",
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	w, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }() // the only Wait; reaps the keeper
	for pgid := range keeper.groups {
		if _, err := fmt.Fprintf(w, "+%d\n", pgid); err != nil {
			return err
		}
	}
	keeper.w, keeper.pid = w, cmd.Process.Pid
	return nil
}
