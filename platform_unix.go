//go:build unix

package supervise

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/caddy-supervise/supervise/internal/shim"
	"golang.org/x/sys/unix"
)

// parseSignal accepts a signal name with or without the SIG prefix, in any
// case ("SIGTERM", "term", "USR1"), or its number.
func parseSignal(name string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(name); err == nil {
		if unix.SignalName(syscall.Signal(n)) == "" {
			return 0, fmt.Errorf("no such signal number on %s", osName)
		}
		return syscall.Signal(n), nil
	}
	upper := strings.ToUpper(name)
	if !strings.HasPrefix(upper, "SIG") {
		upper = "SIG" + upper
	}
	sig := unix.SignalNum(upper)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal; use a name such as SIGTERM, SIGINT, SIGQUIT, SIGUSR1")
	}
	return sig, nil
}

// signalGroup sends sig to every process of the group pgid. It refuses
// pgid <= 1: kill(0) would signal Caddy's own group, kill(-1) every process.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return fmt.Errorf("refusing to signal process group %d", pgid)
	}
	return syscall.Kill(-pgid, sig)
}

// groupAlive reports whether any process is left in the group.
func groupAlive(pgid int) bool {
	if pgid <= 1 {
		return false
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// exitStatus returns the status a shell would report: the exit code, or
// 128+N for a child killed by signal N; and a description for the log.
func exitStatus(ps *os.ProcessState) (int, string) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), "killed by " + unix.SignalName(ws.Signal())
	}
	return ps.ExitCode(), "exit code " + strconv.Itoa(ps.ExitCode())
}

// command builds the child's exec.Cmd. The child is started through this
// binary (see internal/shim), which resets signal dispositions inherited from
// Caddy and then execs the program. It gets its own process group, so that
// signals reach wrappers' children and a terminal's Ctrl-C does not reach
// it before the drain.
func (p *proc) command(def *Process) *exec.Cmd {
	args := append([]string{shim.Arg0, def.path}, def.Command...)
	cmd := newCommand(def, shimPath(), args, shim.Env+"="+strconv.Itoa(os.Getpid()))
	cmd.SysProcAttr = sysProcAttr()
	return cmd
}

// checkExecutable reports why path cannot be executed, if it cannot.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	if fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// requestExit makes Caddy exit gracefully, exactly as on SIGTERM.
func requestExit() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
}
