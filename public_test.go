package supervise

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// publicFor provisions supervise_public over a new directory with files.
func publicFor(t *testing.T, files map[string]string, setup func(*Public)) (*Public, string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, "public", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &Public{Root: filepath.Join(dir, "public")}
	if setup != nil {
		setup(p)
	}
	if err := p.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	return p, filepath.Join(dir, "public")
}

// serve sends a request through p; a request p hands on gets 418 from
// the next handler.
func serve(t *testing.T, p *Public, method, target string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	next := handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	if err := p.ServeHTTP(w, r, next); err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return w
}

type handlerFunc func(http.ResponseWriter, *http.Request) error

func (f handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func gz(t *testing.T, s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

func TestPublicServesFilesAndHandsOnTheRest(t *testing.T) {
	big := strings.Repeat("0123456789", 20_000) // above max_item_size: from disk
	p, root := publicFor(t, map[string]string{
		"robots.txt":          "User-agent: *\n",
		"assets/app-1.css":    "body{}",
		"assets/app-1.css.gz": gz(t, "body{}"),
		"big.txt":             big,
		".hidden":             "dot",
		"dir/index.html":      "index",
	}, func(p *Public) { p.MaxItemSize = 1000; p.Immutable = []string{"/assets/"} })
	if err := os.WriteFile(filepath.Join(filepath.Dir(root), "secret"), []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		method, target string
		header         []string
		status         int
		body           string
	}{
		{"GET", "/robots.txt", nil, 200, "User-agent: *\n"},
		{"HEAD", "/robots.txt", nil, 200, ""},
		{"POST", "/robots.txt", nil, 418, ""},         // the app's
		{"GET", "/missing", nil, 418, ""},             // the app's
		{"GET", "/dir", nil, 418, ""},                 // a directory: the app's
		{"GET", "/dir/", nil, 418, ""},                // the app's
		{"GET", "/../secret", nil, 418, ""},           // never outside the root
		{"GET", "/%2e%2e/secret", nil, 418, ""},       // decoded, the same
		{"GET", "/assets/../../secret", nil, 418, ""}, // cleaned, the same
		{"GET", "/big.txt", nil, 200, big},
		{"GET", "/big.txt", []string{"Range", "bytes=199990-"}, 206, "0123456789"},
		{"GET", "/robots.txt", []string{"Range", "bytes=0-9"}, 206, "User-agen"[:9] + "t"},
		{"GET", "/robots.txt", []string{"Range", "bytes=100-"}, 416, ""},
	} {
		w := serve(t, p, tc.method, tc.target, tc.header...)
		if w.Code != tc.status || (tc.body != "" && w.Body.String() != tc.body) {
			t.Errorf("%s %s %v: %d %q, want %d %q", tc.method, tc.target, tc.header, w.Code, cut(w.Body.String(), 40), tc.status, cut(tc.body, 40))
		}
	}

	// the precompressed variant, to a client that takes it
	w := serve(t, p, "GET", "/assets/app-1.css", "Accept-Encoding", "br;q=1, gzip;q=0.8")
	if w.Code != 200 || w.Header().Get("Content-Encoding") != "gzip" || w.Body.String() != gz(t, "body{}") ||
		w.Header().Get("Vary") != "Accept-Encoding" || !strings.Contains(w.Header().Get("Cache-Control"), "immutable") ||
		w.Header().Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("the gzip variant: %d %v", w.Code, w.Header())
	}
	for _, ae := range []string{"", "identity", "gzip;q=0", "*;q=0", "br"} {
		w := serve(t, p, "GET", "/assets/app-1.css", "Accept-Encoding", ae)
		if w.Header().Get("Content-Encoding") != "" || w.Body.String() != "body{}" || w.Header().Get("Vary") != "Accept-Encoding" {
			t.Errorf("Accept-Encoding %q: %v %q", ae, w.Header(), w.Body.String())
		}
	}
	if w := serve(t, p, "GET", "/robots.txt", "Accept-Encoding", "gzip"); w.Header().Get("Vary") != "Accept-Encoding" ||
		w.Header().Get("Cache-Control") != "" || w.Header().Get("Content-Encoding") != "" || w.Header().Get("Content-Length") != "14" {
		t.Errorf("a file with no variants, outside the immutable prefix: %v", w.Header())
	}

	// conditional requests
	w = serve(t, p, "GET", "/robots.txt")
	etag, modified := w.Header().Get("Etag"), w.Header().Get("Last-Modified")
	if etag == "" || modified == "" {
		t.Fatalf("no validators: %v", w.Header())
	}
	if w := serve(t, p, "GET", "/robots.txt", "If-None-Match", etag); w.Code != 304 {
		t.Errorf("If-None-Match: %d", w.Code)
	}
	if w := serve(t, p, "GET", "/robots.txt", "If-Modified-Since", modified); w.Code != 304 {
		t.Errorf("If-Modified-Since: %d", w.Code)
	}
	if w := serve(t, p, "GET", "/robots.txt", "Range", "bytes=0-3", "If-Range", `"other"`); w.Code != 200 {
		t.Errorf("If-Range with another ETag: %d, want the whole file", w.Code)
	}

	// a file that changes on disk: served anew, with a new ETag, though in
	// the cache; the same size and a new time too
	path := filepath.Join(root, "robots.txt")
	for i, content := range []string{"User-agent: x\n", "Disallow: /\n\n"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(time.Duration(i+1) * time.Hour)
		os.Chtimes(path, when, when)
		w := serve(t, p, "GET", "/robots.txt", "If-None-Match", etag)
		if w.Code != 200 || w.Body.String() != content || w.Header().Get("Etag") == etag {
			t.Errorf("after a change: %d %q %s", w.Code, w.Body.String(), w.Header().Get("Etag"))
		}
		etag = w.Header().Get("Etag")
	}
	// replaced by a new file (a deploy's rename), and removed
	next := filepath.Join(root, "robots.new")
	os.WriteFile(next, []byte("renamed in\n"), 0o644)
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if w := serve(t, p, "GET", "/robots.txt"); w.Body.String() != "renamed in\n" {
		t.Errorf("after a rename: %q", w.Body.String())
	}
	os.Remove(path)
	if w := serve(t, p, "GET", "/robots.txt"); w.Code != 418 {
		t.Errorf("a removed file: %d, want the app's", w.Code)
	}
}

// The cache holds at most cache_size bytes, the least recently used leaving.
func TestPublicCacheIsBounded(t *testing.T) {
	c := newFileCache(100, 60)
	dir := t.TempDir()
	info := func(name string, n int) os.FileInfo {
		path := filepath.Join(dir, name)
		os.WriteFile(path, bytes.Repeat([]byte("x"), n), 0o644)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	a, b, d := info("a", 40), info("b", 40), info("d", 40)
	c.put("a", a, make([]byte, 40))
	c.put("b", b, make([]byte, 40))
	c.get("a", a) // a is now the most recent
	c.put("d", d, make([]byte, 40))
	if _, ok := c.get("b", b); ok {
		t.Error("b, the least recently used, is still held")
	}
	if _, ok := c.get("a", a); !ok {
		t.Error("a left the cache")
	}
	if c.used > 100 {
		t.Errorf("%d bytes held, more than 100", c.used)
	}
	c.put("e", info("e", 70), make([]byte, 70))
	if _, ok := c.files["e"]; ok {
		t.Error("a file above max_item_size went in")
	}
}

// Bad options are errors that name the option and the value.
func TestPublicOptions(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"supervise_public public {\n cache_size lots\n}", `cache_size "lots"`},
		{"supervise_public public {\n max_item_size\n}", "wrong argument count"},
		{"supervise_public public {\n colour blue\n}", `unknown option "colour"`},
		{"supervise_public a b", "wrong argument count"},
	} {
		p := new(Public)
		if err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.src)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}
	p := &Public{Immutable: []string{"assets/"}}
	if err := p.Provision(caddy.Context{}); err == nil || !strings.Contains(err.Error(), `immutable "assets/"`) {
		t.Errorf("immutable without /: %v", err)
	}
	p = new(Public)
	if err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser("supervise_public {\n cache_size 0\n max_item_size 2KiB\n immutable /assets/ /packs/\n}")); err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(caddy.Context{}); err != nil || p.cache != nil || p.MaxItemSize != 2048 || len(p.Immutable) != 2 || !strings.HasSuffix(p.root, "public") {
		t.Errorf("%+v: %v", p, err)
	}
}

