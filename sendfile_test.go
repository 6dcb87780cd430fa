//go:build unix

package supervise

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// sendfileApp is a next handler that answers like Rack::Sendfile: the
// headers given, an X-Sendfile header per value, and a body that must not
// reach the client.
func sendfileApp(values []string, header ...string) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		h := w.Header()
		for i := 0; i+1 < len(header); i += 2 {
			h.Set(header[i], header[i+1])
		}
		for _, v := range values {
			h.Add("X-Sendfile", v)
		}
		h.Set("Content-Length", "14")
		w.WriteHeader(http.StatusOK)
		_, err := w.Write([]byte("the app's body"))
		return err
	})
}

// sendfileHandler is a provisioned handler with roots, and what it logs.
func sendfileHandler(t *testing.T, roots ...string) (*Sendfile, *observer.ObservedLogs) {
	t.Helper()
	s := &Sendfile{Roots: roots}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	s.logger = zap.New(core)
	return s, logs
}

// serveSendfile runs a request through s in front of next, and returns the
// response and the error Caddy would turn into a status.
func serveSendfile(t *testing.T, s *Sendfile, r *http.Request, next caddyhttp.Handler) (*httptest.ResponseRecorder, error) {
	t.Helper()
	w := httptest.NewRecorder()
	err := s.ServeHTTP(w, r, next)
	return w, err
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// X-Sendfile is a file path, not a URL: a stored upload whose name holds
// %2F, .., ? or # is served as itself, never as the file its decoded name
// would reach (config/master.key beside it).
func TestSendfileServesTheNameAsItIs(t *testing.T) {
	app := t.TempDir()
	writeFile(t, filepath.Join(app, "config", "master.key"), "SECRET master key")
	writeFile(t, filepath.Join(app, "uploads", "2", "secret.pdf"), "another user's file")
	for _, name := range []string{"..%2F..%2Fconfig%2Fmaster.key", "..%2F2%2Fsecret.pdf", "a#b", "a?b=c", "%2e%2e", "a%00b", "..%252F..%252Fconfig%252Fmaster.key"} {
		path := filepath.Join(app, "uploads", "1", name)
		writeFile(t, path, "the upload named "+name)
		for _, roots := range [][]string{nil, {filepath.Join(app, "uploads")}} {
			s, _ := sendfileHandler(t, roots...)
			w, err := serveSendfile(t, s, httptest.NewRequest("GET", "/download", nil), sendfileApp([]string{path}))
			if err != nil || w.Code != 200 || w.Body.String() != "the upload named "+name {
				t.Errorf("X-Sendfile %q (roots %v): %d %q %v, want the upload itself", path, roots, w.Code, w.Body.String(), err)
			}
		}
	}
}

// The app's headers stay, its body and X-Sendfile go; the file comes with
// its length, ranges and conditional requests work, HEAD gets no body; a
// client's X-Sendfile-Type is replaced.
func TestSendfileResponse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.txt")
	content := strings.Repeat("0123456789", 100)
	writeFile(t, path, content)
	s, _ := sendfileHandler(t)

	var sawType []string
	app := sendfileApp([]string{path}, "Content-Type", "text/plain", "Content-Disposition", `attachment; filename="report.txt"`, "X-App", "kept")
	spy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		sawType = r.Header.Values("X-Sendfile-Type")
		return app.ServeHTTP(w, r)
	})
	r := httptest.NewRequest("GET", "/report", nil)
	r.Header.Set("X-Sendfile-Type", "X-Accel-Redirect")
	w, err := serveSendfile(t, s, r, spy)
	switch {
	case err != nil || w.Code != 200 || w.Body.String() != content:
		t.Fatalf("GET: %d, %d bytes, %v", w.Code, w.Body.Len(), err)
	case len(sawType) != 1 || sawType[0] != "X-Sendfile":
		t.Errorf("the app got X-Sendfile-Type %q", sawType)
	case w.Header().Get("X-Sendfile") != "":
		t.Errorf("the client got X-Sendfile: %s", w.Header().Get("X-Sendfile"))
	case w.Header().Get("Content-Length") != "1000":
		t.Errorf("Content-Length %q, want 1000", w.Header().Get("Content-Length"))
	case w.Header().Get("Content-Type") != "text/plain" || w.Header().Get("X-App") != "kept" || !strings.Contains(w.Header().Get("Content-Disposition"), "report.txt"):
		t.Errorf("the app's headers: %v", w.Header())
	}
	etag := w.Header().Get("Etag")
	if etag == "" {
		t.Error("no ETag")
	}

	r = httptest.NewRequest("GET", "/report", nil)
	r.Header.Set("Range", "bytes=100-199")
	if w, err := serveSendfile(t, s, r, app); err != nil || w.Code != 206 || w.Body.String() != content[100:200] {
		t.Errorf("a range: %d %q %v", w.Code, w.Body.String(), err)
	}
	r = httptest.NewRequest("GET", "/report", nil)
	r.Header.Set("If-None-Match", etag)
	if w, err := serveSendfile(t, s, r, app); err != nil || w.Code != 304 || w.Body.Len() != 0 {
		t.Errorf("If-None-Match: %d %q %v", w.Code, w.Body.String(), err)
	}
	r = httptest.NewRequest("HEAD", "/report", nil)
	if w, err := serveSendfile(t, s, r, app); err != nil || w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "1000" {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q, %v", w.Code, w.Body.Len(), w.Header().Get("Content-Length"), err)
	}

	// a type from the extension when the app gives none; none guessed from content
	html := filepath.Join(dir, "upload")
	writeFile(t, html, "<html><script>alert(1)</script></html>")
	w, _ = serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), sendfileApp([]string{html}))
	if w.Header().Get("Content-Type") != "application/octet-stream" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("a file without an extension: Content-Type %q, X-Content-Type-Options %q", w.Header().Get("Content-Type"), w.Header().Get("X-Content-Type-Options"))
	}
	w, _ = serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), sendfileApp([]string{path}))
	if !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Errorf("a .txt without a type from the app: Content-Type %q", w.Header().Get("Content-Type"))
	}

	// a precompressed file the app names with its encoding (Rails' gzipped
	// assets): its own length, not the app's empty body's
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(content))
	_ = zw.Close()
	writeFile(t, path+".gz", gz.String())
	w, err = serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), sendfileApp([]string{path + ".gz"}, "Content-Encoding", "gzip", "Content-Type", "text/plain"))
	if err != nil || w.Header().Get("Content-Length") != strconv.Itoa(gz.Len()) || w.Body.Len() != gz.Len() {
		t.Errorf("an encoded file: Content-Length %q, %d bytes, want %d; %v", w.Header().Get("Content-Length"), w.Body.Len(), gz.Len(), err)
	}
}

