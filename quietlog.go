package supervise

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(QuietStderr{})
}

// QuietStderr is a log writer that writes to stderr, as Caddy's `stderr`
// writer does, but drops the entries whose message is one of Drop. `caddy
// supervise` writes Caddy's own log through it, to leave out the warnings
// its config makes on purpose and that its user cannot act on (an admin
// endpoint "on open interface" that is a unix socket only Caddy's user can
// reach; a site on plain HTTP "without automatic HTTPS"; "HTTP/2 skipped"
// and "HTTP/3 skipped" without TLS). Each message is matched whole, as
// Caddy writes it; every other entry goes out unchanged.
//
//	log {
//		output supervise_quiet {
//			drop "HTTP/2 skipped because it requires TLS"
//		}
//	}
type QuietStderr struct {
	// Drop lists the messages whose entries are left out. Default: none.
	Drop []string `json:"drop,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (QuietStderr) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.logging.writers.supervise_quiet",
		New: func() caddy.Module { return new(QuietStderr) },
	}
}

func (q QuietStderr) String() string {
	return fmt.Sprintf("stderr (%d warnings left out)", len(q.Drop))
}

// WriterKey identifies the writer: one per set of messages.
func (q QuietStderr) WriterKey() string { return "supervise_quiet:" + strings.Join(q.Drop, "\x00") }

// OpenWriter returns the writer; closing it leaves stderr open.
func (q QuietStderr) OpenWriter() (io.WriteCloser, error) {
	w := &quietWriter{out: os.Stderr}
	for _, m := range q.Drop {
		// as the JSON and the console encoders write the message: the
		// JSON string, or the message between tabs
		w.drop = append(w.drop, []byte(fmt.Sprintf(`"msg":%q`, m)), []byte("\t"+m+"\t"), []byte("\t"+m+"\n"))
	}
	return w, nil
}

// UnmarshalCaddyfile sets up the writer from Caddyfile tokens:
//
//	output supervise_quiet {
//		drop <message>
//	}
func (q *QuietStderr) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "supervise_quiet"
	if d.NextArg() {
		return d.Errf("supervise_quiet: unexpected argument %q (messages go in `drop` lines)", d.Val())
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "drop":
			if !d.NextArg() {
				return d.Err("supervise_quiet: drop: a message is required")
			}
			q.Drop = append(q.Drop, d.Val())
			if d.NextArg() {
				return d.Errf("supervise_quiet: drop: one message a line, got also %q (quote a message with spaces)", d.Val())
			}
		default:
			return d.Errf("supervise_quiet: unknown subdirective %q (known: drop)", d.Val())
		}
	}
	return nil
}

// quietWriter writes each log entry (one Write each, as zap does) unless
// it holds a dropped message.
type quietWriter struct {
	out  io.Writer
	drop [][]byte
}

func (w *quietWriter) Write(p []byte) (int, error) {
	for _, m := range w.drop {
		if bytes.Contains(p, m) {
			return len(p), nil
		}
	}
	return w.out.Write(p)
}

func (w *quietWriter) Close() error { return nil }

// Interface guards
var (
	_ caddy.WriterOpener    = (*QuietStderr)(nil)
	_ caddyfile.Unmarshaler = (*QuietStderr)(nil)
)
