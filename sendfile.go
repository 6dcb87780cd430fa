package supervise

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Sendfile{})
	httpcaddyfile.RegisterHandlerDirective("supervise_sendfile", parseSendfile)
	httpcaddyfile.RegisterDirectiveOrder("supervise_sendfile", httpcaddyfile.Before, "reverse_proxy")
}

// Sendfile answers the app's X-Sendfile responses with the file they name,
// as Thruster does: it tells the app that it may (the request header
// `X-Sendfile-Type: X-Sendfile`, which replaces any the client sent), and
// when the app's response carries an `X-Sendfile` header, the app's body is
// dropped and the file is served in its place: GET and HEAD, ranges and
// conditional requests as Go's http.ServeContent answers them, through
// sendfile(2) where Caddy can, with the headers the app set (its
// `Content-Type`, `Content-Disposition`…; a file without a type from the
// app gets one from its extension, else `application/octet-stream` with
// `X-Content-Type-Options: nosniff`), and without the `X-Sendfile` header.
//
// The header's value is a file path, never a URL: it is opened exactly as
// the app wrote it. Nothing in it is percent-decoded, `?` and `#` are part
// of the name, and `..` is left to the file system, so a stored upload
// named `..%2F..%2Fconfig%2Fmaster.key` is served as itself. (Caddy's
// `rewrite` + `file_server` in a `handle_response` reads it as a URL: it
// decodes `%2F` into `/`, cuts at `?` and `#`, and file_server then resolves
// the `..` — the file served can be any other file.) The value must be an
// absolute path of a regular file: a missing file is answered 404 (as
// Thruster does), a file Caddy may not read 403, and any other value (a
// relative path, a NUL byte, a directory, a device or a FIFO, two
// X-Sendfile headers) 500; each is logged with the header's value. With
// `roots`, a file outside them is refused with 403, and so is a path that
// leads out of its root through `..` or a symbolic link.
//
// The app must be told to use the header: Rack::Sendfile no longer trusts
// the request header (Rack 2.2.22 and later), so a Rails app sets
// `config.action_dispatch.x_sendfile_header = "X-Sendfile"`.
//
// In the Caddyfile it is `supervise_sendfile`, which sorts itself right
// before `reverse_proxy`:
//
//	example.com {
//		supervise_sendfile {
//			root /srv/app/storage /srv/app/files
//		}
//		reverse_proxy {
//			dynamic supervise web
//		}
//	}
type Sendfile struct {
	// Roots confines the files served to these directories (absolute
	// paths): a value outside them, or one that leads out of its root
	// through `..` or a symbolic link, is refused with 403. Placeholders
	// are not expanded. Default: none, any absolute path (as Thruster).
	Roots []string `json:"roots,omitempty"`

	logger *zap.Logger
	roots  []*os.Root // Roots, opened when the config loads
}

// CaddyModule returns the Caddy module information.
func (Sendfile) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.supervise_sendfile",
		New: func() caddy.Module { return new(Sendfile) },
	}
}

// Provision checks the roots and opens them: a root is the directory its
// path names when the config loads (a directory moved or replaced there
// later, by a symbolic link say, is not followed: a reload follows it).
func (s *Sendfile) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	for i, root := range s.Roots {
		if !filepath.IsAbs(root) || strings.ContainsRune(root, 0) {
			return fmt.Errorf("supervise_sendfile: root %q: must be an absolute path", root)
		}
		s.Roots[i] = filepath.Clean(root)
		rt, err := os.OpenRoot(s.Roots[i])
		if err != nil {
			s.Cleanup()
			return fmt.Errorf("supervise_sendfile: root %q: %v", root, err)
		}
		s.roots = append(s.roots, rt)
	}
	return nil
}

// Cleanup closes the roots.
func (s *Sendfile) Cleanup() error {
	for _, rt := range s.roots {
		rt.Close()
	}
	s.roots = nil
	return nil
}

// ServeHTTP passes the request on, with the app told that it may answer
// with X-Sendfile, and serves the file if it does.
func (s *Sendfile) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	r.Header.Set("X-Sendfile-Type", "X-Sendfile")
	sw := &sendfileWriter{ResponseWriter: w}
	if err := next.ServeHTTP(sw, r); err != nil || sw.file == nil {
		return err
	}
	return s.serve(w, r, sw.file, sw.status)
}

