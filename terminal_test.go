// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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

// A child never shares Caddy's terminal: with Caddy started from a root
// shell on a terminal (its controlling terminal, and its stdin and stdout),
// each supervised program runs in a session of its own without a
// controlling terminal, with stdin from /dev/null: a `user nobody` child
// can neither open /dev/tty, nor type into root's shell (TIOCSTI), nor take
// the foreground (TIOCSPGRP), nor change the terminal's settings, nor read
// what root types — it gets a pipe that Caddy relays to the terminal.
// Caddy's own user's child gets the terminal write-only (it still sees one:
// colours, line buffering). Both outputs reach the terminal.
func TestChildGetsNoTerminal(t *testing.T) {
	requireRoot(t)
	master, slave := openPTY(t)
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
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
	proc := func(name, user string) map[string]any {
		p := map[string]any{"name": name, "command": []string{"/usr/bin/python3", "-c", script}, "dir": "/", "on_end": "keep_running", "output": "inherit",
			"env": map[string]string{"RESULT": filepath.Join(dir, name), "WHO": name}}
		if user != "" {
			p["user"] = user
		}
		return p
	}
	cfgPath := filepath.Join(dir, "caddy.json")
	writeJSON(t, cfgPath, testConfig(t, 0, 0, proc("asnobody", "nobody"), proc("ascaddy", "")))

	// Caddy as a root shell would run it: the terminal is its controlling
	// terminal, stdin and stdout; its log (stderr) goes to the test
	c := &caddyProc{t: t, cmd: exec.Command(caddyBin, "run", "--config", cfgPath), logs: newLogBuf(), stdout: newLogBuf(), done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	c.cmd.Stdin, c.cmd.Stdout = slave, slave
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
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
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("caddy log:\n%s\nterminal:\n%s", c.logs.String(), onTerminal.String())
		}
	})
	c.waitLog("serving initial configuration", 20*time.Second)

	caddyStat := procStat(t, c.cmd.Process.Pid)
	for _, name := range []string{"asnobody", "ascaddy"} {
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
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Fields(string(b))
		// another user gets no terminal at all: its output is relayed
		// through a pipe (even write-only, a terminal takes ioctls that
		// would turn echo off or break root's line discipline)
		want := []string{"devtty=ENXIO", "tiocsti=ENOTTY", "tiocspgrp=ENOTTY", "tcsetattr=ENOTTY", "fd1=wronly", "fd2=wronly", "isatty=False"}
		if name == "ascaddy" && len(got) > 1 {
			// Caddy's own user gets the terminal, write-only; root has
			// CAP_SYS_ADMIN, which TIOCSTI allows to anyone's terminal
			want = []string{"devtty=ENXIO", got[1], "tiocspgrp=ENOTTY", "tcsetattr=ok", "fd1=wronly", "fd2=wronly", "isatty=True"}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %s\nwant %s", name, got, want)
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(20 * time.Second)
}
