package supervise

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Streams{})
	httpcaddyfile.RegisterHandlerDirective("supervise_streams", parseStreams)
	httpcaddyfile.RegisterDirectiveOrder("supervise_streams", httpcaddyfile.Before, "reverse_proxy")
}

// Streams is an HTTP handler that sees the streams of the requests it
// passes on to `reverse_proxy`: WebSockets (an upgraded connection, or a
// WebSocket over HTTP/2's extended CONNECT) and server-sent events (a
// response of type `text/event-stream`). It changes nothing in them; it
// lets this module
//
//   - count them per instance of a supervised process (the admin API and
//     metrics show them), so that an instance that a restart or a reload
//     replaces keeps serving its streams until they end, up to the
//     process's `stream_drain_timeout`, while new ones go to the new
//     instance;
//   - end them cleanly when they must end: a WebSocket gets a close frame
//     with code 1001 (going away), sent between two of the app's frames,
//     and an SSE response ends as a complete response (the chunked
//     terminator, or HTTP/2's END_STREAM), so that clients reconnect
//     instead of seeing a transport error. (A WebSocket over HTTP/2's or
//     HTTP/3's extended CONNECT ends with its stream, without a close
//     frame.) That happens when Caddy's exit drain begins (streams never
//     hold the drain), before an instance gets its stop signal, and at
//     `stream_drain_timeout`.
//
// In the Caddyfile it is `supervise_streams`, which sorts itself right
// before `reverse_proxy`:
//
//	example.com {
//		supervise_streams
//		reverse_proxy {
//			dynamic supervise web
//			stream_close_delay 5m
//		}
//	}
//
// (`stream_close_delay` keeps a reload of the config from closing the
// WebSockets: Caddy closes the upgraded connections of a config it unloads
// unless told to wait.) It has no options.
type Streams struct{}

// CaddyModule returns the Caddy module information.
func (Streams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.supervise_streams",
		New: func() caddy.Module { return new(Streams) },
	}
}

// ServeHTTP passes the request on with a response writer that notices a
// stream, and a context that can end it. An SSE response that this module
// ends makes reverse_proxy abort its handler (its read from the app was
// cancelled): that abort is taken back here, so that the response ends as
// a complete one.
func (Streams) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (err error) {
	if streamOf(r) != nil {
		return next.ServeHTTP(w, r) // a second supervise_streams on the way: the first one sees it
	}
	st := &stream{upgrade: wantsWebSocket(r), connect: isExtendedConnect(r)}
	st.ResponseWriter = w
	st.ctx.Context, st.cancel = context.WithCancel(r.Context())
	st.ctx.st = st
	defer func() {
		if st.ended.Load() {
			if p := recover(); p != nil && p != http.ErrAbortHandler {
				panic(p)
			}
			err = nil
		}
		st.outcome(err)
		st.finish()
	}()
	st.handleResponse = r.Context().Value(handleResponseKey)
	r = r.WithContext(&st.ctx)
	st.keepForResend(r)
	err = next.ServeHTTP(st, r)
	if st.mustResend(err) {
		// the new release of a canary window failed a safe request: the
		// old one gets it (see canary.go)
		st.statusCame()
		err = next.ServeHTTP(st, st.sendAgain())
	} else if st.heldBack {
		err = st.heldBackError() // it could not be sent again: the client gets the status
	}
	return err
}

// outcome is how a request ended, for its instance's count: the app
// answered (any status below 500), answered 5xx, or failed to answer (a
// connection refused or cut, a timeout: reverse_proxy's error). A client
// that went away fails nothing; an attempt that reverse_proxy retried
// elsewhere failed (see admit).
type outcome uint8

const (
	answered outcome = iota
	serverError
	noAnswer
	clientGone // (not shown: a canary's count of the requests that ended needs it)
	numOutcomes
)

// outcomeNames are the outcomes' names in the admin API and metrics.
var outcomeNames = [numOutcomes]string{"ok", "5xx", "failed", ""}