// sendfileWriter passes the response on, unless its header carries
// X-Sendfile: then it writes nothing, and takes the header's values and
// the app's status.
type sendfileWriter struct {
	http.ResponseWriter
	file   []string // the X-Sendfile values of an intercepted response
	status int      // its status
	wrote  bool     // a final status went out, or was intercepted
}

// WriteHeader intercepts a final response with X-Sendfile; an
// informational one (1xx, a WebSocket's 101) goes out without it.
func (sw *sendfileWriter) WriteHeader(code int) {
	if sw.wrote {
		if sw.file == nil {
			sw.ResponseWriter.WriteHeader(code) // (net/http says it is superfluous)
		}
		return
	}
	h := sw.ResponseWriter.Header()
	if code >= 200 {
		sw.wrote = true
		if v, ok := h["X-Sendfile"]; ok {
			sw.file, sw.status = append(v[:0:0], v...), code
			delete(h, "X-Sendfile")
			return
		}
	}
	delete(h, "X-Sendfile")
	sw.ResponseWriter.WriteHeader(code)
}

// Write drops the app's body of an intercepted response.
func (sw *sendfileWriter) Write(p []byte) (int, error) {
	if !sw.wrote {
		sw.WriteHeader(http.StatusOK)
	}
	if sw.file != nil {
		return len(p), nil
	}
	return sw.ResponseWriter.Write(p)
}

