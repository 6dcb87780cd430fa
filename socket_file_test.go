//go:build unix

package supervise

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// A unix socket's file gets the mode asked for (0600 by default) whatever
// the umask, from the moment it exists at its path; a file that is not a
// socket is never removed, neither one that was there before nor one that
// took the socket's place; a stale socket file is replaced; one another
// process listens on is left alone.
func TestSocketFiles(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	addr := func(path string) caddy.NetworkAddress {
		a, err := caddy.ParseNetworkAddress("unix/" + path)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	for _, mode := range []fs.FileMode{defaultSocketMode, 0o660} {
		path := filepath.Join(dir, "app.sock")
		s, err := openSocket(addr(path), mode)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != mode {
			t.Errorf("socket file: %v %v, want a socket with mode %o under umask 0", fi.Mode(), err, mode)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("the directory holds %v, want the socket alone", entries)
		}
		s.close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the socket file is left after close: %v", err)
		}
	}

	// a regular file where the socket goes: an error, and it stays
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openSocket(addr(regular), defaultSocketMode); err == nil {
		t.Error("a socket was opened over a regular file")
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Error("the regular file was removed or changed")
	}

	// a regular file that takes the socket's place while Caddy holds it
	// stays when the socket closes
	path := filepath.Join(dir, "replaced.sock")
	s, err := openSocket(addr(path), defaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.close()
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Error("close removed a file that is not its socket")
	}

	// a stale socket file is replaced; a live one is not touched
	stalePath := filepath.Join(dir, "stale.sock")
	stale, err := net.Listen("unix", stalePath)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	s, err = openSocket(addr(stalePath), defaultSocketMode)
	if err != nil {
		t.Fatalf("replacing a stale socket file: %v", err)
	}
	s.close()
	livePath := filepath.Join(dir, "live.sock")
	live, err := net.Listen("unix", livePath)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, err := openSocket(addr(livePath), defaultSocketMode); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("opening a socket another process listens on: %v, want address in use", err)
	}
	if c, err := net.Dial("unix", livePath); err != nil {
		t.Errorf("the other process's socket was harmed: %v", err)
	} else {
		c.Close()
	}
}

// A unix socket in a directory that other users may change is refused:
// one of them could put a socket of its own at the path, and Caddy would
// send the app's requests (cookies included) to it.
func TestSocketInAnOpenDirectory(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	p := &Process{Name: "web", Command: []string{"sleep", "60"}, Socket: "unix/" + filepath.Join(open, "app.sock")}
	if err := p.provision(0); err == nil || !strings.Contains(err.Error(), "could put a socket of its own at the path") {
		t.Errorf("a socket in a directory anyone may write: %v", err)
	}
	private := t.TempDir()
	p = &Process{Name: "web", Command: []string{"sleep", "60"}, Socket: "unix/" + filepath.Join(private, "app.sock")}
	if err := p.provision(0); err != nil {
		t.Errorf("a socket in a private directory: %v", err)
	}
	// through a symbolic link (/var/run → /run): what the link leads to,
	// and where the link is, decide
	held := filepath.Join(t.TempDir(), "run")
	if err := os.Symlink(private, held); err != nil {
		t.Fatal(err)
	}
	p = &Process{Name: "web", Command: []string{"sleep", "60"}, Socket: "unix/" + filepath.Join(held, "app.sock")}
	if err := p.provision(0); err != nil {
		t.Errorf("a socket through a link to a private directory: %v", err)
	}
	loose := filepath.Join(open, "run")
	if err := os.Symlink(private, loose); err != nil {
		t.Fatal(err)
	}
	p = &Process{Name: "web", Command: []string{"sleep", "60"}, Socket: "unix/" + filepath.Join(loose, "app.sock")}
	if err := p.provision(0); err == nil {
		t.Errorf("a socket through a link others may change was accepted")
	}
}