// A response without X-Sendfile passes through as it is: status, body,
// flushes, informational responses (through a real server: a recorder
// does not keep 1xx apart).
func TestSendfilePassesOtherResponses(t *testing.T) {
	s, _ := sendfileHandler(t)
	flushed := make(chan struct{})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.Header().Set("X-Sendfile", "/etc/hostname") // never goes out, and serves nothing, on a 1xx
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("X-Sendfile")
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusTeapot)
		if err := http.NewResponseController(w).Flush(); err != nil {
			return err
		}
		<-flushed // the client has the header before the body
		_, err := w.Write([]byte("short and stout"))
		return err
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.ServeHTTP(w, r, next); err != nil {
			t.Error(err)
		}
	}))
	defer srv.Close()
	var hints []int
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, code)
			if v := h.Get("X-Sendfile"); v != "" {
				t.Errorf("a %d response carried X-Sendfile: %s", code, v)
			}
			return nil
		},
	}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	close(flushed)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot || string(body) != "short and stout" || len(hints) != 1 || hints[0] != 103 {
		t.Errorf("%s %q, informational %v", resp.Status, body, hints)
	}

	// a flush of an X-Sendfile response sends nothing of the app's
	flushing := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("X-Sendfile", "/nonexistent/file")
		w.WriteHeader(http.StatusOK)
		return http.NewResponseController(w).Flush()
	})
	w, err := serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), flushing)
	if w.Flushed || err == nil {
		t.Errorf("a flushed X-Sendfile response went out (flushed %v), or no error: %v", w.Flushed, err)
	}
}

