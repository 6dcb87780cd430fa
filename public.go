package supervise

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	caddy.RegisterModule(Public{})
	httpcaddyfile.RegisterHandlerDirective("supervise_public", parsePublic)
}

// Public serves the files of an app's public directory (Rails' public/)
// before a request reaches the app, and hands every other request on: a
// GET or HEAD whose path names a regular file under Root gets the file;
// anything else (another method, a directory, a path with no file) goes
// to the next handler, the app's reverse_proxy, with nothing added to its
// response. A request for the app costs one stat(2) of a path that does
// not exist.
//
// Every request checks the file on disk: one stat(2), and one for each
// precompressed variant (`FILE.br`, then `FILE.gz`) the client accepts. A
// file that changed (size, modification time, inode, and on Linux its
// change time) is read again; a file that is gone is not served. Small
// files are held in memory (`cache_size`, `max_item_size`), read in whole
// (at most four at once) and kept only if they did not change meanwhile;
// larger ones are served from disk (through sendfile(2) where Caddy can).
// Every file gets `Vary: Accept-Encoding`; a file whose extension has no
// known type is `application/octet-stream` with `X-Content-Type-Options:
// nosniff` (no type is guessed from its content).
// Ranges and conditional requests (`If-None-Match`, `If-Modified-Since`,
// `If-Range`) are answered as Go's http.ServeContent answers them, with an
// ETag made of the file's modification time, size, and (Unix) inode and
// change time.
//
// Thruster's cache holds cacheable responses of the app; this one holds
// files of public/ only: responses of the app are never cached.
//
//	supervise_public {
//		root /srv/app/public
//		cache_size 64MiB
//		max_item_size 1MiB
//		immutable /assets/
//	}
//
// In a Caddyfile the directive needs a place in the handler order (it is
// not one of Caddy's): `order supervise_public after encode` in the global
// options, or use it inside `route`. `supervise_public DIR` names a
// relative root; Caddy reads a first argument starting with / as a path
// matcher.
type Public struct {
	// Root is the directory whose files are served. Placeholders are not
	// expanded. Default: `public`.
	Root string `json:"root,omitempty"`

	// CacheSize is how many bytes of files the memory cache holds at most;
	// the least recently used files leave it first. 0 turns the cache off.
	// Default: 64 MiB (Thruster's CACHE_SIZE).
	CacheSize *int64 `json:"cache_size,omitempty"`

	// MaxItemSize is the size of the largest file the cache holds.
	// Default: 1 MiB (Thruster's MAX_CACHE_ITEM_SIZE).
	MaxItemSize int64 `json:"max_item_size,omitempty"`

	// Immutable lists path prefixes (such as `/assets/`) whose files are
	// fingerprinted: they get `Cache-Control: public, max-age=31536000,
	// immutable`. Default: none.
	Immutable []string `json:"immutable,omitempty"`

	root     string
	cache    *fileCache
	confined bool                     // files are opened within the root (see confine)
	rt       *atomic.Pointer[os.Root] // the root, once it exists (when confined)
}

// Defaults of Public, Thruster's.
const (
	DefaultPublicCacheSize   = 64 << 20
	DefaultPublicMaxItemSize = 1 << 20
)

// CaddyModule returns the Caddy module information.
func (Public) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.supervise_public",
		New: func() caddy.Module { return new(Public) },
	}
}

// Provision checks the options and makes the cache.
func (p *Public) Provision(caddy.Context) error {
	if p.Root == "" {
		p.Root = "public"
	}
	root, err := filepath.Abs(p.Root)
	if err != nil {
		return fmt.Errorf("supervise_public: root %q: %v", p.Root, err)
	}
	p.root = root
	size := int64(DefaultPublicCacheSize)
	if p.CacheSize != nil {
		size = *p.CacheSize
	}
	if size < 0 {
		return fmt.Errorf("supervise_public: cache_size %d: must not be negative", size)
	}
	if p.MaxItemSize < 0 {
		return fmt.Errorf("supervise_public: max_item_size %d: must not be negative", p.MaxItemSize)
	}
	if p.MaxItemSize == 0 {
		p.MaxItemSize = DefaultPublicMaxItemSize
	}
	for _, prefix := range p.Immutable {
		if !strings.HasPrefix(prefix, "/") {
			return fmt.Errorf("supervise_public: immutable %q: a path prefix starts with /", prefix)
		}
	}
	if size > 0 {
		p.cache = newFileCache(size, min(p.MaxItemSize, size))
	}
	return nil
}

