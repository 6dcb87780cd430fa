package supervise

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// serverFrame is a WebSocket frame as a server sends it (unmasked), or a
// client (masked) if mask.
func serverFrame(op byte, payload []byte, mask bool) []byte {
	b := []byte{0x80 | op}
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, m|byte(n))
	case n < 1<<16:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask {
		b = append(b, 1, 2, 3, 4) // the key; the payload is not really masked: only lengths matter
	}
	return append(b, payload...)
}

// The frame follower finds every frame boundary however the bytes are
// split into writes: frames of every length encoding, masked or not.
func TestWSFramesBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var stream []byte
		var ends []int // offsets where a frame ends
		for range 1 + r.IntN(8) {
			n := []int{0, 1, 125, 126, 127, 65535, 65536, 70000}[r.IntN(8)]
			stream = append(stream, serverFrame(byte(1+r.IntN(2)), bytes.Repeat([]byte{'x'}, n), r.IntN(2) == 0)...)
			ends = append(ends, len(stream))
		}
		var f wsFrames
		for off := 0; off < len(stream); {
			k := min(len(stream)-off, 1+r.IntN(3000))
			took := f.feed(stream[off:off+k], true)
			if took < 1 || took > k {
				t.Fatalf("round %d: feed took %d of %d", round, took, k)
			}
			off += took
			atEnd := false
			for _, e := range ends {
				atEnd = atEnd || e == off
			}
			if f.boundary() != atEnd {
				t.Fatalf("round %d: at %d boundary() = %v, want %v", round, off, f.boundary(), atEnd)
			}
			if took < k && !atEnd {
				t.Fatalf("round %d: feed stopped at %d, not at a frame's end", round, off)
			}
		}
	}
}