// Values that are not an absolute path of a regular file the handler may
// serve get an error status, never another file, and a log entry that
// names the header; the app's file headers are not sent with the error.
func TestSendfileRefusals(t *testing.T) {
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	writeFile(t, filepath.Join(storage, "ok.txt"), "ok")
	writeFile(t, filepath.Join(dir, "secret.txt"), "secret")
	writeFile(t, filepath.Join(dir, "storage-evil", "x.txt"), "beside the root")
	if err := os.Symlink(filepath.Join(dir, "secret.txt"), filepath.Join(storage, "link")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(storage, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		values []string
		roots  []string
		status int
		why    string
	}{
		{"relative", []string{"storage/ok.txt"}, nil, 500, "not an absolute path"},
		{"url", []string{"/storage/ok.txt?x=1#y"}, nil, 404, "no such file"},
		{"NUL", []string{filepath.Join(storage, "ok.txt") + "\x00.jpg"}, nil, 500, "NUL"},
		{"directory", []string{storage}, nil, 500, "directory"},
		{"FIFO", []string{fifo}, nil, 500, "not a regular file"},
		{"device", []string{"/dev/zero"}, nil, 500, "not a regular file"},
		{"missing", []string{filepath.Join(storage, "gone.txt")}, nil, 404, "no such file"},
		{"under a file", []string{filepath.Join(storage, "ok.txt", "x")}, nil, 404, "no such file"},
		{"two headers", []string{filepath.Join(storage, "ok.txt"), filepath.Join(dir, "secret.txt")}, nil, 500, "more than one"},
		{"outside the root", []string{filepath.Join(dir, "secret.txt")}, []string{storage}, 403, "outside the roots"},
		{"a root's prefix", []string{filepath.Join(dir, "storage-evil", "x.txt")}, []string{storage}, 403, "outside the roots"},
		{"dot-dot out of the root", []string{storage + "/../secret.txt"}, []string{storage}, 403, ""},
		{"symlink out of the root", []string{filepath.Join(storage, "link")}, []string{storage}, 403, ""},
		{"the root itself", []string{storage + "/"}, []string{storage}, 500, ""},
		{"FIFO in the root", []string{filepath.Join(storage, "fifo")}, []string{storage}, 500, "not a regular file"},
		{"a root of /", []string{filepath.Join(storage, "ok.txt")}, []string{"/"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := sendfileHandler(t, tc.roots...)
			done := make(chan struct{})
			var w *httptest.ResponseRecorder
			var err error
			go func() {
				defer close(done)
				w, err = serveSendfile(t, s, httptest.NewRequest("GET", "/", nil),
					sendfileApp(tc.values, "Content-Type", "image/jpeg", "Content-Disposition", "attachment", "X-App", "kept"))
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the handler blocks") // a FIFO opened for reading without a writer
			}
			if tc.status == 0 {
				if err != nil || w.Body.String() != "ok" {
					t.Fatalf("got %d %q %v, want the file", w.Code, w.Body.String(), err)
				}
				return
			}
			var he caddyhttp.HandlerError
			if !errors.As(err, &he) || he.StatusCode != tc.status {
				t.Fatalf("got %v (body %q), want a %d", err, w.Body.String(), tc.status)
			}
			if w.Body.Len() != 0 || w.Code != 200 && w.Code != 0 && w.Code != tc.status {
				t.Errorf("something was written: %d %q", w.Code, w.Body.String())
			}
			for _, k := range []string{"Content-Type", "Content-Disposition", "X-Sendfile"} {
				if v := w.Header().Get(k); v != "" {
					t.Errorf("the error response keeps %s: %s", k, v)
				}
			}
			entries := logs.All()
			if len(entries) != 1 || !strings.Contains(entries[0].Message, "X-Sendfile") || !strings.Contains(entries[0].ContextMap()["why"].(string), tc.why) {
				t.Errorf("log: %+v", entries)
			} else if got := entries[0].ContextMap()["x_sendfile"]; got == nil {
				t.Errorf("the log entry does not name the header's value: %+v", entries[0].ContextMap())
			}
		})
	}
}

// A root must be an absolute path.
func TestSendfileRootsChecked(t *testing.T) {
	for _, root := range []string{"storage", "", "/a\x00b"} {
		s := &Sendfile{Roots: []string{root}}
		if err := s.Provision(caddy.Context{}); err == nil || !strings.Contains(err.Error(), "root") {
			t.Errorf("root %q: %v", root, err)
		}
	}
}

// The app's status stays: a file sent with 404 (a page) goes out whole
// with it; a 304 or 204 has no body, and no file is opened.
func TestSendfileKeepsTheAppsStatus(t *testing.T) {
	dir := t.TempDir()
	page := filepath.Join(dir, "404.html")
	writeFile(t, page, "<h1>not here</h1>")
	s, _ := sendfileHandler(t)
	app := func(status int, path string) caddyhttp.Handler {
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("X-Sendfile", path)
			w.WriteHeader(status)
			return nil
		})
	}
	r := httptest.NewRequest("GET", "/missing", nil)
	r.Header.Set("Range", "bytes=0-3") // (no range of a page with the app's status)
	w, err := serveSendfile(t, s, r, app(404, page))
	if err != nil || w.Code != 404 || w.Body.String() != "<h1>not here</h1>" || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Errorf("a page sent with 404: %d %q %q, %v", w.Code, w.Body.String(), w.Header().Get("Content-Type"), err)
	}
	if w, err := serveSendfile(t, s, httptest.NewRequest("HEAD", "/missing", nil), app(404, page)); err != nil || w.Code != 404 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "17" {
		t.Errorf("HEAD of a page sent with 404: %d %q %q, %v", w.Code, w.Body.String(), w.Header().Get("Content-Length"), err)
	}
	for _, status := range []int{304, 204} {
		w, err := serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), app(status, "/nonexistent"))
		if err != nil || w.Code != status || w.Body.Len() != 0 || w.Header().Get("X-Sendfile") != "" {
			t.Errorf("%d with X-Sendfile: %d %q %v", status, w.Code, w.Body.String(), err)
		}
	}
}

