// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
