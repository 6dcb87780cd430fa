package supervise

import (
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The world is what a service's loop acts on and hears from: the clock,
// its processes, the readiness probes and the watches, the listening
// sockets, the streams, and Caddy's process. The loop decides; the world
// carries the decisions out and reports back with events posted to the
// service. realWorld is the machine itself; the simulation of the engine
// (sim_test.go) is another world, in which a seeded random source decides
// what happens and when, so that a run is a pure function of its seed.
type world interface {
	// now is the time.
	now() time.Time
	// post sends an event to the service's loop, false if the loop has
	// ended; postLater sends it without waiting (from a request's path).
	post(s *service, ev any) bool
	postLater(s *service, ev any)
	// after posts ev to s after d, unless the timer is stopped first.
	after(s *service, d time.Duration, ev any) timer
	// ticker ticks every d for s's loop (see noticeExit).
	ticker(s *service, d time.Duration) ticker

	// port is a port for a new instance of def: its fixed port, a free one
	// for port auto, or 0.
	port(def *Process) (int, error)
	// start starts the instance's process. From then on the world reports
	// instanceReady or instanceNotReady (its readiness probe, if it has
	// one) and instanceExited once its process group is gone.
	start(in *instance) error
	// stop sends the instance's group its stop signal and SIGKILL at
	// stop_timeout; false if it is stopping already or gone.
	stop(in *instance) bool
	// kill sends the group SIGKILL.
	kill(in *instance)
	// signal sends the group sig, while it is the instance's.
	signal(in *instance, sig syscall.Signal) error
	// watch watches a ready instance as def says (health, max_memory,
	// max_lifetime): it reports the first failure or limit with gen, then
	// stops; cancel stops it before.
	watch(in *instance, def *Process, gen int) (cancel func())
	// memory is the resident memory of the instance's process group.
	memory(in *instance) int64

	// takeSocket gives a new instance its socket, dropSocket ends its use,
	// holdSockets makes the service a user of the sockets its configs
	// name (see socket.go).
	takeSocket(in *instance) error
	dropSocket(in *instance)
	holdSockets(s *service)
	// endStreams ends the open streams of the instance (spread over a
	// window) and those that open on it later; it returns how many.
	endStreams(in *instance, spread time.Duration) int

	// exiting reports whether Caddy's process began to exit.
	exiting() bool
	// ended: the process ended for good; unless its on_end is
	// keep_running, Caddy exits with its status (processEnded).
	ended(def *Process, logger *zap.Logger, code int)
	// gone: the service's loop has ended.
	gone(s *service)
}

// timer is a pending after.
type timer interface{ Stop() bool }

// ticker is a running ticker: C is nil in a world that delivers its ticks
// otherwise.
type ticker interface {
	C() <-chan time.Time
	Stop()
}

// realWorld is the machine: real time, real processes, Caddy's process.
type realWorld struct{}

func (realWorld) now() time.Time { return time.Now() }

func (realWorld) post(s *service, ev any) bool {
	select {
	case s.events <- ev:
		return true
	case <-s.done:
		return false
	}
}

func (w realWorld) postLater(s *service, ev any) { go w.post(s, ev) }

func (w realWorld) after(s *service, d time.Duration, ev any) timer {
	return time.AfterFunc(d, func() { w.post(s, ev) })
}

type realTicker struct{ *time.Ticker }

func (t realTicker) C() <-chan time.Time { return t.Ticker.C }

func (realWorld) ticker(_ *service, d time.Duration) ticker { return realTicker{time.NewTicker(d)} }

func (realWorld) port(def *Process) (int, error)                { return def.fixedPort() }
func (realWorld) start(in *instance) error                      { return in.start() }
func (realWorld) stop(in *instance) bool                        { return in.stop() }
func (realWorld) kill(in *instance)                             { in.kill() }
func (realWorld) signal(in *instance, sig syscall.Signal) error { return in.signal(sig) }
func (realWorld) memory(in *instance) int64                     { return groupMemory(in.getPID()) }
func (realWorld) takeSocket(in *instance) error                 { return takeSocket(in) }
func (realWorld) dropSocket(in *instance)                       { dropSocket(in) }
func (realWorld) holdSockets(s *service)                        { holdServiceSockets(s) }
func (realWorld) exiting() bool                                 { return callerExiting() }

func (realWorld) endStreams(in *instance, spread time.Duration) int { return endStreams(in, spread) }

func (realWorld) watch(in *instance, def *Process, gen int) func() {
	return in.startWatching(def, gen)
}

func (realWorld) ended(def *Process, logger *zap.Logger, code int) {
	go processEnded(def, logger, code)
}

func (realWorld) gone(s *service) {
	registry.Lock()
	if registry.services[s.name] == s {
		delete(registry.services, s.name)
	}
	close(s.done)
	registry.Unlock()
}
