//go:build unix

package supervise

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// The child is started as this same binary with shimEnv set, so that the
// code below runs first in the new process: it restores what a process
// supervisor must hand a program and Go's os/exec cannot (default signal
// dispositions, the parent-death signal after a capability-bearing exec),
// then replaces itself with the program. It lives for a few milliseconds and
// leaves nothing behind.
const (
	shimEnv  = "CADDY_SUPERVISE_EXEC"
	shimArg0 = "caddy-supervise-exec"
)

func init() {
	v, ok := os.LookupEnv(shimEnv)
	if !ok || len(os.Args) < 3 || os.Args[0] != shimArg0 {
		return
	}
	parent, _ := strconv.Atoi(v)
	_ = os.Unsetenv(shimEnv)
	path, argv := os.Args[1], os.Args[2:]
	shimPrepare(parent)
	err := syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "supervise: exec %s: %v\n", path, err)
	os.Exit(127)
}