// confine makes the handler open files within its root, following no
// symbolic link out of it (os.Root): an app of another user (see
// guardFiles) could otherwise link, anywhere below the root, any file
// Caddy may read. A root that does not exist yet is opened once it does.
func (p *Public) confine() error {
	if !p.confined {
		p.confined, p.rt = true, new(atomic.Pointer[os.Root])
	}
	if _, err := p.within(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("supervise_public: root %q: %v", p.Root, err)
	}
	return nil
}

// within is the confined root, opened the first time it exists.
func (p *Public) within() (*os.Root, error) {
	if rt := p.rt.Load(); rt != nil {
		return rt, nil
	}
	rt, err := os.OpenRoot(p.root)
	if err != nil {
		return nil, err
	}
	if !p.rt.CompareAndSwap(nil, rt) {
		rt.Close() // another request opened it first
	}
	return p.rt.Load(), nil
}

// Cleanup closes the confined root.
func (p *Public) Cleanup() error {
	if p.confined {
		if rt := p.rt.Load(); rt != nil {
			rt.Close()
		}
	}
	return nil
}

// stat describes the file rel (a clean path below the root, "/x/y").
func (p *Public) stat(rel string) (fs.FileInfo, error) {
	if !p.confined {
		return os.Stat(filepath.Join(p.root, filepath.FromSlash(rel)))
	}
	rt, err := p.within()
	if err != nil {
		return nil, err
	}
	return rt.Stat(strings.TrimPrefix(rel, "/"))
}

// open opens the regular file rel for reading (see openRegular).
func (p *Public) open(rel string) (*os.File, fs.FileInfo, error) {
	if !p.confined {
		return openRegular(filepath.Join(p.root, filepath.FromSlash(rel)))
	}
	rt, err := p.within()
	if err != nil {
		return nil, nil, err
	}
	return regularOnly(rt.OpenFile(strings.TrimPrefix(rel, "/"), os.O_RDONLY|openQuietly, 0))
}

