package supervise

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The one line sends files as they are through the kernel's sendfile: an
// X-Sendfile response of the app and a file of public/ too large for the
// memory cache (issue 20); a small file of public/ comes from memory, not
// opened again. Caddy
// 2.11.9's write_idle timeout wraps a file in a second io.LimitedReader,
// which keeps net/http off sendfile (every file went through a 32 KiB
// read/write loop); the one line relies on its hard write timeout instead,
// as Thruster does. Counted with strace: no sendfile call is a failure.
// The responses stay right: Content-Length, a range, a conditional request.
func TestOneLineSendsFilesWithSendfile(t *testing.T) {
	dir := railsDir(t)
	strace := needStrace(t)
	httpPort, adminPort := freePort(t), freePort(t)
	blob := filepath.Join(t.TempDir(), "blob.bin")
	blobData := bytes.Repeat([]byte("binary\x00\x01\x02"), 100_000) // compressible, but not a type encode compresses
	if err := os.WriteFile(blob, blobData, 0o644); err != nil {
		t.Fatal(err)
	}
	c := superviseCaddy(t, dir,
		[]string{"--ready", "/up", "--admin", fmt.Sprintf("127.0.0.1:%d", adminPort), "--output", "log"},
		[]string{"bin/rails", "server"},
		"HTTP_PORT="+strconv.Itoa(httpPort), "RAILS_ENV=production", "MAX_CACHE_ITEM_SIZE=16384", "BLOB_FILE="+blob)
	c.waitLog(`"to":"ready"`, 30*time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	report, err := os.ReadFile(filepath.Join(dir, "files", "report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string, header ...string) (*http.Response, []byte) {
		t.Helper()
		// as it is, nothing to compress, unless the test asks
		return httpGet(t, base+path, append([]string{"Accept-Encoding", "identity"}, header...)...)
	}

	for _, path := range []string{"/report", "/blob", "/assets/app-4567cdef.js"} {
		calls := countSyscalls(t, strace, c.cmd.Process.Pid, "sendfile", func() {
			for range 5 {
				resp, body := get(path)
				if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) {
					t.Fatalf("GET %s: %s, Content-Length %d, %d bytes", path, resp.Status, resp.ContentLength, len(body))
				}
			}
		})
		if calls == 0 {
			t.Errorf("GET %s: no sendfile call in Caddy: the file went through a copy loop", path)
		}
	}

	get("/robots.txt")
	// (only the file's own: Caddy opens other files now and then)
	if calls := countSyscalls(t, strace, c.cmd.Process.Pid, "openat", func() {
		for range 5 {
			if resp, body := get("/robots.txt"); resp.StatusCode != 200 || string(body) != "User-agent: *\n" {
				t.Fatalf("GET /robots.txt: %s %q", resp.Status, body)
			}
		}
	}, `"robots.txt"`, `/robots.txt"`); calls != 0 {
		t.Errorf("GET /robots.txt: %d openat calls in Caddy: it is not served from memory", calls)
	}

	// binary content is sent as it is, even to a client that takes gzip
	if resp, body := get("/blob", "Accept-Encoding", "gzip"); resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" ||
		resp.ContentLength != int64(len(blobData)) || !bytes.Equal(body, blobData) {
		t.Errorf("GET /blob: %s, Content-Encoding %q, Content-Length %d, %d bytes", resp.Status, resp.Header.Get("Content-Encoding"), resp.ContentLength, len(body))
	}

	resp, body := get("/report")
	if !bytes.Equal(body, report) || resp.Header.Get("Etag") == "" {
		t.Fatalf("GET /report: %d bytes (want %d), ETag %q", len(body), len(report), resp.Header.Get("Etag"))
	}
	if resp, _ := get("/report", "If-None-Match", resp.Header.Get("Etag")); resp.StatusCode != 304 {
		t.Errorf("GET /report with its ETag: %s, want 304", resp.Status)
	}
	if resp, body := get("/report", "Range", "bytes=70000-"); resp.StatusCode != 206 || !bytes.Equal(body, report[70000:]) {
		t.Errorf("GET /report from 70000: %s, %d bytes", resp.Status, len(body))
	}
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Errorf("exit status %d", code)
	}
}

// needStrace returns strace's path, or skips the test where strace is
// missing or cannot trace (not root, or a ptrace_scope that forbids it).
func needStrace(t *testing.T) string {
	path, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (scripts/deps.sh installs it)")
	}
	if out, err := exec.Command(path, "-e", "trace=none", "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here: %v: %s", err, out)
	}
	if os.Geteuid() != 0 {
		if scope, _ := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); strings.TrimSpace(string(scope)) != "0" {
			t.Skip("attaching to another process needs root, or ptrace_scope 0")
		}
	}
	return path
}

// countSyscalls counts the calls of syscall that process pid (all its
// threads) makes while fn runs; with matching, only those whose line in
// strace's output has one of these strings.
func countSyscalls(t *testing.T, strace string, pid int, syscall string, fn func(), matching ...string) int {
	t.Helper()
	out := filepath.Join(t.TempDir(), "strace")
	args := []string{"-f", "-c", "-e", "trace=" + syscall, "-o", out, "-p", strconv.Itoa(pid)}
	if len(matching) > 0 {
		args = slices.Delete(args, 1, 2) // each call, to match its arguments (a path relative to a directory's descriptor, too)
	}
	cmd := exec.Command(strace, args...)
	stderr := newLogBuf()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	if _, ok := stderr.waitFor("attached", 10*time.Second, exited); !ok {
		t.Fatalf("strace did not attach to %d: %s", pid, stderr)
	}
	fn()
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("strace did not end on SIGINT")
	}
	summary, _ := os.ReadFile(out)
	if len(matching) > 0 {
		n := 0
		for line := range strings.Lines(string(summary)) {
			if strings.Contains(line, syscall+"(") && slices.ContainsFunc(matching, func(m string) bool { return strings.Contains(line, m) }) {
				n++
			}
		}
		return n
	}
	for line := range strings.Lines(string(summary)) {
		// % time, seconds, usecs/call, calls, [errors,] syscall
		if f := strings.Fields(line); len(f) >= 5 && f[len(f)-1] == syscall {
			n, _ := strconv.Atoi(f[3])
			return n
		}
	}
	return 0
}