// FlushError flushes, unless the response is intercepted: a flush would
// send its header.
func (sw *sendfileWriter) FlushError() error {
	if !sw.wrote {
		sw.WriteHeader(http.StatusOK)
	}
	if sw.file != nil {
		return nil
	}
	return http.NewResponseController(sw.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection (Hijack, for a
// WebSocket; deadlines).
func (sw *sendfileWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }

// fileHeaders describe the file a response carries: an error response
// drops those the app set for its file.
var fileHeaders = []string{"Content-Type", "Content-Disposition", "Content-Encoding", "Content-Length", "Content-Range",
	"Etag", "Last-Modified", "Accept-Ranges", "Cache-Control", "Expires"}

// serve answers r with the file that the X-Sendfile values name, with the
// app's status: a 200 as Go's http.ServeContent answers (ranges,
// conditional requests); another status (a page sent with 404, say) with
// the whole file; a status that has no body (204, 304) without it.
func (s *Sendfile) serve(w http.ResponseWriter, r *http.Request, values []string, status int) error {
	h := w.Header()
	h.Del("Content-Length") // the app's: of its empty body
	if status == http.StatusNoContent || status == http.StatusNotModified {
		w.WriteHeader(status)
		return nil
	}
	name := values[0]
	refuse := func(code int, why string) error {
		for _, k := range fileHeaders {
			h.Del(k)
		}
		log := s.logger.Error
		if code == http.StatusNotFound {
			log = s.logger.Warn
		}
		log("X-Sendfile: the app's file is not served", zap.Strings("x_sendfile", values), zap.Int("status", code), zap.String("why", why))
		return caddyhttp.Error(code, fmt.Errorf("X-Sendfile %q: %s", name, why))
	}
	switch {
	case len(values) > 1:
		return refuse(http.StatusInternalServerError, "the app sent more than one X-Sendfile header")
	case strings.ContainsRune(name, 0):
		return refuse(http.StatusInternalServerError, "a NUL byte in the path")
	case !filepath.IsAbs(name):
		return refuse(http.StatusInternalServerError, "not an absolute path (the value is a file path, not a URL)")
	}
	f, fi, err := s.open(name)
	if err != nil {
		switch {
		case errors.Is(err, errOutsideRoots):
			return refuse(http.StatusForbidden, err.Error())
		case errors.Is(err, errNotRegular) && fi != nil && fi.IsDir(), errors.Is(err, syscall.EISDIR):
			return refuse(http.StatusInternalServerError, "a directory, not a file")
		case errors.Is(err, errNotRegular) && fi != nil:
			return refuse(http.StatusInternalServerError, "not a regular file ("+fi.Mode().Type().String()+")")
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			return refuse(http.StatusNotFound, "no such file")
		case errors.Is(err, fs.ErrPermission):
			return refuse(http.StatusForbidden, "Caddy may not read it: "+err.Error())
		case errors.Is(err, syscall.ENXIO):
			return refuse(http.StatusInternalServerError, "not a regular file (a socket)")
		case len(s.Roots) > 0:
			return refuse(http.StatusForbidden, err.Error()) // os.Root: a .. or a symbolic link that leads out
		}
		return refuse(http.StatusInternalServerError, err.Error())
	}
	defer f.Close()
	if h.Get("Content-Type") == "" {
		setContentType(h, name)
	}
	if status != http.StatusOK {
		// the app's status, with the whole file
		h.Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
		w.WriteHeader(status)
		if r.Method != http.MethodHead {
			_, _ = io.Copy(w, f)
		}
		return nil
	}
	if h.Get("Etag") == "" {
		h.Set("Etag", etag(fi))
	}
	serveContent(w, r, name, fi, fi.Size(), f)
	return nil
}

// errOutsideRoots: a file outside the configured roots.
var errOutsideRoots = errors.New("outside the roots it may serve from")

// errNotRegular: a directory, a device, a FIFO or a socket, not a file.
var errNotRegular = errors.New("not a regular file")

// regularOnly takes a file just opened: it is kept if it is a regular
// file, and closed otherwise (errNotRegular, with what it is).
func regularOnly(f *os.File, err error) (*os.File, fs.FileInfo, error) {
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errNotRegular
	}
	if err != nil {
		f.Close()
		return nil, fi, err
	}
	return f, fi, nil
}

// open opens the file name as it is, for reading, if it is a regular
// file, within its root if roots are set, and never blocks or opens a
// device (see openRegular).
func (s *Sendfile) open(name string) (*os.File, fs.FileInfo, error) {
	if len(s.Roots) == 0 {
		return openRegular(name)
	}
	for i, root := range s.Roots {
		rel, ok := strings.CutPrefix(name, root)
		switch {
		case !ok:
			continue
		case strings.HasSuffix(root, string(filepath.Separator)): // "/", "C:\"
		case rel == "" || rel[0] != filepath.Separator:
			continue
		}
		rel = strings.TrimLeft(rel, string(filepath.Separator))
		if rel == "" {
			return nil, nil, syscall.EISDIR
		}
		// within a root, no device can be reached but one its owner made
		return regularOnly(s.roots[i].OpenFile(rel, os.O_RDONLY|openQuietly, 0))
	}
	return nil, nil, errOutsideRoots
}

// setContentType gives a file its type from its extension; a file whose
// extension has no known type is application/octet-stream, and the client
// is told not to guess one from its content (an uploaded HTML file is not
// served as a page).
func setContentType(h http.Header, name string) {
	if ctype := mime.TypeByExtension(filepath.Ext(name)); ctype != "" {
		h.Set("Content-Type", ctype)
		return
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("X-Content-Type-Options", "nosniff")
}

// serveContent answers r with a file's content, of size bytes, as Go's
// http.ServeContent does (ranges, conditional requests; sendfile(2) when
// content is an *os.File and the writer allows it). An encoded response
// (the file is a precompressed variant) gets its Content-Length here:
// ServeContent leaves it out when Content-Encoding is set.
func serveContent(w http.ResponseWriter, r *http.Request, name string, fi os.FileInfo, size int64, content io.ReadSeeker) {
	if h := w.Header(); h.Get("Content-Encoding") != "" && !hasConditions(r.Header) {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	http.ServeContent(w, r, name, fi.ModTime(), content)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	supervise_sendfile {
//		root <dir>...
//	}
//
// (A first argument of the directive that starts with / would be read by
// Caddy as a path matcher: roots go in the block.)
func (s *Sendfile) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.Errf("supervise_sendfile: takes no arguments, got %q (roots go in a block: root <dir>...)", d.Val())
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "root":
			roots := d.RemainingArgs()
			if len(roots) == 0 {
				return d.Err("supervise_sendfile: root: one or more directories are required")
			}
			s.Roots = append(s.Roots, roots...)
		default:
			return d.Errf("supervise_sendfile: unknown option %q (known: root)", d.Val())
		}
	}
	return nil
}

func parseSendfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(Sendfile)
	return s, s.UnmarshalCaddyfile(h.Dispenser)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Sendfile)(nil)
	_ caddy.CleanerUpper          = (*Sendfile)(nil)
	_ caddyhttp.MiddlewareHandler = (*Sendfile)(nil)
	_ caddyfile.Unmarshaler       = (*Sendfile)(nil)
)