// ServeHTTP serves the file the request names, or hands the request on.
func (p *Public) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return next.ServeHTTP(w, r)
	}
	urlPath := r.URL.Path
	if urlPath == "" || strings.HasSuffix(urlPath, "/") || strings.ContainsRune(urlPath, 0) {
		return next.ServeHTTP(w, r)
	}
	rel := path.Clean("/" + urlPath) // no .. leaves the root
	if filepath.Separator != '/' && strings.ContainsRune(rel, filepath.Separator) {
		return next.ServeHTTP(w, r) // Windows: a \ would be a separator
	}
	name := filepath.Join(p.root, filepath.FromSlash(rel))
	fi, err := p.stat(rel)
	if err != nil || !fi.Mode().IsRegular() {
		return next.ServeHTTP(w, r)
	}

	// a precompressed variant the client accepts, in our order of preference
	variant, vfi, encoding, vrel := name, fi, "", rel
	if ae := r.Header.Get("Accept-Encoding"); ae != "" {
		for _, enc := range precompressed {
			if !acceptsEncoding(ae, enc.name) {
				continue
			}
			if vi, err := p.stat(rel + enc.ext); err == nil && vi.Mode().IsRegular() {
				variant, vfi, encoding, vrel = name+enc.ext, vi, enc.name, rel+enc.ext
				break
			}
		}
	}

	var content io.ReadSeeker
	data, cached := p.cache.get(variant, vfi)
	size := int64(len(data))
	if cached {
		content = bytes.NewReader(data)
	} else {
		// opened only if it is still a regular file: never a FIFO (which
		// would wait for a writer) nor a device that replaced it meanwhile
		f, ofi, err := p.open(vrel)
		if err != nil && encoding != "" {
			// the variant went away meanwhile: the file itself
			variant, encoding = name, ""
			f, ofi, err = p.open(rel)
		}
		if err != nil {
			return next.ServeHTTP(w, r) // gone, or not a file, meanwhile
		}
		defer f.Close()
		vfi = ofi
		if data, cached = p.cache.load(variant, f, vfi); cached {
			content, size = bytes.NewReader(data), int64(len(data))
		} else {
			// from disk: ServeContent hands the *os.File to sendfile(2)
			// where it can; the size is what ServeContent will see
			if size, err = f.Seek(0, io.SeekEnd); err == nil {
				_, err = f.Seek(0, io.SeekStart)
			}
			if err != nil {
				return caddyhttp.Error(http.StatusInternalServerError, err)
			}
			content = f
		}
	}

	h := w.Header()
	h.Add("Vary", "Accept-Encoding") // as file_server's precompressed: any file may have variants
	if encoding != "" {
		h.Set("Content-Encoding", encoding)
	}
	setContentType(h, name) // (no type guessed from the content, which encode would do)
	h.Set("Etag", etag(vfi))
	for _, prefix := range p.Immutable {
		if strings.HasPrefix(rel, prefix) {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
			break
		}
	}
	if cached && !hasConditions(r.Header) {
		// the common case, without ServeContent's copy loop: the whole
		// file, in one write, with the headers ServeContent gives it
		if mt := vfi.ModTime(); !mt.IsZero() && !mt.Equal(time.Unix(0, 0)) {
			h.Set("Last-Modified", mt.UTC().Format(http.TimeFormat))
		}
		h.Set("Accept-Ranges", "bytes")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(data)
		}
		return nil
	}
	serveContent(w, r, name, vfi, size, content)
	return nil
}

// etag is a file version's entity tag: its modification time and size,
// and (Unix) a digest of its inode and change time, so that a rewrite that
// restores the modification time gets a new one.
func etag(fi os.FileInfo) string {
	tag := fmt.Sprintf(`"%x-%x`, fi.ModTime().UnixNano(), fi.Size())
	if id, ok := fileID(fi); ok {
		h := fnv.New32a()
		for _, v := range id {
			binary.Write(h, binary.LittleEndian, v)
		}
		tag += fmt.Sprintf("-%x", h.Sum32())
	}
	return tag + `"`
}

// hasConditions reports whether a request asks for a part or under a
// condition: ServeContent answers it.
func hasConditions(h http.Header) bool {
	for _, k := range []string{"Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// precompressed lists the variants looked for beside a file, preferred first.
var precompressed = []struct{ name, ext string }{{"br", ".br"}, {"gzip", ".gz"}}

// acceptsEncoding reports whether an Accept-Encoding header value accepts
// enc (or *) with a q-value above 0.
func acceptsEncoding(header, enc string) bool {
	star := false
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if coding != enc && coding != "*" {
			continue
		}
		ok := true
		for param := range strings.SplitSeq(params, ";") {
			if k, v, found := strings.Cut(strings.TrimSpace(param), "="); found && strings.EqualFold(k, "q") {
				q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				ok = err == nil && q > 0
			}
		}
		if coding == enc {
			return ok // an explicit entry wins over *
		}
		star = ok
	}
	return star
}

// sameFile reports whether a and b describe the same version of a file:
// same size and modification time, and (Unix) the same device, inode and
// change time, which a write sets even when it restores the modification
// time (cp -p, rsync --inplace -t).
func sameFile(a, b os.FileInfo) bool {
	if a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) {
		return false
	}
	ida, oka := fileID(a)
	idb, okb := fileID(b)
	return !oka || !okb || ida == idb
}

// fileCache holds the contents of small files, at most size bytes in all,
// the least recently used leaving first. An entry is good only for the
// version of the file it was read from.
type fileCache struct {
	mu      sync.Mutex
	size    int64 // bytes at most
	maxItem int64
	used    int64
	lru     list.List // of *cachedFile, most recently used first
	files   map[string]*list.Element
	loading map[string]bool // files being read in; at most maxLoads
}