// outcome counts how the request ended on the instance that took it last.
func (st *stream) outcome(err error) {
	if st.inst == nil {
		return
	}
	st.statusCame()
	var he caddyhttp.HandlerError
	switch {
	case st.status == 499, err != nil && errors.As(err, &he) && he.StatusCode == 499, err != nil && st.ctx.Context.Err() != nil && st.status == 0:
		st.inst.outcomes[clientGone].Add(1) // the client went away (reverse_proxy writes 499 then)
	case err != nil && st.status == 0:
		st.inst.outcomes[st.attemptOutcome(false)].Add(1)
	case st.status >= 500:
		st.inst.outcomes[serverError].Add(1)
	case st.status != 0 || err == nil:
		st.inst.outcomes[answered].Add(1)
	}
}

// attemptOutcome is how reverse_proxy's last attempt ended when it wrote
// no response: with the app's status if the app answered (an answer its
// lb_retry_match rejected, or a handle_response route that failed), else
// no answer. forget clears that status for the next attempt (a retry):
// reverse_proxy leaves it set.
func (st *stream) attemptOutcome(forget bool) outcome {
	repl, _ := st.ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return noAnswer
	}
	const key = "http.reverse_proxy.status_code"
	code, ok := repl.Get(key)
	if forget {
		repl.Delete(key)
	}
	switch n, _ := code.(int); {
	case !ok || n == 0:
		return noAnswer
	case n >= 500:
		return serverError
	}
	return answered
}

// handleResponseKey is the context key reverse_proxy sets for the routes
// of its handle_response.
var handleResponseKey = caddy.CtxKey("reverse_proxy_handle_response_context")

// innerProxy reports whether the dynamic upstream is asked by a
// reverse_proxy inside a handle_response of the request's own proxy (not
// by the request's own attempt): its context has a handle_response context
// other than the one the request reached supervise_streams with (that of
// a forward_auth before it, say).
func (st *stream) innerProxy(r *http.Request) bool {
	v := r.Context().Value(handleResponseKey)
	return v != nil && v != st.handleResponse
}

// awaitStatus: the request's attempt that begins (GET, HEAD, OPTIONS)
// waits for the status of the instance it was sent to; statusCame: it got one, or the attempt
// ended without one. Each instance counts both (awaited, answered), so
// that a canary's verdict can tell a request that has waited long for an
// answer (a release that hangs) from one that streams a long response: see
// canaryWindow.sampleOverdue.
func (st *stream) awaitStatus() {
	st.waits = st.inst
	st.inst.awaited.Add(1)
}

func (st *stream) statusCame() {
	if st.waits != nil {
		st.waits.answered.Add(1)
		st.waits = nil
	}
}

// wantsWebSocket reports whether r asks for a WebSocket: an HTTP/1.1
// upgrade to websocket, or an extended CONNECT (HTTP/2, HTTP/3). Other
// upgrades pass through as ordinary requests.
func wantsWebSocket(r *http.Request) bool {
	if isExtendedConnect(r) {
		return true
	}
	for _, v := range r.Header["Upgrade"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "websocket") {
				return true
			}
		}
	}
	return false
}

// isExtendedConnect reports whether r is a WebSocket over HTTP/2 or
// HTTP/3 (RFC 8441, RFC 9220): its frames go through the response's Write.
func isExtendedConnect(r *http.Request) bool {
	return r.Method == http.MethodConnect && (r.Header.Get(":protocol") == "websocket" || r.Proto == "websocket")
}

// streamKind is what a request turned out to be.
type streamKind uint8

const (
	notStream streamKind = iota
	wsStream
	sseStream
)