// A rewrite that keeps the size and restores the modification time (cp -p,
// rsync --inplace -t) and a same-size file renamed in with the old time are
// new versions: the change time and the inode tell (Linux).
func TestPublicSeesRewritesThatKeepSizeAndTime(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the change time is read on Linux")
	}
	p, root := publicFor(t, map[string]string{"app.js": "version-1"}, nil)
	path := filepath.Join(root, "app.js")
	fi, _ := os.Stat(path)
	if w := serve(t, p, "GET", "/app.js"); w.Body.String() != "version-1" {
		t.Fatalf("%q", w.Body.String())
	}
	old := serve(t, p, "GET", "/app.js").Header().Get("Etag")
	if err := os.WriteFile(path, []byte("VERSION-2"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	if w := serve(t, p, "GET", "/app.js", "If-None-Match", old); w.Code != 200 || w.Body.String() != "VERSION-2" || w.Header().Get("Etag") == old {
		t.Errorf("after a rewrite in place with the old time: %d %q, ETag %s", w.Code, w.Body.String(), w.Header().Get("Etag"))
	}
	next := filepath.Join(root, "app.new")
	os.WriteFile(next, []byte("version-3"), 0o644)
	os.Chtimes(next, fi.ModTime(), fi.ModTime())
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if w := serve(t, p, "GET", "/app.js"); w.Body.String() != "version-3" {
		t.Errorf("after a rename with the old time: %q", w.Body.String())
	}
}

// Headers: both variants (br first), Content-Length on an encoded response
// served from disk, no type guessed for an unknown extension, dotfiles
// served (as file_server), Accept-Ranges on the quick path.
func TestPublicHeaders(t *testing.T) {
	files := map[string]string{
		"app.css": "body{}", "app.css.br": "BR", "app.css.gz": "GZ",
		"upload":                   "<html><script>alert(1)</script></html>",
		".well-known/security.txt": "Contact: x",
	}
	for _, cache := range []int64{0, DefaultPublicCacheSize} {
		p, _ := publicFor(t, files, func(p *Public) { p.CacheSize = &cache })
		for _, tc := range []struct{ ae, body, enc string }{
			{"gzip, br", "BR", "br"}, {"gzip", "GZ", "gzip"}, {"br;q=0, gzip", "GZ", "gzip"}, {"zstd", "body{}", ""},
		} {
			w := serve(t, p, "GET", "/app.css", "Accept-Encoding", tc.ae)
			if w.Body.String() != tc.body || w.Header().Get("Content-Encoding") != tc.enc || w.Header().Get("Content-Length") != strconv.Itoa(len(tc.body)) {
				t.Errorf("cache %d, Accept-Encoding %q: %q %v", cache, tc.ae, w.Body.String(), w.Header())
			}
		}
		// a failed precondition on a variant: no body, and no length that says otherwise
		if w := serve(t, p, "GET", "/app.css", "Accept-Encoding", "gzip", "If-Match", `"other"`); w.Code != 412 ||
			(w.Header().Get("Content-Length") != "" && w.Header().Get("Content-Length") != strconv.Itoa(w.Body.Len())) {
			t.Errorf("cache %d, If-Match on a variant: %d, Content-Length %q, %d bytes", cache, w.Code, w.Header().Get("Content-Length"), w.Body.Len())
		}
		for _, method := range []string{"GET", "HEAD"} {
			w := serve(t, p, method, "/upload")
			if w.Header().Get("Content-Type") != "application/octet-stream" || w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Code != 200 {
				t.Errorf("cache %d, %s a file without an extension: %d %v", cache, method, w.Code, w.Header())
			}
			if w.Header().Get("Accept-Ranges") != "bytes" || w.Header().Get("Last-Modified") == "" {
				t.Errorf("cache %d, %s: %v", cache, method, w.Header())
			}
		}
		if w := serve(t, p, "GET", "/.well-known/security.txt"); w.Code != 200 || w.Body.String() != "Contact: x" {
			t.Errorf("a dotfile directory: %d", w.Code)
		}
	}
}

// Many requests at once, while a file changes: every answer is a whole
// version of the file, and the race detector sees the cache shared.
func TestPublicConcurrent(t *testing.T) {
	a, b := strings.Repeat("a", 5000), strings.Repeat("b", 7000)
	p, root := publicFor(t, map[string]string{"x.txt": a, "y.txt": "y"}, func(p *Public) { n := int64(6000); p.CacheSize = &n })
	var writer, readers sync.WaitGroup
	stop := make(chan struct{})
	writer.Add(1)
	go func() {
		defer writer.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			content := a
			if i%2 == 1 {
				content = b
			}
			tmp := filepath.Join(root, "x.tmp")
			os.WriteFile(tmp, []byte(content), 0o644)
			os.Rename(tmp, filepath.Join(root, "x.txt"))
		}
	}()
	for range 8 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range 200 {
				for _, target := range []string{"/x.txt", "/y.txt"} {
					r := httptest.NewRequest("GET", target, nil)
					w := httptest.NewRecorder()
					p.ServeHTTP(w, r, handlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
					if body := w.Body.String(); body != a && body != b && body != "y" {
						t.Errorf("%s: a torn answer of %d bytes", target, len(body))
					}
				}
			}
		}()
	}
	readers.Wait() // while the writer changed x.txt all along
	close(stop)
	writer.Wait()
	if p.cache.used > 6000 {
		t.Errorf("%d bytes held, more than cache_size", p.cache.used)
	}
}
