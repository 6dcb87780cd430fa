//go:build unix

package shim

import (
	"bufio"
	"os"
	"os/signal"
	"runtime"
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
// session of its own, so a terminal's Ctrl-C does not reach it, and
// ignores the signals a service manager sends to the whole service.
//
// Anyone can run the binary this way, and whoever does supplies its stdin:
// no channel is only Caddy's. So the keeper takes a group only from its
// parent, the process that started it: the group's leader must be a child
// of that parent, pinned at registration so that its ID cannot go to
// another process unnoticed (see pin); and it drops every capability its
// exec gave it but CAP_KILL (a binary with file capabilities gives them to
// whoever runs it). Started by a stranger, it kills nothing the stranger
// could not kill.
const KeeperArg0 = "caddy-supervise-keeper"

func runKeeper() {
	runtime.LockOSThread() // its capabilities are this thread's (see keeperPrivileges)
	if err := keeperPrivileges(); err != nil {
		os.Stderr.WriteString("supervise keeper: " + err.Error() + "\n")
		os.Exit(1)
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	parent := os.Getppid()
	groups := make(map[int]*group)
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
			if groups[pgid] != nil {
				continue
			}
			g, err := pin(pgid, parent)
			if err != nil {
				os.Stderr.WriteString("supervise keeper: not keeping group " + line[1:] + ": " + err.Error() + "\n")
				continue
			}
			groups[pgid] = g
		case '-':
			if g := groups[pgid]; g != nil {
				g.release()
				delete(groups, pgid)
			}
		}
	}
	for _, g := range groups {
		g.kill()
	}
	os.Exit(0)
}
