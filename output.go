package supervise

import (
	"bufio"
	"io"
	"os"
	"os/exec"
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

// attachOutput sets cmd's stdout and stderr. With `log`, each is a pipe
// whose read end a goroutine turns into log entries; the child writes into
// a real file descriptor, so os/exec copies nothing and Wait never waits for
// a grandchild that holds the pipe.
func (in *instance) attachOutput(cmd *exec.Cmd, def *Process) (*output, error) {
	out := &output{done: make(chan struct{})}
	switch def.Output {
	case OutputInherit:
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		close(out.done)
		return out, nil
	case OutputDiscard:
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
			in.forward(readers[i], name)
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

// tailLines is how many of the last output lines a process keeps, for the
// error of a new instance that failed.
const tailLines = 10

// outputTail keeps the last lines a process wrote (with `output log`), each
// cut to 300 bytes.
type outputTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *outputTail) add(line string) {
	if len(line) > 300 {
		line = line[:300] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == tailLines {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

// String is the last lines, joined with " | ", or a note when there are none.
func (t *outputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output logged)"
	}
	return strings.Join(t.lines, " | ")
}