// A tunnel that ends sends its close frame between two frames of the app,
// never inside one; what the app sends after it is dropped; a frame that
// never completes is cut after the closing handshake's wait.
func TestWSTunnelClosesBetweenFrames(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	cut := make(chan struct{})
	tun := &wsTunnel{
		raw:  func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) },
		cut:  func() { close(cut) },
		wait: 100 * time.Millisecond,
	}
	first := serverFrame(1, []byte("hello"), false)
	second := serverFrame(1, bytes.Repeat([]byte{'y'}, 300), false)
	if _, err := tun.write(first); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.write(second[:10]); err != nil { // the app is inside a frame
		t.Fatal(err)
	}
	tun.end()
	after := serverFrame(1, []byte("after"), false)
	if n, err := tun.write(append(second[10:], after...)); err != nil || n != len(second)-10+len(after) {
		t.Fatalf("write: %d, %v", n, err)
	}
	want := append(append(append([]byte{}, first...), second...), closeGoingAway...)
	mu.Lock()
	got := out.Bytes()
	mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatalf("the client got %q, want the two frames then the close frame (%q)", got, want)
	}
	select {
	case <-cut:
		t.Fatal("cut although the closing handshake had its time")
	default:
	}
	tun.stopCut() // the WebSocket ended

	// an app that stops inside a frame: no close frame can go; the tunnel is cut
	var stuckOut bytes.Buffer
	stuckCut := make(chan struct{})
	stuck := &wsTunnel{raw: stuckOut.Write, cut: func() { close(stuckCut) }, wait: 100 * time.Millisecond}
	_, _ = stuck.write(second[:10])
	began := time.Now()
	stuck.end()
	select {
	case <-stuckCut:
		if d := time.Since(began); d < 90*time.Millisecond {
			t.Errorf("cut after %s, before the wait", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a tunnel stuck inside a frame was not cut")
	}
	if bytes.Contains(stuckOut.Bytes(), closeGoingAway) {
		t.Error("a close frame went inside a frame")
	}
}

// A hostile app's frames (any bytes, lengths up to 2^64-1), split into
// writes anywhere (a close frame too), with the tunnel ending at any
// moment: the follower never takes more than it was given, or panics; the
// client gets exactly the app's bytes up to the end of its close frame, or,
// once the tunnel ends, up to the end of the frame in progress and then the
// tunnel's close frame 1001 — nothing is dropped before that point, and
// nothing goes after a close frame.
func FuzzWSFrames(f *testing.F) {
	closeFrame := serverFrame(8, []byte{0x03, 0xe8}, false)
	f.Add([]byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, []byte{3}, 9)
	f.Add([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, []byte{1}, 0)
	f.Add([]byte{0x81, 0x7e, 0x00}, []byte{2}, 1)
	f.Add(append(append(serverFrame(1, []byte("bye"), false), closeFrame...), serverFrame(1, []byte("after"), false)...), []byte{6, 1}, 9)
	f.Add(append(append(serverFrame(1, []byte("bye"), false), closeFrame...), serverFrame(1, []byte("after"), false)...), []byte{6, 1}, 1)
	f.Fuzz(func(t *testing.T, data, splits []byte, endAt int) {
		// the writes: sizes from splits, the rest in one
		var writes [][]byte
		for off, i := 0, 0; off < len(data); i++ {
			k := len(data) - off
			if i < len(splits) {
				k = min(k, max(1, int(splits[i])))
			}
			writes = append(writes, data[off:off+k])
			off += k
		}
		var fr wsFrames
		for off := 0; off < len(data); {
			took := fr.feed(data[off:], endAt%2 == 0)
			if took < 1 || took > len(data)-off {
				t.Fatalf("feed took %d of %d", took, len(data)-off)
			}
			off += took
		}

		var out bytes.Buffer
		tun := &wsTunnel{raw: out.Write, cut: func() {}, wait: time.Hour}
		endBefore := -1 // the write before which the tunnel ends; -1: never
		if endAt >= 0 && endAt <= len(writes) {
			endBefore = endAt
		}
		pos := 0 // bytes written before the end
		for i, w := range writes {
			if i == endBefore {
				tun.ending.Store(true) // end, without its timer and goroutine
				tun.mu.Lock()
				tun.closeIfBoundary()
				tun.mu.Unlock()
			}
			if i < endBefore || endBefore < 0 {
				pos += len(w)
			}
			if n, err := tun.write(w); n != len(w) || err != nil {
				t.Fatalf("write: %d of %d, %v", n, len(w), err)
			}
		}
		if endBefore == len(writes) {
			tun.ending.Store(true)
			tun.mu.Lock()
			tun.closeIfBoundary()
			tun.mu.Unlock()
		}

		// what the client must get, from an independent parse of data
		want, ends := wsExpected(data, endBefore >= 0, pos)
		if ends {
			want = append(append([]byte{}, want...), closeGoingAway...)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("writes %d, ended before write %d (byte %d): the client got\n%x\nwant\n%x", len(writes), endBefore, pos, out.Bytes(), want)
		}
	})
}

// wsExpected is what a tunnel forwards of data: up to the end of the
// app's first close frame; if the tunnel ended after pos bytes, up to the
// end of the frame in progress then (or the boundary it ended at), and
// whether its own close frame follows (not after the app's close, nor
// inside a frame that never completes).
func wsExpected(data []byte, ended bool, pos int) (forwarded []byte, closes bool) {
	b := 0 // the end of the last complete frame
	for _, fr := range parseFrames(data) {
		switch {
		case ended && fr.start >= pos:
			return data[:fr.start], true
		case fr.close:
			return data[:fr.end], false
		case ended && fr.end >= pos:
			return data[:fr.end], true
		}
		b = fr.end
	}
	if ended && b >= pos {
		return data[:b], true
	}
	return data, false
}

// wireFrame is a complete frame of a byte stream: where it starts and
// ends, and whether it is a close frame.
type wireFrame struct {
	start, end int
	close      bool
}

// parseFrames lists the complete frames at the start of data, in order
// (RFC 6455 5.2; written apart from wsFrames, to check it).
func parseFrames(data []byte) []wireFrame {
	var frames []wireFrame
	for off := 0; off+2 <= len(data); {
		hdr := 2
		n := uint64(data[off+1] & 0x7f)
		switch n {
		case 126:
			hdr += 2
		case 127:
			hdr += 8
		}
		if data[off+1]&0x80 != 0 {
			hdr += 4
		}
		if off+hdr > len(data) {
			break
		}
		switch n {
		case 126:
			n = uint64(binary.BigEndian.Uint16(data[off+2:]))
		case 127:
			n = binary.BigEndian.Uint64(data[off+2:])
		}
		if n > uint64(len(data)-off-hdr) {
			break
		}
		end := off + hdr + int(n)
		frames = append(frames, wireFrame{off, end, data[off]&0x0f == 8})
		off = end
	}
	return frames
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "text/event-stream; charset=utf-8": true, "Text/Event-Stream": true,
		"text/event-streams": false, "text/html": false, "": false, "text/event": false,
	} {
		if got := isEventStream(ct); got != want {
			t.Errorf("isEventStream(%q) = %v", ct, got)
		}
	}
}

func TestWantsWebSocket(t *testing.T) {
	for _, tc := range []struct {
		method, proto string
		header        map[string]string
		ws, connect   bool
	}{
		{"GET", "HTTP/1.1", map[string]string{"Upgrade": "websocket"}, true, false},
		{"GET", "HTTP/1.1", map[string]string{"Upgrade": "foo, WebSocket"}, true, false},
		{"GET", "HTTP/1.1", map[string]string{"Upgrade": "h2c"}, false, false},
		{"GET", "HTTP/1.1", nil, false, false},
		{"CONNECT", "HTTP/2.0", map[string]string{":protocol": "websocket"}, true, true},
		{"CONNECT", "websocket", nil, true, true},
		{"CONNECT", "HTTP/2.0", nil, false, false},
	} {
		r := httptest.NewRequest(tc.method, "http://example.com/ws", nil)
		r.Proto = tc.proto
		for k, v := range tc.header {
			r.Header[k] = []string{v}
		}
		if ws, connect := wantsWebSocket(r), isExtendedConnect(r); ws != tc.ws || connect != tc.connect {
			t.Errorf("%s %s %v: websocket %v, extended connect %v", tc.method, tc.proto, tc.header, ws, connect)
		}
	}
}

// BenchmarkStreamsHandler: what `supervise_streams` adds to an ordinary
// request, in process: the same handler called directly, and through it.
func BenchmarkStreamsHandler(b *testing.B) {
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, err := w.Write([]byte("hello\n"))
		return err
	})
	for _, through := range []bool{false, true} {
		name := "direct"
		if through {
			name = "supervise_streams"
		}
		b.Run(name, func(b *testing.B) {
			r := httptest.NewRequest("GET", "/", nil)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				w.Body.Reset()
				if through {
					_ = Streams{}.ServeHTTP(w, r, next)
				} else {
					_ = next.ServeHTTP(w, r)
				}
			}
		})
	}
}

// After the app's own close frame (or Caddy's, at a config unload), the
// tunnel adds none of its own: an endpoint sends nothing after its close.
func TestWSTunnelAfterTheAppsClose(t *testing.T) {
	var out bytes.Buffer
	tun := &wsTunnel{raw: out.Write, cut: func() {}, wait: time.Hour}
	appClose := serverFrame(8, []byte{0x03, 0xe8}, false) // 1000
	if _, err := tun.write(append(serverFrame(1, []byte("bye"), false), appClose[:3]...)); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.write(appClose[3:]); err != nil {
		t.Fatal(err)
	}
	tun.end()
	tun.mu.Lock() // end's goroutine has had its turn once this is ours... or will find the tunnel closed
	tun.mu.Unlock()
	_ = (&wsConn{Conn: nopConn{}, t: tun}).CloseWrite()
	if n := bytes.Count(out.Bytes(), []byte{0x88}); n != 1 || bytes.Contains(out.Bytes(), closeGoingAway) {
		t.Errorf("the client got %q: want the app's close frame only", out.Bytes())
	}
	tun.stopCut()
}

// nopConn is a net.Conn that does nothing.
type nopConn struct{ net.Conn }

func (nopConn) CloseWrite() error { return nil }
