// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-supervise/supervise/internal/shim"
)

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users (CI runs as root)")
	}
}

// The child runs with the configured user's uid, gid and supplementary
// groups, and its HOME and USER.
func TestRunAsUser(t *testing.T) {
	requireRoot(t)
	script := `echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER logname=$LOGNAME"`
	proc := func(name, user, group string) map[string]any {
		return map[string]any{"name": name, "command": []string{"sh", "-c", script}, "dir": "/",
			"user": user, "group": group, "on_end": "keep_running"}
	}
	c := startCaddy(t, testConfig(t, 0, 0,
		proc("nobody", "nobody", ""),
		proc("numeric", "65534", "1"),
		proc("withgroup", "nobody", "daemon"),
	))
	c.waitLogCount("Caddy keeps running", 3, 10*time.Second)
	for name, want := range map[string]string{
		"nobody":    "uid=65534 gid=65534 groups=65534 home=/nonexistent user=nobody logname=nobody",
		"numeric":   "uid=65534 gid=1 groups=1 65534 home=/nonexistent user=nobody logname=nobody",
		"withgroup": "uid=65534 gid=1 groups=1 65534 home=/nonexistent user=nobody logname=nobody",
	} {
		var got []string
		for _, e := range entriesOf(t, c, "supervise."+name) {
			if e.Stream != "" {
				got = append(got, e.Msg)
			}
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("%s: child printed %q, want %q", name, got, want)
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// A Caddy that cannot switch users fails to start, and says why.
func TestRunAsUserNeedsPrivilege(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	for d, mode := range map[string]os.FileMode{dir: 0o777, filepath.Dir(dir): 0o755} {
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(t, 0, 0, map[string]any{"name": "x", "command": []string{"sleep", "60"}, "dir": "/", "user": "daemon"})
	path := filepath.Join(dir, "caddy.json")
	writeJSON(t, path, cfg)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "run", "--config", path)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("caddy started as nobody with a process to run as daemon:\n%s", out)
	}
	if want := `cannot switch to user daemon: it must run as root`; !strings.Contains(string(out), want) {
		t.Errorf("caddy's error does not say %q:\n%s", want, out)
	}
}

// sharedDir is a temporary directory that another user can write: the
// home, config and data directories of a Caddy run as uid 1000.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d, mode := range map[string]os.FileMode{dir: 0o777, filepath.Dir(dir): 0o755} {
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nonRootCaddy runs `caddy run` with cfg as uid/gid 1000 through setpriv,
// with the given ambient capabilities (also raised in the inheritable set,
// as the kernel wants for ambient ones), as systemd's
// AmbientCapabilities= does; caps "" runs it without any.
func nonRootCaddy(t *testing.T, bin string, cfg map[string]any, caps string, wait bool) *caddyProc {
	t.Helper()
	requireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	dir := sharedDir(t)
	path := filepath.Join(dir, "caddy.json")
	writeJSON(t, path, cfg)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{setpriv, "--reuid=1000", "--regid=1000", "--init-groups"}
	if caps != "" {
		args = append(args, "--inh-caps="+caps, "--ambient-caps="+caps)
	}
	args = append(args, bin, "run", "--config", path)
	c := runCaddy(t, dir, args, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if wait {
		c.waitLog("serving initial configuration", 20*time.Second)
	}
	return c
}

// capsScript prints the capability sets and the no_new_privs bit of the
// shell that runs it, and whether it can become root again.
const capsScript = `grep -E '^(Cap(Inh|Prm|Eff|Amb)|NoNewPrivs):' /proc/self/status; ` +
	`if setpriv --reuid=0 --regid=0 --clear-groups true 2>/dev/null; then echo "setuid(0): allowed"; else echo "setuid(0): denied"; fi`

// A Caddy run as uid 1000 with ambient CAP_SETUID, CAP_SETGID,
// CAP_NET_BIND_SERVICE and CAP_KILL (what systemd's AmbientCapabilities=
// gives): a process with `user nobody` ends with no capability at all and
// cannot become root again; a process of Caddy's own user has none of
// Caddy's either; Caddy stops a `user nobody` process at its exit.
func TestCapabilitiesNotInherited(t *testing.T) {
	proc := func(name, user string) map[string]any {
		p := map[string]any{"name": name, "command": []string{"sh", "-c", capsScript}, "dir": "/", "on_end": "keep_running"}
		if user != "" {
			p["user"] = user
		}
		return p
	}
	sleeper := map[string]any{"name": "sleeper", "command": []string{"sleep", "60"}, "dir": "/", "user": "nobody", "stop_timeout": "2s"}
	cfg := testConfig(t, 0, 0, proc("dropped", "nobody"), proc("own", ""), sleeper)
	c := nonRootCaddy(t, caddyBin, cfg, "+setuid,+setgid,+net_bind_service,+kill", true)
	c.waitLogCount("Caddy keeps running", 2, 10*time.Second)
	for name, want := range map[string][]string{
		"dropped": {"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "setuid(0): denied"},
		"own":     {"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t0", "setuid(0): denied"},
	} {
		var got []string
		for _, e := range entriesOf(t, c, "supervise."+name) {
			if e.Stream != "" {
				got = append(got, e.Msg)
			}
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("%s printed %q, want a line %q", name, got, w)
			}
		}
	}
	began := c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	if d := c.exited.Sub(began); d > 2*time.Second {
		t.Errorf("Caddy took %s to stop the user nobody process: its stop signal did not reach it", d)
	}
	if lines := c.logs.lines("operation not permitted"); len(lines) > 0 {
		t.Errorf("a signal was refused: %s", lines[0])
	}
}

// A non-root Caddy that could not signal a process of another user (no
// CAP_KILL) refuses to start it, naming the process, the user and the
// capability; one whose keeper lacks CAP_KILL (Caddy's binary got file
// capabilities, which make the kernel drop the ambient ones at exec) too.
// A non-root Caddy without any capability may run a process as its own
// user.
func TestNonRootCaddyPrivileges(t *testing.T) {
	sleeper := map[string]any{"name": "sleeper", "command": []string{"sleep", "60"}, "dir": "/", "user": "nobody"}
	t.Run("no CAP_KILL", func(t *testing.T) {
		c := nonRootCaddy(t, caddyBin, testConfig(t, 0, 0, sleeper), "+setuid,+setgid", false)
		if code := c.wait(20 * time.Second); code == 0 {
			t.Fatal("caddy started")
		}
		want := `process \"sleeper\": Caddy (uid 1000) could not stop user nobody (uid 65534): signalling a process of another user needs CAP_KILL`
		if !strings.Contains(c.logs.String(), want) {
			t.Errorf("caddy's error does not say %s:\n%s", want, c.logs.String())
		}
		if strings.Contains(c.logs.String(), `"msg":"process started"`) {
			t.Error("a process was started")
		}
	})
	t.Run("root", func(t *testing.T) {
		root := map[string]any{"name": "root", "command": []string{"sleep", "60"}, "dir": "/", "user": "root"}
		c := nonRootCaddy(t, caddyBin, testConfig(t, 0, 0, root), "+setuid,+setgid,+kill", false)
		if code := c.wait(20 * time.Second); code == 0 {
			t.Fatal("caddy started")
		}
		if want := `process \"root\": user root: a Caddy that does not run as root does not start processes as root`; !strings.Contains(c.logs.String(), want) {
			t.Errorf("caddy's error does not say %s:\n%s", want, c.logs.String())
		}
	})
	t.Run("keeper without CAP_KILL", func(t *testing.T) {
		bin, setcap := binaryCopy(t)
		cfg := testConfig(t, 0, 0)
		c := nonRootCaddy(t, bin, cfg, "+setuid,+setgid,+kill", true)
		// the binary gets file capabilities after Caddy started (a package
		// upgrade): the keeper, started from it, loses the ambient ones
		if out, err := exec.Command(setcap, "cap_net_bind_service+ep", bin).CombinedOutput(); err != nil {
			t.Skipf("setcap: %v: %s", err, out)
		}
		next := testConfig(t, 0, 0, sleeper)
		next["admin"] = cfg["admin"]
		code, body := c.tryLoad(t, next)
		if want := `the keeper (pid `; code == 200 || !strings.Contains(body, want) || !strings.Contains(body, "lacks CAP_KILL") {
			t.Errorf("reload: %d %s, want an error about the keeper's CAP_KILL", code, body)
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	})
	t.Run("own user", func(t *testing.T) {
		u, err := user.LookupId("1000")
		if err != nil {
			t.Skip("no user with uid 1000 in the user database")
		}
		own := map[string]any{"name": "own", "command": []string{"sh", "-c", "id -u"}, "dir": "/", "user": u.Username, "on_end": "keep_running"}
		c := nonRootCaddy(t, caddyBin, testConfig(t, 0, 0, own), "", true)
		c.waitLog("Caddy keeps running", 10*time.Second)
		if e := entriesOf(t, c, "supervise.own"); !slices.ContainsFunc(e, func(e logEntry) bool { return e.Msg == "1000" }) {
			t.Errorf("the process did not run as uid 1000: %+v", e)
		}
		c.signal(syscall.SIGTERM)
		c.wait(10 * time.Second)
	})
}

// The keeper kills only what its Caddy registered. A copy of the binary
// with file capabilities (as an operator might give it after "the keeper
// lacks CAP_KILL"), run by nobody as a keeper and told a root process
// group on its stdin, kills nothing of root's; told a group of its own
// starter's, it kills that (the test can fail); and of what its exec gave
// it, it keeps CAP_KILL alone.
func TestKeeperKillsOnlyItsParentsGroups(t *testing.T) {
	requireRoot(t)
	bin, setcap := binaryCopy(t)
	if out, err := exec.Command(setcap, "cap_kill,cap_net_bind_service,cap_setuid+ep", bin).CombinedOutput(); err != nil {
		t.Skipf("setcap: %v: %s", err, out)
	}
	victim := exec.Command("sleep", "300") // root's, in a group of its own
	victim.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill(); _ = victim.Wait() })

	// the stranger: a shell of nobody's, whose own group is registered too
	script := `setsid sleep 300 & own=$!
printf '+%s\n+%s\n' "$own" "$VICTIM" | { exec -a ` + shim.KeeperArg0 + ` "$KEEPER"; }
wait "$own"; echo "own=$?"`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), shim.Env+"=1", "KEEPER="+bin, "VICTIM="+strconv.Itoa(victim.Process.Pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the stranger's shell: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "own=137") {
		t.Errorf("the stranger's own group was not killed (the keeper killed nothing?): %s", out)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", victim.Process.Pid))
	if i := strings.LastIndexByte(string(stat), ')'); err != nil || i < 0 || stat[i+2] == 'Z' {
		t.Errorf("root's process group was killed by a keeper nobody started")
	}

	// what the keeper keeps of its file capabilities, once it refused a
	// group (it drops them before it reads anything)
	k := exec.Command(bin)
	k.Args[0] = shim.KeeperArg0
	k.Env = append(os.Environ(), shim.Env+"=1")
	k.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := k.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := k.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = k.Wait() }()
	fmt.Fprintf(stdin, "+%d\n", os.Getpid()) // not a child of the keeper's parent (this test)
	said := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stderr).ReadString('\n')
		said <- line
	}()
	select {
	case line := <-said:
		if !strings.Contains(line, "not keeping group") {
			t.Fatalf("the keeper said %q, want a refusal", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the keeper took a group that is not its parent's child")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", k.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%016x", 1<<capKill)
	for _, l := range strings.Split(string(b), "\n") {
		for _, set := range []string{"CapEff:", "CapPrm:", "CapInh:", "CapAmb:"} {
			if v, ok := strings.CutPrefix(l, set); ok {
				if v = strings.TrimSpace(v); v != want && (set == "CapEff:" || set == "CapPrm:") || v != "0000000000000000" && (set == "CapInh:" || set == "CapAmb:") {
					t.Errorf("the keeper's %s %s; want CAP_KILL alone (%s) in the effective and permitted sets, none in the others", set, v, want)
				}
			}
		}
	}
}

// Nothing in a program's environment runs in Caddy's binary: a config
// that sets LD_PRELOAD (as `env`, or in an env_file the app's user may
// write) gets its library loaded into the program only, never into the
// exec shim (Caddy's own binary, dynamically linked with cgo), which
// would run it with the capabilities a non-root Caddy holds — and become
// root with CAP_SETUID.
func TestPreloadNeverRunsInTheShim(t *testing.T) {
	requireRoot(t)
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc is not installed")
	}
	if out, _ := exec.Command("ldd", caddyBin).CombinedOutput(); strings.Contains(string(out), "not a dynamic executable") {
		t.Skip("this Caddy is linked statically: LD_PRELOAD cannot reach it")
	}
	dir := sharedDir(t)
	src, so, out := filepath.Join(dir, "evil.c"), filepath.Join(dir, "evil.so"), filepath.Join(dir, "loaded")
	const code = `#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
	char line[256], eff[64] = "?";
	FILE *st = fopen("/proc/self/status", "r");
	while (st && fgets(line, sizeof line, st))
		if (strncmp(line, "CapEff:", 7) == 0) sscanf(line + 7, "%63s", eff);
	if (st) fclose(st);
	FILE *f = fopen(getenv("LOADED_OUT"), "a");
	if (f) { fprintf(f, "%s capeff=%s root=%s\n", program_invocation_short_name, eff, setresuid(0, 0, 0) == 0 ? "yes" : "no"); fclose(f); }
}`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(gcc, "-shared", "-fPIC", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	if err := os.WriteFile(out, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o666); err != nil { // (past the umask)
		t.Fatal(err)
	}
	proc := func(name, user string) map[string]any {
		p := map[string]any{"name": name, "command": []string{"sh", "-c", "echo started; exec sleep 60"}, "dir": "/",
			"env": map[string]string{"LD_PRELOAD": so, "LOADED_OUT": out}}
		if user != "" {
			p["user"] = user
		}
		return p
	}
	c := nonRootCaddy(t, caddyBin, testConfig(t, 0, 0, proc("asnobody", "nobody"), proc("ascaddy", "")), "+setuid,+setgid,+kill,+net_bind_service", true)
	c.waitLogCount(`"msg":"started"`, 2, 10*time.Second) // each shell ran: the library was loaded into it first
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if n := len(slices.DeleteFunc(slices.Clone(lines), func(l string) bool { return !strings.HasPrefix(l, "sh ") })); n != 2 {
		t.Errorf("the library was loaded into %d shells, want each program's (2):\n%s", n, b)
	}
	for _, l := range lines {
		if l != "sh capeff=0000000000000000 root=no" && l != "sleep capeff=0000000000000000 root=no" {
			t.Errorf("loaded as %q: want it in the programs only (sh, then sleep), without a capability", l)
		}
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// env_file is read with Caddy's rights: for a process of another user,
// a file that user may not read is refused when someone other than
// Caddy's user or root decides what the path leads to (the app's user
// could link it to any file, and read the file in its environment); a
// secret the admin keeps for it in a directory of its own is read.
func TestEnvFileForAnotherUser(t *testing.T) {
	requireRoot(t)
	secret := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(secret, []byte("DB_PASSWORD=hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	appDir := sharedDir(t) // the app's user may write it
	link := filepath.Join(appDir, ".env")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(appDir, "readable.env")
	if err := os.WriteFile(readable, []byte("A=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	shadow := filepath.Join(appDir, "not-an-env")
	if err := os.WriteFile(shadow, []byte("root:*:20228:0:99999:7:::\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// (a) a file nobody may not reach: mode 644, in a directory only root
	// may enter; (b) a held path whose link leads through a directory the
	// app's user may change
	alice := filepath.Join(t.TempDir(), "alice")
	if err := os.Mkdir(alice, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(alice, ".env"), "ALICE_TOKEN=secret\n")
	unreachable := filepath.Join(appDir, "alice.env")
	if err := os.Symlink(filepath.Join(alice, ".env"), unreachable); err != nil {
		t.Fatal(err)
	}
	etc := t.TempDir() // root's, held
	hop := filepath.Join(etc, "app.env")
	if err := os.Symlink(filepath.Join(appDir, "shared.env"), hop); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(appDir, "shared.env")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(appDir, "fifo.env")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, user, want string
	}{
		{"a link another user may place", link, "nobody", "nobody may not read it, and users other than Caddy's and root can change what the path leads to"},
		{"a file in a directory the user may not enter", unreachable, "nobody", "nobody may not read it"},
		{"a held path through a directory the user may change", hop, "nobody", "nobody may not read it"},
		{"a FIFO", fifo, "", "not a regular file"},
		{"the admin's secret", secret, "nobody", ""},
		{"readable by the user", readable, "nobody", ""},
		{"Caddy's own user", link, "", ""},
		{"never quoted", shadow, "nobody", "line 1: not KEY=VALUE (no =)"},
	} {
		p := &Process{Name: "web", Command: []string{"sleep", "60"}, EnvFile: tc.file, User: tc.user}
		done := make(chan error, 1)
		go func() { done <- p.provision(0) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: reading the env_file hangs", tc.name)
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "root:"):
			t.Errorf("%s: the error quotes the file: %v", tc.name, err)
		}
	}
}

// Caddy reads no file for an app of another user that the user could not
// reach: supervise_sendfile without root is an error at validate when a
// process runs as another user; supervise_public, in a directory the app's
// user may write, follows no symbolic link out of it.
func TestFilesForAnotherUsersApp(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	writeFile(t, secret, "ROOT ONLY")
	if err := os.Chmod(secret, 0o600); err != nil {
		t.Fatal(err)
	}
	public := filepath.Join(sharedDir(t), "public") // root's, with a subdirectory the app's user may write
	writeFile(t, filepath.Join(public, "ok.txt"), "public file")
	uploads := filepath.Join(public, "uploads")
	if err := os.Mkdir(uploads, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(uploads, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(public, "leak.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(uploads, "leak.txt")); err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(sharedDir(t), "later") // made after the load, by the app's user
	httpPort := freePort(t)
	src := func(handler string) string {
		return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	supervise sleep 60 {
		name app
		user nobody
		dir /
	}
}
http://127.0.0.1:%d {
	route {
		%s
		respond "from the app"
	}
}
`, freePort(t), httpPort, handler)
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(src("supervise_sendfile")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(caddyBin, "validate", "--config", path, "--adapter", "caddyfile").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `supervise_sendfile without root: process \"app\" runs as user nobody`) {
		t.Errorf("validate of supervise_sendfile without root for an app of another user: %v\n%s", err, out)
	}

	if err := os.WriteFile(path, []byte(src(fmt.Sprintf("supervise_public {\n\t\t\troot %s\n\t\t}\n\t\tsupervise_public {\n\t\t\troot %s\n\t\t}", public, later))), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCaddyFile(t, path, "caddyfile")
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	if _, body := httpGet(t, base+"/ok.txt"); string(body) != "public file" {
		t.Errorf("GET /ok.txt: %q", body)
	}
	for _, p := range []string{"/leak.txt", "/uploads/leak.txt"} {
		if _, body := httpGet(t, base+p); string(body) != "from the app" {
			t.Errorf("GET %s (a link to a root-only file): %q, want it left to the app", p, body)
		}
	}
	// a root that did not exist at the load, made by the app's user
	if err := os.Mkdir(later, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(later, "leak2.txt")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(later, "fine.txt"), "a later file")
	if _, body := httpGet(t, base+"/leak2.txt"); string(body) != "from the app" {
		t.Errorf("GET /leak2.txt (under a root made after the load): %q, want it left to the app", body)
	}
	if _, body := httpGet(t, base+"/fine.txt"); string(body) != "a later file" {
		t.Errorf("GET /fine.txt (under a root made after the load): %q", body)
	}
	c.signal(syscall.SIGTERM)
	c.wait(10 * time.Second)
}

// binaryCopy is a copy of the Caddy binary that other users may run, for
// file capabilities, and the setcap program.
func binaryCopy(t *testing.T) (bin, setcap string) {
	t.Helper()
	setcap, err := exec.LookPath("setcap")
	if err != nil {
		t.Skip("setcap (libcap2-bin) is not installed")
	}
	bin = filepath.Join(sharedDir(t), "caddy")
	if out, err := exec.Command("cp", caddyBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return bin, setcap
}