// stream is one request through the handler, and the stream it may become.
type stream struct {
	caddyhttp.ResponseWriterWrapper
	ctx     streamCtx
	cancel  context.CancelFunc
	upgrade bool        // the request asks for a WebSocket
	connect bool        // over HTTP/2's or HTTP/3's extended CONNECT: its frames go through Write
	inst    *instance   // the instance the dynamic upstream sent it to (see admit); nil if none
	uncount func() bool // stops counting the request on inst (a retry goes to another instance)
	kind    streamKind
	ws      *wsTunnel // an upgraded WebSocket's way to the client
	ended   atomic.Bool
	picked  bool      // endStreams chose it: its end is on its way; guarded by openStreams
	status  int       // the response's final status, once written (0 before)
	waits   *instance // the instance whose status the request waits for (see awaitStatus)

	handleResponse any // reverse_proxy's handle_response context the request came with (forward_auth's), if any

	// a canary window (see canary.go)
	setCookie string       // the cookie that keeps the client on the release it was sent to
	onCanary  bool         // the attempt that runs went to the new release
	entry     *entryState  // the request as it came, while a window is open, if it may be sent again
	body      *countedBody // its body, if it has one of unknown length
	armed     bool         // the attempt that runs may be taken back, and the request sent again
	heldBack  bool         // that attempt answered 5xx: its response is dropped
	heldCode  int          // with that status
	replayed  bool         // it was sent again
}

// streamCtx is the request's context: it can be cancelled (an SSE
// response that must end), and it leads the dynamic upstream to the
// stream (admit records the instance).
type streamCtx struct {
	context.Context
	st *stream
}

type streamKey struct{}

func (c *streamCtx) Value(key any) any {
	if key == (streamKey{}) {
		return c.st
	}
	return c.Context.Value(key)
}

// streamOf returns the stream a request belongs to, or nil.
func streamOf(r *http.Request) *stream {
	st, _ := r.Context().Value(streamKey{}).(*stream)
	return st
}

// waitingForApp: the request is about to wait for the app, up to left:
// the write deadline moves past the wait now, before the wait, because
// HTTP/2 resets a stream whose write timer fired, and a deadline set after
// that cannot undo it (HTTP/1 would take it later, as waitedForApp sets it).
func (st *stream) waitingForApp(left time.Duration) {
	st.moveWriteDeadline(max(left, 0), 0)
}

// waitedForApp: the request waited for the app (it booted or restarted),
// for waited: the server's write timeout counts again from now, when the
// request goes to the app (or gets its 503), so that the time it waited
// does not cut its response — an empty reply that the access log would
// show with the app's status.
func (st *stream) waitedForApp(waited time.Duration) {
	st.moveWriteDeadline(0, waited)
}

// moveWriteDeadline sets the response's write deadline to the server's
// write timeout from now, plus wait, on every layer that holds one: the
// connection or stream (HTTP/1, HTTP/2, HTTP/3), and the ceiling that
// Caddy's write_idle writer keeps (its hard deadline, counted from the
// request's arrival, capped every write's idle deadline: a body written
// after a wait longer than the write timeout failed at its first write).
// waited moves the start of its write_min_rate allowance by as much.
func (st *stream) moveWriteDeadline(wait, waited time.Duration) {
	srv, _ := st.ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.WriteTimeout <= 0 {
		return
	}
	deadline := time.Now().Add(wait + time.Duration(srv.WriteTimeout))
	if _, iw := caddyhttp.IdleTimeoutsFromContext(&st.ctx); iw != nil {
		// (the handler's goroutine, before any write: nothing else uses it)
		if !iw.Deadline.HardDeadline.IsZero() {
			iw.Deadline.HardDeadline = deadline
		}
		if iw.Deadline.MinRate > 0 {
			iw.Deadline.Start = iw.Deadline.Start.Add(waited)
		}
	}
	_ = http.NewResponseController(st.ResponseWriter).SetWriteDeadline(deadline)
}

// WriteHeader notices an SSE response, and a WebSocket over HTTP/2 or
// HTTP/3.
func (st *stream) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		st.statusCame()
	}
	if st.armed && code >= 500 && st.status == 0 {
		st.heldBack, st.heldCode = true, code // (see canary.go)
		return
	}
	if st.setCookie != "" && (code >= 200 || code == http.StatusSwitchingProtocols) {
		st.Header().Add("Set-Cookie", st.setCookie)
		st.setCookie = ""
	}
	if st.status == 0 && code >= 200 {
		st.status = code
	}
	if st.kind == notStream && code >= 200 && code < 300 {
		switch {
		case st.connect && code == http.StatusOK:
			st.open(wsStream) // its frames go through Write; it ends with its stream
		case isEventStream(st.Header().Get("Content-Type")):
			st.open(sseStream)
		}
	}
	st.ResponseWriter.WriteHeader(code)
}

