//go:build unix

package shim

import (
	"bufio"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

// KeeperArg0 is the argv[0] of the keeper: a small process of Caddy's own
// binary, one per Caddy process, that outlives Caddy just long enough to
// kill the process groups Caddy leaves behind when it dies without stopping
// them (SIGKILL, SIGQUIT, a second SIGINT, a crash).
//
// The parent-death signal reaches only each group's leader; a wrapper's
// children (`sh -c "a & b"`, npm, foreman) would survive it. The keeper reads
// "+PGID" and "-PGID" lines on its stdin, a pipe whose write end only Caddy
// holds; when Caddy dies, the kernel closes that end, the keeper reads EOF,
// sends SIGKILL to every group still registered, and exits. It runs in a
// process group of its own, so a terminal's Ctrl-C does not reach it, and
// ignores the signals a service manager sends to the whole service.
const KeeperArg0 = "caddy-supervise-keeper"

func runKeeper() {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	groups := make(map[int]bool)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	os.Exit(0)
}