// maxLoads is how many files are read into the cache at once; a request
// for a file that is not in it while as many loads run (or while its own
// load runs) is served from disk. The memory reads take beyond the cache's
// size is so bounded.
const maxLoads = 4

type cachedFile struct {
	name string
	info os.FileInfo
	data []byte
}

func newFileCache(size, maxItem int64) *fileCache {
	return &fileCache{size: size, maxItem: maxItem, files: make(map[string]*list.Element), loading: make(map[string]bool)}
}

// fits reports whether a file of n bytes goes into the cache.
func (c *fileCache) fits(n int64) bool { return c != nil && n <= c.maxItem }

// get returns the contents of file name in the version info describes.
func (c *fileCache) get(name string, info os.FileInfo) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.files[name]
	if !ok {
		return nil, false
	}
	f := e.Value.(*cachedFile)
	if !sameFile(f.info, info) {
		c.remove(e) // an older version
		return nil, false
	}
	c.lru.MoveToFront(e)
	return f.data, true
}

// load reads open file f, of name in the version info describes, into the
// cache and returns its contents; ok is false when the file does not go
// into the cache (too large, other loads running, or it changed while it
// was read): the caller serves it from disk.
func (c *fileCache) load(name string, f *os.File, info os.FileInfo) (data []byte, ok bool) {
	if !c.fits(info.Size()) {
		return nil, false
	}
	c.mu.Lock()
	if c.loading[name] || len(c.loading) >= maxLoads {
		c.mu.Unlock()
		return nil, false
	}
	c.loading[name] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.loading, name)
		c.mu.Unlock()
	}()
	data = make([]byte, info.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, false // truncated meanwhile
	}
	if after, err := f.Stat(); err != nil || !sameFile(after, info) {
		return nil, false // written meanwhile: what was read may be torn
	}
	c.put(name, info, data)
	return data, true
}

// put holds data, the contents of file name in the version info describes.
func (c *fileCache) put(name string, info os.FileInfo, data []byte) {
	if !c.fits(int64(len(data))) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.files[name]; ok {
		c.remove(e)
	}
	for c.used+int64(len(data)) > c.size {
		c.remove(c.lru.Back())
	}
	c.files[name] = c.lru.PushFront(&cachedFile{name: name, info: info, data: data})
	c.used += int64(len(data))
}

func (c *fileCache) remove(e *list.Element) {
	f := c.lru.Remove(e).(*cachedFile)
	delete(c.files, f.name)
	c.used -= int64(len(f.data))
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	supervise_public [<root>] {
//		root          <dir>
//		cache_size    <size>
//		max_item_size <size>
//		immutable     <prefix>...
//	}
func (p *Public) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		p.Root = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	size := func(option string) (int64, error) {
		if !d.NextArg() {
			return 0, d.ArgErr()
		}
		n, err := humanize.ParseBytes(d.Val())
		if err != nil || d.NextArg() {
			return 0, d.Errf("%s %q: want a size such as 64MiB", option, d.Val())
		}
		return int64(n), nil
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "root":
			if !d.AllArgs(&p.Root) {
				return d.ArgErr()
			}
		case "cache_size":
			n, err := size("cache_size")
			if err != nil {
				return err
			}
			p.CacheSize = &n
		case "max_item_size":
			n, err := size("max_item_size")
			if err != nil {
				return err
			}
			p.MaxItemSize = n
		case "immutable":
			prefixes := d.RemainingArgs()
			if len(prefixes) == 0 {
				return d.ArgErr()
			}
			p.Immutable = append(p.Immutable, prefixes...)
		default:
			return d.Errf("supervise_public: unknown option %q", d.Val())
		}
	}
	return nil
}

func parsePublic(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(Public)
	return p, p.UnmarshalCaddyfile(h.Dispenser)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Public)(nil)
	_ caddy.CleanerUpper          = (*Public)(nil)
	_ caddyhttp.MiddlewareHandler = (*Public)(nil)
	_ caddyfile.Unmarshaler       = (*Public)(nil)
)