// Write writes the response's body, unless it is held back (see
// WriteHeader).
func (st *stream) Write(p []byte) (int, error) {
	if st.heldBack {
		return len(p), nil
	}
	return st.ResponseWriter.Write(p)
}

// ReadFrom is Write's, from a reader.
func (st *stream) ReadFrom(r io.Reader) (int64, error) {
	if st.heldBack {
		return io.Copy(io.Discard, r)
	}
	return st.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError flushes the response, unless it is held back.
func (st *stream) FlushError() error {
	if st.heldBack {
		return nil
	}
	return http.NewResponseController(st.ResponseWriter).Flush()
}

// Hijack hands over the client's connection, for a WebSocket through a
// tunnel that sees its frames.
func (st *stream) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(st.ResponseWriter).Hijack()
	if err != nil || !st.upgrade || st.connect || st.kind != notStream {
		return conn, brw, err
	}
	t := &wsTunnel{raw: conn.Write, cut: func() { conn.Close(); st.cancel() }}
	st.ws = t
	st.open(wsStream)
	return &wsConn{Conn: conn, t: t}, brw, nil
}

// isEventStream reports whether a Content-Type is text/event-stream.
func isEventStream(ct string) bool {
	const sse = "text/event-stream"
	return len(ct) >= len(sse) && strings.EqualFold(ct[:len(sse)], sse) && (len(ct) == len(sse) || ct[len(sse)] == ';' || ct[len(sse)] == ' ')
}

// openStreams is every open stream of the Caddy process.
var openStreams = struct {
	sync.Mutex
	set     map[*stream]struct{}
	exiting bool // Caddy's exit drain began: streams end as they open
}{set: make(map[*stream]struct{})}

// open makes the request a stream: counted, and ended at once if its
// instance's streams (or all) are ending.
func (st *stream) open(kind streamKind) {
	openStreams.Lock()
	st.kind = kind
	openStreams.set[st] = struct{}{}
	end := openStreams.exiting
	in := st.inst
	if in != nil {
		in.countStream(kind, 1)
		end = end || in.streamsEnding
	}
	openStreams.Unlock()
	if in != nil {
		in.becameStream()
	}
	if end {
		st.end()
	}
}

// finish: the handler is done with the request.
func (st *stream) finish() {
	if st.kind != notStream {
		openStreams.Lock()
		delete(openStreams.set, st)
		openStreams.Unlock()
		if st.inst != nil {
			st.inst.countStream(st.kind, -1) // before the request's end (cancel): streams ≤ requests
		}
		if st.ws != nil {
			st.ws.stopCut()
		}
	}
	st.cancel()
}

// end ends the stream cleanly, once; it does not wait, and it reports
// whether it did anything.
func (st *stream) end() bool {
	if st.ended.Swap(true) {
		return false
	}
	if st.ws != nil {
		st.ws.end()
		return true
	}
	// an SSE response (or a WebSocket over extended CONNECT): reverse_proxy's
	// read from the app ends, and ServeHTTP ends the response. (A write to
	// a client that reads nothing is bounded by Caddy's write timeouts: a
	// deadline set from here would race with Caddy's write_idle writer.)
	st.cancel()
	return true
}

