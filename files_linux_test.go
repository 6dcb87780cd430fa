package supervise

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openRegular never opens what is not a regular file: a FIFO (or a device
// node) is looked at as a path only (O_PATH), which the kernel does not
// count as an open (no inotify IN_OPEN); a regular file is opened.
func TestOpenRegularNeverOpensAFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo, file := filepath.Join(dir, "fifo"), filepath.Join(dir, "file")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	opened := func(path string) bool {
		t.Helper()
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			t.Skipf("no inotify: %v", err)
		}
		defer unix.Close(fd)
		if _, err := unix.InotifyAddWatch(fd, path, unix.IN_OPEN); err != nil {
			t.Fatal(err)
		}
		if f, _, err := openRegular(path); err == nil {
			f.Close()
		}
		buf := make([]byte, 4096)
		n, _ := unix.Read(fd, buf)
		return n > 0
	}
	if opened(fifo) {
		t.Error("the FIFO was opened")
	}
	if !opened(file) {
		t.Error("the regular file was not opened (the check cannot see opens)")
	}
}
