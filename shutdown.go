package supervise

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// beginExit starts the exit sequence, once. began is when Caddy's exit
// began: the "stopping" event, or this app's Stop if that came first.
func (a *App) beginExit(began time.Time) {
	a.exitOnce.Do(func() {
		if !a.hasHTTP {
			a.endDrain("no HTTP servers to drain")
		}
		go exitSequence(a, began)
	})
}

// endDrain marks the exit's drain as over, once.
func (a *App) endDrain(why string) {
	a.drainOnce.Do(func() {
		a.drainedWhy = why
		close(a.drained)
	})
}

// exitSequence is the whole shutdown of the supervised processes when
// Caddy's process exits (SIGTERM, the first SIGINT, `caddy stop`), driven by
// final, the config Caddy stops last. For each process, in parallel, so
// that the slowest one sets the total time:
//
//  1. It learns that Caddy exits: nothing new starts; a reload or admin
//     restart that waits for a new instance fails; a new instance booting
//     beside one that serves stops at once (the one that serves takes the
//     drain), one booting in place of one already stopped boots on and
//     serves the drain (see replace.go).
//  2. It keeps serving while Caddy's HTTP servers stop accepting and finish
//     their in-flight requests (shutdown_delay and grace_period included):
//     until final's HTTP servers have drained, or drain_timeout has passed
//     since the exit began, whichever comes first. (A crash meanwhile is
//     restarted as its policy says: the drain needs the app.) Streams do
//     not hold the drain: when it begins (the servers begin to shut down,
//     after shutdown_delay), every open stream ends cleanly, WebSockets
//     with a close frame 1001 and SSE responses as complete responses, so
//     that their clients reconnect at once, wherever the load balancer
//     sends them (see streams.go).
//  3. Every instance gets stop_signal to its process group, then up to
//     stop_timeout to exit, then SIGKILL to the group.
//
// Meanwhile Caddy goes on stopping its apps; at the very end of its exit,
// waitForChildren holds the process until every group is gone.
func exitSequence(final *App, began time.Time) {
	for _, s := range allServices() {
		if n := waitingFor(s.name).Load(); n > 0 {
			// (waiting is never silent: the drain waits for them)
			s.log().Warn(fmt.Sprintf("Caddy is exiting while %d requests wait for %s, which is not ready: they wait until it is, "+
				"or until their wait or drain_timeout ends (at a terminal, a second Ctrl-C exits at once)", n, s.name))
		}
	}
	go func() {
		select {
		case <-final.drainBegan:
		case <-final.drained:
		}
		if n := endStreams(nil, 0); n > 0 {
			final.logger.Info("Caddy's servers begin to drain: ending the open streams cleanly", zap.Int("streams", n),
				zap.Duration("since_exit_began", time.Since(began)))
		}
	}()
	for _, s := range allServices() {
		go func() {
			if !s.post(exitEv{}) {
				return
			}
			drainTimeout := DefaultDrainTimeout
			if def := s.current(); def != nil {
				drainTimeout = time.Duration(def.DrainTimeout)
			}
			timer := time.NewTimer(time.Until(began.Add(drainTimeout)))
			defer timer.Stop()
			select {
			case <-final.drained:
				s.log().Info("drain over", zap.String("why", final.drainedWhy), zap.Duration("since_exit_began", time.Since(began)))
			case <-timer.C:
				s.log().Warn("drain_timeout passed before Caddy's HTTP servers finished draining", zap.Duration("drain_timeout", drainTimeout))
			case <-s.done:
				return
			}
			s.post(stopAllEv{reason: "Caddy is exiting", drained: time.Since(began)})
		}()
	}
}

// waitForChildren runs as a process-exit callback of Caddy, after every app
// has stopped and every module was cleaned up, just before Caddy's process
// exits. Caddy's servers have drained by then, so any instance still
// running is stopped now; it returns when every process group is gone.
func waitForChildren(context.Context) {
	var wg sync.WaitGroup
	for _, s := range allServices() {
		wg.Go(func() {
			s.post(stopAllEv{reason: "Caddy is exiting"})
			<-s.done
		})
	}
	wg.Wait()
	closeSockets()

	if name, code, set := endedStatus(); set && code != 0 {
		caddy.Log().Error("shutdown complete; exiting with the status of the process that ended",
			zap.String("process", name), zap.Int("exit_code", code))
		os.Exit(code)
	}
}

// endedFirst is the first process that ended for good with on_end
// stop_caddy: its status becomes Caddy's exit status.
var endedFirst struct {
	sync.Mutex
	name string
	code int
	set  bool
}

func endedStatus() (name string, code int, set bool) {
	endedFirst.Lock()
	defer endedFirst.Unlock()
	return endedFirst.name, endedFirst.code, endedFirst.set
}

// processEnded is called when a process has ended for good: it exited and
// will not be restarted. Unless its on_end is keep_running, Caddy shuts down
// gracefully, as on SIGTERM, and exits with the process's status.
func processEnded(def *Process, logger *zap.Logger, code int) {
	if def.OnEnd == OnEndKeepRunning {
		logger.Warn("process ended; Caddy keeps running (on_end keep_running)", zap.Int("exit_status", code))
		return
	}
	endedFirst.Lock()
	if !endedFirst.set {
		endedFirst.name, endedFirst.code, endedFirst.set = def.Name, code, true
	}
	endedFirst.Unlock()
	if caddy.Exiting() {
		return
	}
	logger.Error("process ended; shutting Caddy down (on_end stop_caddy): the SIGTERM in Caddy's next lines is this module's, sent to exit gracefully",
		zap.Int("exit_status", code))
	requestExit()
}