// endStreams ends the open streams of instance in (every stream if in is
// nil: Caddy exits), and every stream that opens on it from now on. With
// a spread, the ends are spread evenly over it, so that their clients do
// not all reconnect at once; without, they all end now. It returns how
// many it ends (not counting those on their way already); it does not
// wait for them.
func endStreams(in *instance, spread time.Duration) int {
	var list []*stream
	n := 0
	openStreams.Lock()
	if in == nil {
		openStreams.exiting = true
	} else {
		in.streamsEnding = true
	}
	for st := range openStreams.set {
		if (in == nil || st.inst == in) && !st.ended.Load() && (spread == 0 || !st.picked) {
			list = append(list, st)
			if !st.picked {
				st.picked = true // its end is on its way: counted once
				n++
			}
		}
	}
	openStreams.Unlock()
	for i, st := range list {
		at := spread * time.Duration(i) / time.Duration(len(list))
		if at == 0 {
			st.end()
			continue
		}
		time.AfterFunc(at, func() {
			openStreams.Lock()
			due := openStreams.exiting || in != nil && in.streamsEnding // (a put-back instance keeps them)
			st.picked = due
			openStreams.Unlock()
			if due {
				st.end() // (a stream that ended meanwhile: nothing to do)
			}
		})
	}
	return n
}

// becameStream: a request of in, counted as a stream now, may be what a
// roll waits for: if in left service and serves only streams, the loop
// looks again (oldsLeft). It posts without waiting: a request's path.
func (in *instance) becameStream() {
	if !in.accepting.Load() && in.inflight.Load() == in.streams.Load() {
		in.svc.w.postLater(in.svc, instanceIdle{in})
	}
}

// streamCounts are the open streams of an instance, by kind.
type streamCounts struct {
	WebSockets int `json:"websockets"`
	SSE        int `json:"sse"`
}

// countStream counts a stream of the instance that opens (+1) or ends
// (-1).
func (in *instance) countStream(kind streamKind, delta int64) {
	in.streams.Add(delta)
	if kind == wsStream {
		in.wsStreams.Add(delta)
	}
}

// openStreamCounts are the instance's open streams now.
func (in *instance) openStreamCounts() streamCounts {
	ws := in.wsStreams.Load()
	return streamCounts{WebSockets: int(ws), SSE: int(in.streams.Load() - ws)}
}

// wsCloseWait is how long a WebSocket that this module closes may take
// to finish its closing handshake (the client answers the close frame, the
// answer reaches the app, the app closes) before both connections are
// cut.
const wsCloseWait = 2 * time.Second

// wsTunnel is the way of a WebSocket's frames from the app to the client.
// It follows the frames, so that a close frame of its own goes between
// two of them; after it, what the app still sends is dropped (an endpoint
// sends nothing after its close frame).
type wsTunnel struct {
	raw  func([]byte) (int, error) // write to the client
	cut  func()                    // end both connections at once
	wait time.Duration             // how long the closing handshake may take (0: wsCloseWait)

	ending atomic.Bool // end was called: the close frame goes at the next frame boundary

	mu     sync.Mutex // one write at a time
	frames wsFrames
	closed bool // the close frame went out

	timerMu sync.Mutex
	timer   *time.Timer
	done    bool
}

// closeGoingAway is a close frame (unmasked: from the server) with code
// 1001, going away.
var closeGoingAway = []byte{0x88, 0x02, 0x03, 0xe9}

// write writes what the app sends, up to the end of its close frame (an
// endpoint sends nothing after its close frame). Once the tunnel is ending,
// it writes up to the end of the current frame, then the close frame; at a
// frame boundary, the close frame goes at once.
func (t *wsTunnel) write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ending := t.ending.Load()
	if !t.closed && ending && t.frames.boundary() {
		t.closeIfBoundary()
	}
	if t.closed {
		return len(p), nil
	}
	k := t.frames.feed(p, ending)
	if n, err := t.raw(p[:k]); err != nil {
		return n, err
	}
	if t.frames.closed {
		t.closed = true // the app's own close frame: nothing goes after it
	} else {
		t.closeIfBoundary()
	}
	return len(p), nil
}

// closeIfBoundary sends the close frame if the tunnel is ending and the
// last frame is complete. The caller holds mu.
func (t *wsTunnel) closeIfBoundary() {
	if t.closed || t.frames.closed || !t.ending.Load() || !t.frames.boundary() {
		return
	}
	t.closed = true
	_, _ = t.raw(closeGoingAway)
}

