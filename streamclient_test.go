// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// Stream clients for the tests: a WebSocket client (RFC 6455, text frames
// and close frames only) and a server-sent events reader, each reporting
// how its stream ended: a close frame and its code, a clean end of the
// response, or a cut.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// wsClient is one WebSocket connection.
type wsClient struct {
	conn    net.Conn
	br      *bufio.Reader
	closing bool // it sent a close frame: one that comes is the answer
}

// dialWS opens a WebSocket to ws://addr/path, with extra header lines
// ("Name: value"), and returns it.
func dialWS(addr, path string, header ...string) (*wsClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	extra := ""
	for _, h := range header {
		extra += h + "\r\n"
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n", path, addr, k, extra)
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %v", err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %s", resp.Status)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return &wsClient{conn: conn, br: br}, nil
}

// errWSClosed is what read returns for a close frame; closeCode tells its
// code.
type wsCloseError struct{ code int }

func (e *wsCloseError) Error() string { return fmt.Sprintf("websocket closed with code %d", e.code) }

// send sends a text message (masked, as a client must).
func (c *wsClient) send(text string) error { return c.writeFrame(0x1, []byte(text)) }

// closeNormally closes the WebSocket as a browser does: a close frame
// with code 1000, the server's close frame (or the end of the connection),
// then the end of the connection.
func (c *wsClient) closeNormally() error {
	defer c.conn.Close()
	c.closing = true
	if err := c.writeFrame(0x8, binary.BigEndian.AppendUint16(nil, 1000)); err != nil {
		return err
	}
	for {
		_, err := c.read(5 * time.Second)
		var ce *wsCloseError
		if errors.As(err, &ce) || errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (c *wsClient) writeFrame(op byte, payload []byte) error {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, x := range payload {
		b = append(b, x^mask[i%4])
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.conn.Write(b)
	return err
}

// read returns the next text message within timeout. A close frame is a
// *wsCloseError (after which the client answers it and closes); a cut
// connection is the read error.
func (c *wsClient) read(timeout time.Duration) (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return "", err
		}
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var x [2]byte
			if _, err := io.ReadFull(c.br, x[:]); err != nil {
				return "", err
			}
			n = int64(binary.BigEndian.Uint16(x[:]))
		case 127:
			var x [8]byte
			if _, err := io.ReadFull(c.br, x[:]); err != nil {
				return "", err
			}
			n = int64(binary.BigEndian.Uint64(x[:]))
		}
		if h[1]&0x80 != 0 {
			return "", errors.New("websocket: a server frame is masked")
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return "", err
		}
		switch h[0] & 0x0f {
		case 0x1, 0x2:
			return string(payload), nil
		case 0x8:
			code := 1005 // no code
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			if !c.closing {
				_ = c.writeFrame(0x8, payload[:min(2, len(payload))])
			}
			return "", &wsCloseError{code}
		case 0x9:
			_ = c.writeFrame(0xA, payload)
		}
	}
}

// ask sends msg and returns the answer.
func (c *wsClient) ask(msg string, timeout time.Duration) (string, error) {
	if err := c.send(msg); err != nil {
		return "", err
	}
	return c.read(timeout)
}

func (c *wsClient) Close() error { return c.conn.Close() }

// sseClient is one server-sent events response.
type sseClient struct {
	resp   *http.Response
	cancel context.CancelFunc
	lines  chan string
	done   chan struct{} // closed once the response ended
	err    error         // then: io.EOF if it ended cleanly, else how it was cut
}

// openSSE opens url and reads its events in the background.
func openSSE(url string) (*sseClient, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("sse: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &sseClient{resp: resp, cancel: cancel, lines: make(chan string, 1000), done: make(chan struct{})}
	go func() {
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				s.err = err
				close(s.done)
				close(s.lines)
				return
			}
			if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
				select {
				case s.lines <- data:
				default: // nobody reads: keep the newest only
					<-s.lines
					s.lines <- data
				}
			}
		}
	}()
	return s, nil
}

// next returns the next event's data within timeout, or how the stream
// ended.
func (s *sseClient) next(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-s.lines:
		if !ok {
			return "", s.err
		}
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no event within %s", timeout)
	}
}

// latest drops what was read so far and returns the next event.
func (s *sseClient) latest(timeout time.Duration) (string, error) {
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return "", s.err
			}
			_ = l
			continue
		default:
		}
		return s.next(timeout)
	}
}

func (s *sseClient) Close() { s.cancel(); s.resp.Body.Close() }
