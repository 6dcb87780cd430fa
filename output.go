package supervise

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
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
	progress   atomic.Int64  // lines forwarded so far
}

// attachOutput sets cmd's stdout and stderr. With `log`, each is a pipe
// whose read end a goroutine turns into log entries; the child writes into
// a real file descriptor, so os/exec copies nothing and Wait never waits for
// a grandchild that holds the pipe.
func (p *proc) attachOutput(cmd *exec.Cmd, def *Process) (*output, error) {
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
			p.forward(readers[i], name, &out.progress)
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

// wait waits until every line was logged, as long as lines keep coming: it
// gives up once a whole idle period passes without one (a process that left
// the group may hold the pipe open; a slow log writer must not lose lines).
func (o *output) wait(idle time.Duration) {
	t := time.NewTicker(idle)
	defer t.Stop()
	last := o.progress.Load()
	for {
		select {
		case <-o.done:
			return
		case <-t.C:
			now := o.progress.Load()
			if now == last {
				return
			}
			last = now
		}
	}
}

// forward logs each line read from r as one entry of the process's current
// logger (it follows config reloads), with the stream's name. Logging is
// synchronous: the child waits only when the log writer does.
func (p *proc) forward(r io.Reader, stream string, progress *atomic.Int64) {
	br := bufio.NewReaderSize(r, maxLine)
	streamField := zap.String("stream", stream)
	for {
		line, err := br.ReadSlice('\n')
		partial := err == bufio.ErrBufferFull
		line = bytes.TrimSuffix(line, []byte("\n"))
		if !partial {
			line = bytes.TrimSuffix(line, []byte("\r"))
		}
		if len(line) > 0 || err == nil {
			progress.Add(1)
			if ce := p.log().Check(zapcore.InfoLevel, string(line)); ce != nil {
				if partial {
					ce.Write(streamField, zap.Bool("partial", true))
				} else {
					ce.Write(streamField)
				}
			}
		}
		if err != nil && !partial {
			return
		}
	}
}