// end starts the closing handshake: the close frame goes out now, or
// once the app's current frame is complete; after wsCloseWait both
// connections are cut, whatever happened.
func (t *wsTunnel) end() {
	t.ending.Store(true)
	t.timerMu.Lock()
	if !t.done {
		wait := t.wait
		if wait == 0 {
			wait = wsCloseWait
		}
		t.timer = time.AfterFunc(wait, t.cut)
	}
	t.timerMu.Unlock()
	go func() { // a write to a slow client may hold mu
		t.mu.Lock()
		t.closeIfBoundary()
		t.mu.Unlock()
	}()
}

// stopCut: the WebSocket is over; nothing is left to cut.
func (t *wsTunnel) stopCut() {
	t.timerMu.Lock()
	t.done = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.timerMu.Unlock()
}

// wsConn is the client's hijacked connection, seen through its tunnel.
// Only net.Conn's methods are promoted (no ReadFrom): every write goes
// through Write.
type wsConn struct {
	net.Conn
	t *wsTunnel
}

func (c *wsConn) Write(p []byte) (int, error) { return c.t.write(p) }

// CloseWrite (the app closed its side) and Close send a pending close
// frame first: the client sees the close frame, not a cut.
func (c *wsConn) CloseWrite() error {
	c.t.mu.Lock()
	c.t.closeIfBoundary()
	c.t.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *wsConn) Close() error {
	if c.t.mu.TryLock() { // never wait for a write to a client that reads nothing
		c.t.closeIfBoundary()
		c.t.mu.Unlock()
	}
	return c.Conn.Close()
}

// wsFrames follows the WebSocket frames of a byte stream (RFC 6455,
// section 5.2): where one ends and the next begins.
type wsFrames struct {
	hdr    [14]byte // the current frame's header so far
	hn     int      // its bytes seen
	need   int      // its length, once its first two bytes are in
	left   uint64   // payload bytes of the current frame still to come
	close  bool     // the current frame is a close frame
	closed bool     // a close frame went by, whole
}

// boundary reports whether the bytes so far end with a complete frame.
func (f *wsFrames) boundary() bool { return f.hn == 0 && f.left == 0 }

// feed follows the frames in p and returns how many bytes it took: up to
// the end of the first close frame that ends in p (nothing goes after a
// close frame), or, if stop, of the first frame that ends in p; else all
// of p.
func (f *wsFrames) feed(p []byte, stop bool) int {
	n := 0
	for n < len(p) {
		if f.left > 0 {
			k := uint64(len(p) - n)
			if k > f.left {
				k = f.left
			}
			n += int(k)
			f.left -= k
			if f.left == 0 {
				f.closed = f.closed || f.close
				if stop || f.close {
					return n
				}
			}
			continue
		}
		f.hdr[f.hn] = p[n]
		f.hn++
		n++
		if f.hn == 2 {
			f.need = 2
			switch f.hdr[1] & 0x7f {
			case 126:
				f.need += 2
			case 127:
				f.need += 8
			}
			if f.hdr[1]&0x80 != 0 {
				f.need += 4 // masking key
			}
		}
		if f.hn < 2 || f.hn < f.need {
			continue
		}
		switch l := f.hdr[1] & 0x7f; l {
		case 126:
			f.left = uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
		case 127:
			f.left = binary.BigEndian.Uint64(f.hdr[2:10])
		default:
			f.left = uint64(l)
		}
		f.hn, f.need = 0, 0
		f.close = f.hdr[0]&0x0f == 0x8
		if f.left == 0 {
			f.closed = f.closed || f.close
			if stop || f.close {
				return n
			}
		}
	}
	return n
}

// parseStreams sets up the handler from Caddyfile tokens.
func parseStreams(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var s Streams
	return s, s.UnmarshalCaddyfile(h.Dispenser)
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = Streams{}
	_ http.Hijacker               = (*stream)(nil)
	_ caddyfile.Unmarshaler       = (*Streams)(nil)
)

// UnmarshalCaddyfile reads the directive, which has no options:
//
//	supervise_streams
func (s *Streams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.Errf("supervise_streams: takes no arguments, got %q", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("supervise_streams: takes no options, got %q", d.Val())
	}
	return nil
}
