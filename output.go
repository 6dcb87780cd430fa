package supervise

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Values of Process.Output.
const (
	OutputLog     = "log"
	OutputInherit = "inherit"
	OutputDiscard = "discard"
)

// maxLine is the longest line logged as one entry; a longer one is split
// into entries of this size, all but the last marked partial. It is also
// the most memory a stream holds.
const maxLine = 64 << 10

// output connects a child's stdout and stderr as its definition says.
type output struct {
	parentEnds []*os.File    // the pipes' write ends: closed once the child has them
	done       chan struct{} // closed when every forwarded stream reached EOF
}

// attachOutput sets cmd's stdout and stderr. With `log` and `inherit`, each
// is a pipe whose read end a goroutine turns into log entries, or copies
// as it is to Caddy's own stdout or stderr (keeping the last lines for the
// errors of a new instance that fails); the child writes into a real file
// descriptor, so os/exec copies nothing and Wait never waits for a
// grandchild that holds the pipe.
func (in *instance) attachOutput(cmd *exec.Cmd, def *Process) (*output, error) {
	out := &output{done: make(chan struct{})}
	switch {
	case def.Output == OutputInherit && (isTerminal(os.Stdout) || isTerminal(os.Stderr)):
		// a person watches: the app gets the terminal itself (its colours,
		// its line buffering), and its failures show there; but write-only,
		// so that it cannot read what the person types (it has no
		// controlling terminal either: see sysProcAttr). Where the terminal
		// cannot be opened again write-only, the app's output is relayed.
		stdout, err1 := terminalForChild(os.Stdout, def)
		stderr, err2 := terminalForChild(os.Stderr, def)
		for _, f := range []*os.File{stdout, stderr} {
			if f != nil && f != os.Stdout && f != os.Stderr {
				out.parentEnds = append(out.parentEnds, f)
			}
		}
		if err1 == nil && err2 == nil {
			cmd.Stdout, cmd.Stderr = stdout, stderr
			close(out.done)
			return out, nil
		}
		out.started() // closes what was opened
	case def.Output == OutputDiscard:
		cmd.Stdout, cmd.Stderr = nil, nil // the null device
		close(out.done)
		return out, nil
	}
	var readers []*os.File
	for range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range append(readers, out.parentEnds...) {
				f.Close()
			}
			return nil, err
		}
		readers, out.parentEnds = append(readers, r), append(out.parentEnds, w)
	}
	cmd.Stdout, cmd.Stderr = out.parentEnds[0], out.parentEnds[1]
	streams := make(chan struct{}, 2)
	for i, name := range []string{"stdout", "stderr"} {
		go func() {
			if def.Output == OutputInherit {
				in.passThrough(readers[i], []*os.File{os.Stdout, os.Stderr}[i])
			} else {
				in.forward(readers[i], name)
			}
			readers[i].Close()
			streams <- struct{}{}
		}()
	}
	go func() {
		<-streams
		<-streams
		close(out.done)
	}()
	return out, nil
}

// isTerminal reports whether f is a character device: a terminal (or the
// null device, to which handing the app the file itself changes nothing).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// terminalForChild is what a child gets of Caddy's stdout or stderr f: a
// terminal opened anew, write-only (Caddy's own descriptor is often the
// terminal opened for reading too, and the child could read what is
// typed); anything else as it is. A child of another user never gets the
// terminal: its output is relayed (an error here). Where the terminal
// cannot be opened anew (outside Linux; or Caddy's user may not open the
// terminal it was given), it gets Caddy's descriptor only if that one is
// write-only, and is relayed otherwise.
func terminalForChild(f *os.File, def *Process) (*os.File, error) {
	if !isTerminal(f) {
		return f, nil
	}
	if def.id != nil && def.id.otherUser() {
		// even write-only, a terminal takes ioctls: another user could
		// turn echo off, flush what was typed, or break the line
		// discipline of the terminal of whoever started Caddy
		return nil, errors.New("the terminal is not handed to another user")
	}
	w, err := openWriteOnly(f)
	if err != nil && writeOnlyAlready(f) {
		return f, nil // (Caddy's own descriptor cannot read either)
	}
	return w, err // an error: the output is relayed
}

// started closes the parent's copies of the pipes' write ends, so that the
// streams reach EOF when the child and everything that inherited them exit.
func (o *output) started() {
	for _, f := range o.parentEnds {
		f.Close()
	}
	o.parentEnds = nil
}

