// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: its master side (what a terminal
// emulator holds) and its slave side (what a shell's processes get).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// procStat reads fields of /proc/PID/stat after the command's name: state
// first (field 3 of proc(5)), so session is [3] and tty_nr [4].
func procStat(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// A child never shares Caddy's terminal: with Caddy started from a shell
// on a terminal (its controlling terminal, and its stdin and stdout), each
// supervised program runs in a session of its own without a controlling
// terminal, with stdin from /dev/null.
//   - Root's Caddy: a `user nobody` child can neither open /dev/tty, nor
//     type into root's shell (TIOCSTI), nor take the foreground
//     (TIOCSPGRP), nor change the terminal's settings, nor read what root
//     types — it gets a pipe that Caddy relays to the terminal. Caddy's own
//     user's child gets the terminal write-only (it still sees one:
//     colours, line buffering).
//   - A Caddy run as nobody from root's terminal (su, setpriv): it may not
//     open that terminal anew write-only, and its descriptor reads too: its
//     child gets a relayed pipe.
//
// Every output reaches the terminal.
func TestChildGetsNoTerminal(t *testing.T) {
	requireRoot(t)
	script := `import os, sys, fcntl, termios, struct, errno, time, signal
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # as an attacker would, before tcsetpgrp
r = []
def attempt(name, f):
    try:
        f(); r.append(name + "=ok")
    except (OSError, termios.error) as e:
        r.append(name + "=" + errno.errorcode.get(e.args[0], str(e.args[0])))
attempt("devtty", lambda: os.open("/dev/tty", os.O_RDWR))
attempt("tiocsti", lambda: fcntl.ioctl(1, termios.TIOCSTI, b"#"))
attempt("tiocspgrp", lambda: fcntl.ioctl(1, termios.TIOCSPGRP, struct.pack("i", os.getpgrp())))
attempt("tcsetattr", lambda: termios.tcsetattr(1, termios.TCSANOW, termios.tcgetattr(1)))
r.append("fd1=" + ["rdonly", "wronly", "rdwr"][fcntl.fcntl(1, fcntl.F_GETFL) & 3])
r.append("fd2=" + ["rdonly", "wronly", "rdwr"][fcntl.fcntl(2, fcntl.F_GETFL) & 3])
r.append("isatty=" + str(os.isatty(1)))
with open(os.environ["RESULT"], "w") as f:
    f.write(" ".join(r))
print("hello terminal from " + os.environ["WHO"], flush=True)
time.sleep(120)
`
	// another user, or Caddy's user without a terminal to reopen: a pipe
	relayed := []string{"devtty=ENXIO", "tiocsti=ENOTTY", "tiocspgrp=ENOTTY", "tcsetattr=ENOTTY", "fd1=wronly", "fd2=wronly", "isatty=False"}
	// Caddy's user: the terminal, write-only (root: CAP_SYS_ADMIN allows TIOCSTI, so it is not checked)
	writeOnly := []string{"devtty=ENXIO", "", "tiocspgrp=ENOTTY", "tcsetattr=ok", "fd1=wronly", "fd2=wronly", "isatty=True"}
	for _, tc := range []struct {
		name  string
		caddy *syscall.Credential // nil: root
		procs map[string][]string // name → its user ("" Caddy's) and what it must see
	}{
		{"root's Caddy", nil, map[string][]string{"nobody": append([]string{"nobody"}, relayed...), "caddy": append([]string{""}, writeOnly...)}},
		{"nobody's Caddy on root's terminal", &syscall.Credential{Uid: 65534, Gid: 65534}, map[string][]string{"caddy": append([]string{""}, relayed...)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, slave := openPTY(t)
			dir := sharedDir(t)
			var procs []map[string]any
			for _, name := range slices.Sorted(maps.Keys(tc.procs)) {
				p := map[string]any{"name": name, "command": []string{"/usr/bin/python3", "-c", script}, "dir": "/", "on_end": "keep_running", "output": "inherit",
					"env": map[string]string{"RESULT": filepath.Join(dir, "result-"+name), "WHO": name}}
				if user := tc.procs[name][0]; user != "" {
					p["user"] = user
				}
				procs = append(procs, p)
			}
			cfgPath := filepath.Join(dir, "caddy.json")
			writeJSON(t, cfgPath, testConfig(t, 0, 0, procs...))
			if err := os.Chmod(cfgPath, 0o644); err != nil {
				t.Fatal(err)
			}

			// Caddy as a shell runs it: the terminal is its controlling
			// terminal, stdin and stdout; its log (stderr) goes to the test
			c := &caddyProc{t: t, cmd: exec.Command(caddyBin, "run", "--config", cfgPath), logs: newLogBuf(), stdout: newLogBuf(), done: make(chan struct{})}
			c.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
			c.cmd.Stdin, c.cmd.Stdout, c.cmd.Dir = slave, slave, dir
			c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: tc.caddy}
			stderr, err := c.cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			slave.Close() // the terminal is Caddy's now
			go func() {
				_, _ = io.Copy(c.logs, stderr)
				_ = c.cmd.Wait()
				close(c.done)
			}()
			onTerminal := newLogBuf()
			go func() { _, _ = io.Copy(onTerminal, master) }()
			t.Cleanup(func() {
				c.killNow()
				if t.Failed() {
					t.Logf("caddy log:\n%s\nterminal:\n%s", c.logs.String(), onTerminal.String())
				}
			})
			c.waitLog("serving initial configuration", 20*time.Second)

			caddyStat := procStat(t, c.cmd.Process.Pid)
			for name, want := range tc.procs {
				pid := logPID(t, c.waitLog(fmt.Sprintf(`"logger":"supervise.%s","msg":"process started"`, name), 10*time.Second))
				if _, ok := onTerminal.waitFor("hello terminal from "+name, 20*time.Second, c.done); !ok {
					t.Errorf("%s: its output did not reach the terminal", name)
				}
				st := procStat(t, pid)
				if st[2] != strconv.Itoa(pid) || st[3] != strconv.Itoa(pid) || st[4] != "0" {
					t.Errorf("%s (pid %d): process group %s, session %s, tty_nr %s; want a session of its own without a terminal (Caddy's: session %s, tty_nr %s)",
						name, pid, st[2], st[3], st[4], caddyStat[3], caddyStat[4])
				}
				if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/0", pid)); err != nil || l != "/dev/null" {
					t.Errorf("%s: stdin %q %v, want /dev/null", name, l, err)
				}
				b, err := os.ReadFile(filepath.Join(dir, "result-"+name))
				if err != nil {
					t.Fatal(err)
				}
				got, want := strings.Fields(string(b)), slices.Clone(want[1:])
				if want[1] == "" && len(got) > 1 {
					want[1] = got[1]
				}
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("%s: %s\nwant %s", name, got, want)
				}
			}
			c.signal(syscall.SIGTERM)
			c.wait(20 * time.Second)
		})
	}
}