// A root is the directory its path named when the config loaded: one
// moved away and replaced by a symbolic link to / later serves nothing
// from /. A root that does not exist is an error at load.
func TestSendfileRootsAreHeld(t *testing.T) {
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	writeFile(t, filepath.Join(storage, "ok.txt"), "ok")
	s, _ := sendfileHandler(t, storage)
	defer s.Cleanup()
	if err := os.Rename(storage, storage+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", storage); err != nil {
		t.Fatal(err)
	}
	w, err := serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), sendfileApp([]string{filepath.Join(storage, "etc", "hostname")}))
	if err == nil || w.Body.Len() != 0 {
		t.Errorf("through a root swapped for a link to /: %d %q, %v", w.Code, w.Body.String(), err)
	}
	if w, err := serveSendfile(t, s, httptest.NewRequest("GET", "/", nil), sendfileApp([]string{filepath.Join(storage, "ok.txt")})); err != nil || w.Body.String() != "ok" {
		t.Errorf("a file of the root as it was at load: %d %q, %v", w.Code, w.Body.String(), err)
	}
	bad := &Sendfile{Roots: []string{filepath.Join(dir, "nonexistent")}}
	if err := bad.Provision(caddy.Context{}); err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("a root that does not exist: %v", err)
	}
}

// Files are opened only as files: a FIFO never blocks, a device is never
// opened (openRegular, which supervise_public uses too).
func TestOpenRegularOpensFilesOnly(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "tty")
	if err := os.Symlink("/dev/tty", link); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{fifo, "/dev/null", link, dir} {
		done := make(chan error, 1)
		go func() {
			f, _, err := openRegular(name)
			if f != nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s was opened", name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("opening %s blocks", name)
		}
	}
}