// wait waits until every line was logged, up to limit; it reports whether
// it got them all. The caller waits once the process group is gone, so only
// a process that left the group can keep the pipes open that long.
func (o *output) wait(limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-o.done:
		return true
	case <-t.C:
		return false
	}
}

// forward logs each line read from r as one entry of the process's current
// logger (it follows config reloads), with the stream's name. Logging is
// synchronous: the child waits only when the log writer does. A line longer
// than maxLine is logged in chunks; all but its last are marked partial
// (a chunk that the line's newline follows is its last).
func (in *instance) forward(r io.Reader, stream string) {
	br := bufio.NewReaderSize(r, maxLine)
	streamField := zap.String("stream", stream)
	for {
		chunk, err := br.ReadSlice('\n')
		line, partial := string(chunk), false
		switch {
		case err == bufio.ErrBufferFull:
			// Peek reads on into the buffer: chunk was copied into line
			next, perr := br.Peek(1)
			switch {
			case perr == nil && next[0] == '\n':
				_, _ = br.Discard(1)
			case perr == nil:
				partial = true
			}
		case err != nil && line == "":
			return // EOF (or a read error) at the start of a line
		}
		if !partial {
			line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		}
		in.tail.add(line)
		if ce := in.svc.log().Check(zapcore.InfoLevel, line); ce != nil {
			if partial {
				ce.Write(streamField, zap.Bool("partial", true))
			} else {
				ce.Write(streamField)
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// passThrough copies r to w as it comes, and keeps its lines for the
// errors (see outputTail). After a short read it lets the app's next
// writes gather for outputCoalesce: an app that writes a line at a time
// (Rails logs three per request) then costs Caddy one read and one write
// for many lines instead of two system calls each.
func (in *instance) passThrough(r io.Reader, w io.Writer) {
	buf := make([]byte, 32<<10)
	var line []byte // the line being read, up to maxLine
	for short := false; ; {
		if short {
			time.Sleep(outputCoalesce)
		}
		n, err := r.Read(buf)
		short = n < len(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
			for rest := buf[:n]; len(rest) > 0; {
				i := bytes.IndexByte(rest, '\n')
				if i < 0 {
					line = append(line, rest[:min(len(rest), maxLine-len(line))]...)
					break
				}
				line = append(line, rest[:min(i, maxLine-len(line))]...)
				in.tail.add(strings.TrimSuffix(string(line), "\r"))
				line, rest = line[:0], rest[i+1:]
			}
		}
		if err != nil {
			if len(line) > 0 {
				in.tail.add(string(line))
			}
			return
		}
	}
}

// outputCoalesce is how long passThrough lets output gather between reads:
// the most a line waits before it is passed on.
const outputCoalesce = 2 * time.Millisecond

// What a process's output tells about its failure, for the error of a new
// instance that failed (the whole output is in the log): the first lines
// that look like an error (an exception, a missing file), and the last
// lines.
const (
	tailLines  = 5   // last lines kept
	errorLines = 2   // first error-like lines kept
	lineCut    = 240 // bytes of a line kept
)

// errorLike matches a line that looks like an error.
var errorLike = regexp.MustCompile(`(?i)(error|exception|fatal|panic|traceback|failed|cannot|can't|couldn't|not found|no such|denied|refused|undefined|invalid|abort)`)

// outputTail keeps what output tells about a failure.
type outputTail struct {
	mu     sync.Mutex
	lines  []string // the last tailLines lines
	errors []string // the first errorLines error-like lines
	served bool     // the instance got ready: its boot's errors are known (no more lines are matched)
}

func (t *outputTail) add(line string) {
	if len(line) > lineCut {
		line = line[:lineCut] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.served && len(t.errors) < errorLines && errorLike.MatchString(line) {
		t.errors = append(t.errors, line)
	}
	if len(t.lines) == tailLines {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

// ready stops the search for error-like lines: the instance booted, and a
// pattern match for every line of a busy app costs more than the rest of
// its logging.
func (t *outputTail) ready() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.served = true
}

// String is the error-like lines, if the last lines do not hold them, then
// the last lines, joined with " | ", or a note when there are none.
func (t *outputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output logged)"
	}
	var first []string
	for _, e := range t.errors {
		if !slices.Contains(t.lines, e) {
			first = append(first, e)
		}
	}
	last := strings.Join(t.lines, " | ")
	if len(first) == 0 {
		return last
	}
	return strings.Join(first, " | ") + " | … | " + last
}
