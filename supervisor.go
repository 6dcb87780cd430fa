package supervise

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The lifecycle engine.
//
// A service is everything about one process name, across config reloads:
// the configs that hold it (each with its definition of the process; the
// newest one's is in force), its serving set (a slot per instance of the
// definition in force, `instances`: see pool.go), the other instances that
// still run (a new one a
// transition brings up, old ones that retire or stop), its history
// (restarts, exits) and its port. One goroutine, the service's loop, takes
// every event about it in order: a config starts with it (acquire) or
// stops (release); the admin API asks for a restart or a signal; an
// instance is ready, not ready, or has exited; a restart is due; Caddy
// exits. Nothing else changes a service, so no two events ever interleave.
// Readers (the admin API, metrics, the dynamic upstream) see a snapshot
// that the loop publishes after every event (view).
//
// The rules, in one place each:
//   - an instance's states and their allowed moves: instance.go;
//   - what an exit means: instanceExited below. An instance in the serving
//     set that exits has failed: the restart policy and on_end apply. Any
//     instance the service stops on purpose leaves the serving set first,
//     so its exit means nothing (a retiring instance's death never ends
//     Caddy);
//   - every replacement of an instance (a reload with a new definition, an
//     admin restart, a revive, a new config that does not take over):
//     replace.go, one path, with its policy "beside the old one" or "stop
//     the old one first";
//   - Caddy's exit: exitSequence in shutdown.go.
type service struct {
	name   string
	w      world         // what it acts on: the machine, or a simulation
	events chan any      // every event, in order
	done   chan struct{} // closed when the loop has ended
	view   atomic.Pointer[view]
	def    atomic.Pointer[Process]    // the definition in force
	logger atomic.Pointer[zap.Logger] // the logger in force

	// owned by the loop
	holders    []holder
	slots      []*instance // the serving set: nil while no instance serves
	live       []*instance // every instance whose process group may exist
	job        *job        // the transition that runs (replace.go)
	queue      []acquireEv // configs waiting for the job
	reconcile  bool        // once the job is over, the definition in force changed
	ports      map[int]int // by slot: the port auto of the slot's last instance, which one started in place takes again
	history    history
	backoff    backoff
	ended      bool   // ended for good: no instance runs, none will start by itself
	yieldedTo  *App   // a new config took this process's port: it stays stopped
	exiting    bool   // Caddy exits: nothing new starts
	stopAll    string // every instance stops, for this reason: no config holds the process, or Caddy exits
	gone       []chan struct{}
	lastSeen   *instance // the instance the status shows while none serves
	exitTick   ticker
	unborn     bool          // made for an event it has not taken yet
	canaryLast *CanaryStatus // the last canary window's verdict
	endLater   *pendingEnd   // the last instance ended for good while its replacement boots (see crashed)
	putBacks   retries       // put-backs that failed, and the next try
}

// pendingEnd is the end for good of a process, put off while a new
// instance boots that would serve in its place.
type pendingEnd struct {
	why  string
	code int
}

// retries is the back-off of something that failed and is tried again:
// 1 s, doubling up to 30 s.
type retries struct {
	fails int
	gen   int
	due   timer
}

// next is how long to wait before the next try, counting this failure.
func (r *retries) next() time.Duration {
	r.fails++
	return min(time.Second<<min(r.fails-1, 5), 30*time.Second)
}

// cancel calls off the try that is due, if any.
func (r *retries) cancel() {
	if r.due != nil {
		r.due.Stop()
		r.due = nil
	}
	r.gen++
}

// What a new instance starts for (see mayStart).
type startPurpose int

const (
	restoring  startPurpose = iota // a crash restart: what serves, also Caddy's exit drain
	transition                     // a reload's, a restart's, a recycle's, a put-back's, one more instance
)

// mayStart is the one answer to "may a new instance start now?": never
// once every instance stops (no config holds the process, or Caddy's last
// config stops) or its port went to another process; for a transition,
// not once Caddy's exit began either (what runs serves the drain). A job
// that runs decides for itself whether its next step may start (see
// callerExits: one booting in place boots on).
func (s *service) mayStart(p startPurpose) bool {
	if s.stopAll != "" || s.yieldedTo != nil {
		return false
	}
	return p == restoring || !s.exiting && !s.w.exiting()
}

// stopErr is what a request that comes while every instance stops gets.
func (s *service) stopErr() error {
	if s.stopAll == "Caddy is exiting" {
		return fmt.Errorf("process %q: %w", s.name, errExiting)
	}
	return fmt.Errorf("process %q: %s: %w", s.name, s.stopAll, errNotRunning)
}

// holder is a config that holds the process, with its definition.
type holder struct {
	app    *App
	def    *Process
	key    string
	logger *zap.Logger
}

// history is what a service remembers across its instances.
type history struct {
	restarts    int         // restarts: by the restart policy and the admin API
	exits       map[int]int // exit statuses of every instance, and how often
	lastExit    *int
	lastStop    time.Duration  // how long the last stop took
	lastDrain   time.Duration  // at Caddy's exit: how long it served while Caddy drained
	retirements map[string]int // how retirements ended, by outcome (see retire.go)
	recycles    map[string]int // instances recycled, by reason (see watch.go)
	canaries    map[string]int // canary verdicts, by name (see canary.go)
	window      []time.Time    // restarts within restart_window (max_restarts)
}

// backoff is the restart policy's state: the delay of the last restart,
// and the restarts that are due, by slot (each its own, so that a timer
// that fired as it was called off starts nothing).
type backoff struct {
	delay time.Duration
	due   map[int]*pendingRestart
}

// pendingRestart is a crash restart of a slot that is due.
type pendingRestart struct{ t timer }

// Events. Requests carry the channel their answer goes to.
type (
	acquireEv struct {
		app       *App
		def       *Process
		candidate bool // a first start that fails fails the config (it took another process's port)
		reload    bool // a config loaded while another runs (not Caddy's first)
		reply     chan error
	}
	releaseEv struct {
		app   *App
		reply chan struct{}
	}
	yieldEv struct {
		app   *App
		reply chan struct{}
	}
	restartEv struct {
		reply chan restartAnswer
	}
	signalEv struct {
		sig   syscall.Signal
		name  string
		reply chan error
	}
	exitEv    struct{}
	stopAllEv struct {
		reason  string
		drained time.Duration // at Caddy's exit: how long the process served while Caddy drained
	}
	restartDue struct {
		slot int
		p    *pendingRestart
	}
	putBackDue struct{ gen int } // a failed put-back is tried again (see putBack)
	retireDone struct {
		in    *instance
		gen   int
		bound int // boundDrain, boundStreams or boundClose (retire.go)
	}

	instanceIdle struct{ in *instance }

	instanceReady    struct{ in *instance }
	instanceNotReady struct {
		in  *instance
		why string // the probe, its last error, where the app listens instead
	}
	instanceExited struct{ in *instance }

	instanceUnhealthy struct { // it failed its health check (watch.go)
		in  *instance
		why string
		gen int // the watch that found it
	}
	instanceRecycle struct { // it reached a recycling limit (watch.go)
		in     *instance
		reason string
		gen    int // the watch that found it; -1: the request count, always current
	}
)

type restartAnswer struct {
	view *view // what the restart left (its status is read outside the loop)
	err  error
}

// registry is every service of the Caddy process, by name.
var registry = struct {
	sync.Mutex
	services map[string]*service
}{services: make(map[string]*service)}

// serviceNamed returns the service of name, or nil.
func serviceNamed(name string) *service {
	registry.Lock()
	defer registry.Unlock()
	return registry.services[name]
}

// allServices returns every service, by name.
func allServices() []*service {
	registry.Lock()
	defer registry.Unlock()
	return slices.SortedFunc(maps.Values(registry.services), func(a, b *service) int {
		if a.name < b.name {
			return -1
		}
		return 1
	})
}

// ask sends a request to the service of name, making the service if there
// is none (or it just ended), and returns the service that took it.
func ask(name string, ev any) *service {
	for {
		registry.Lock()
		s := registry.services[name]
		if s == nil {
			s = newService(name, realWorld{})
			registry.services[name] = s
			registry.Unlock()
			go s.loop(ev)
			return s
		}
		registry.Unlock()
		if s.post(ev) {
			return s
		}
	}
}

func newService(name string, w world) *service {
	s := &service{name: name, w: w, events: make(chan any), done: make(chan struct{}), slots: make([]*instance, 1), unborn: true,
		ports: make(map[int]int), backoff: backoff{due: make(map[int]*pendingRestart)}}
	s.logger.Store(zap.NewNop())
	s.publish() // pending: a config is acquiring it (readers wait for its first instance)
	return s
}

// post sends an event to the loop; false if the loop has ended.
func (s *service) post(ev any) bool { return s.w.post(s, ev) }

// current is the definition in force (safe from any goroutine).
func (s *service) current() *Process { return s.def.Load() }

// serving is the definition that a crashed instance restarts as: the one
// in force, but the reload's while a reload adds the process (no config
// holds that definition until all of it serves).
func (s *service) serving() *Process {
	if j := s.job; j != nil && j.adds && !j.held {
		return j.def
	}
	return s.current()
}

// log is the logger in force (safe from any goroutine).
func (s *service) log() *zap.Logger { return s.logger.Load() }

// loop takes the service's events in order, from the one it was made
// for, until nothing is left to supervise.
func (s *service) loop(first any) {
	s.handle(first)
	s.unborn = false
	s.publish()
	for !s.finished() {
		var tick <-chan time.Time
		if s.exitTick != nil {
			tick = s.exitTick.C()
		}
		select {
		case ev := <-s.events:
			s.step(ev)
		case <-tick:
			if s.noticeExit() { // most ticks change nothing: no view to publish
				s.publish()
			}
		}
	}
	s.w.gone(s)
}

// step takes one event, and what follows every event: a roll that waits
// for old instances to be gone looks again, and readers see the new state.
func (s *service) step(ev any) {
	s.handle(ev)
	if s.job != nil && s.job.waiting {
		s.nextBatch()
	}
	if len(s.gone) > 0 && !s.leaving() {
		for _, c := range s.gone {
			close(c) // (see whenGone)
		}
		s.gone = nil
	}
	s.publish()
}

// finished: no instance is left, and none will come: no config holds the
// process, or every instance had to stop.
func (s *service) finished() bool {
	return len(s.live) == 0 && s.job == nil && len(s.queue) == 0 && (len(s.holders) == 0 || s.stopAll != "")
}

func (s *service) handle(ev any) {
	switch ev := ev.(type) {
	case acquireEv:
		s.acquire(ev)
	case releaseEv:
		s.release(ev.app)
		s.whenGone(ev.reply)
	case yieldEv:
		s.yield(ev.app)
		s.whenGone(ev.reply)
	case restartEv:
		s.adminRestart(ev.reply)
	case canaryEv:
		s.adminCanary(ev)
	case canaryCheck:
		s.checkCanary(ev)
	case signalEv:
		ev.reply <- s.adminSignal(ev)
	case exitEv:
		s.exiting = true
		s.log().Info("Caddy is exiting: the process serves until the drain is over")
		for _, q := range s.queue {
			q.reply <- fmt.Errorf("process %q: %w", s.name, errExiting)
		}
		s.queue = nil
		if s.job != nil {
			s.job.callerExits(s)
		}
	case stopAllEv:
		if ev.drained > 0 {
			s.history.lastDrain = ev.drained
		}
		s.stopEverything(ev.reason)
	case restartDue:
		if s.backoff.due[ev.slot] == ev.p {
			delete(s.backoff.due, ev.slot)
			s.restartNow(ev.slot)
		}
	case putBackDue:
		if ev.gen == s.putBacks.gen {
			s.putBacks.due = nil
			switch {
			case s.job != nil:
				s.reconcile = true // once the job is over (a reload that took over leaves nothing to put back)
			case len(s.queue) > 0:
				// a reload waits its turn, and may take over: try again
				// after the same wait, not against it
				s.putBacks.due = s.w.after(s, min(time.Second<<min(s.putBacks.fails-1, 5), 30*time.Second), putBackDue{s.putBacks.gen})
			default:
				s.putBack()
			}
		}
	case retireDone:
		s.retireDue(ev)
	case instanceIdle:
		s.stopIfRetired(ev.in)
	case instanceReady:
		if ev.in.state != stateStarting {
			return // a probe that succeeds once the stop began changes nothing
		}
		ev.in.setState(stateReady)
		if st := s.jobStep(ev.in); st != nil && st.cand == ev.in {
			s.job.candidateReady(s, st)
		}
	case instanceNotReady:
		if ev.in.state != stateStarting {
			return
		}
		s.log().Error("process not ready within ready_timeout; stopping it as failed", zap.Int("pid", ev.in.getPID()),
			zap.Duration("ready_timeout", time.Duration(ev.in.def.ReadyTimeout)), zap.String("probe", ev.why))
		ev.in.notReady = ev.why
		s.stopInstance(ev.in, "not ready within ready_timeout")
	case instanceExited:
		s.instanceExited(ev.in)
	case instanceUnhealthy:
		if ev.gen == ev.in.watchGen {
			s.unhealthy(ev.in, ev.why)
		}
	case instanceRecycle:
		if ev.gen == -1 || ev.gen == ev.in.watchGen {
			s.recycle(ev.in, ev.reason)
		}
	case func(*service): // something to do in the loop, between two events (tests)
		ev(s)
	}
}

// acquire: a config starts with this process. It keeps the instance that
// runs if the definition is the same; starts one if none runs; else the
// instance is replaced (replace.go). The answer comes once the config may
// go on: the instance runs (a first start), or serves (a replacement).
func (s *service) acquire(ev acquireEv) {
	if s.job != nil {
		if len(s.queue) == 0 {
			s.log().Info("waiting for the restart of the process that runs")
		}
		s.queue = append(s.queue, ev)
		if s.exitTick == nil {
			s.exitTick = s.w.ticker(s, exitCheckEvery) // it holds Caddy's config lock: see noticeExit
		}
		return
	}
	h := holder{app: ev.app, def: ev.def, key: spawnKey(ev.def), logger: ev.app.logger.Named(ev.def.Name)}
	switch {
	case s.runs(h.key):
		var prev *App
		if len(s.holders) > 0 {
			prev = s.holders[len(s.holders)-1].app
		}
		s.hold(h)
		s.log().Info("process kept running across config change", zap.Ints("pids", s.servingPIDs()))
		s.resize(h.def, prev) // instances added or removed; the others untouched
		s.publish()           // before the config goes on: its upstreams read it
		ev.reply <- nil
	case s.empty() && len(s.backoff.due) > 0 && s.currentKey() == h.key && s.yieldedTo == nil:
		s.hold(h) // restarting after a crash: the restart goes on
		s.resize(h.def, nil)
		s.publish()
		ev.reply <- nil
	case s.stopAll != "":
		ev.reply <- s.stopErr()
	case s.exiting || s.w.exiting():
		ev.reply <- fmt.Errorf("process %q: %w", s.name, errExiting) // nothing new starts
	case s.empty() && (len(s.holders) == 0 || s.ended) && ev.reload && ev.def.Ready != nil:
		// a reload adds the process, or starts again one that ended for
		// good: it is part of the reload, which takes over once it is
		// ready, and fails if it fails (its on_end does not apply)
		j := newReload(s, h, ev)
		j.why, j.prevDef, j.adds = "a reload adds it", nil, true
		if len(s.holders) == 0 {
			s.logger.Store(h.logger) // (a new service: its log until the config holds it)
		}
		s.replace(j)
	case s.empty() && (len(s.holders) == 0 || s.ended || s.yieldedTo != nil) && !ev.candidate:
		// nothing runs: a first start (Caddy's first config, or one
		// without a probe: it serves once started), or a process that
		// ended for good, or one a config's port took
		s.hold(h)
		s.yieldedTo, s.ended = nil, false
		if err := s.startAll(h.def); err != nil {
			s.unhold(ev.app)
			ev.reply <- err
			return
		}
		s.publish()
		ev.reply <- nil
	default:
		s.replace(newReload(s, h, ev))
	}
}

// runs reports whether instances of key serve, and no other: a config
// with that definition keeps them.
func (s *service) runs(key string) bool {
	some := false
	for _, in := range s.slots {
		if in == nil {
			continue
		}
		if in.key != key || in.state != stateStarting && in.state != stateReady {
			return false
		}
		some = true
	}
	return some
}

// empty reports whether no instance is in the serving set.
func (s *service) empty() bool {
	return !slices.ContainsFunc(s.slots, func(in *instance) bool { return in != nil })
}

// servingPIDs are the PIDs of the serving set, for logs.
func (s *service) servingPIDs() []int {
	var pids []int
	for _, in := range s.slots {
		if in != nil {
			pids = append(pids, in.getPID())
		}
	}
	return pids
}

// servingAt is the instance in slot, or nil.
func (s *service) servingAt(slot int) *instance {
	if slot < len(s.slots) {
		return s.slots[slot]
	}
	return nil
}

// jobStep is the step of the job that runs whose instance in is, if any.
func (s *service) jobStep(in *instance) *step {
	if s.job == nil {
		return nil
	}
	return s.job.stepOf(in)
}

// hold adds a config that holds the process; its definition is in force.
func (s *service) hold(h holder) {
	s.holders = append(s.holders, h)
	s.inForce()
	s.w.holdSockets(s)
}

// unhold removes a config; it reports whether it was the newest.
func (s *service) unhold(a *App) (held, newest bool) {
	i := slices.IndexFunc(s.holders, func(h holder) bool { return h.app == a })
	if i < 0 {
		return false, false
	}
	newest = i == len(s.holders)-1
	s.holders = slices.Delete(s.holders, i, i+1)
	s.inForce()
	s.w.holdSockets(s)
	return true, newest
}

// currentKey is the spawn key of the definition in force.
func (s *service) currentKey() string {
	if len(s.holders) == 0 {
		return ""
	}
	return s.holders[len(s.holders)-1].key
}

// inForce sets the definition and logger in force: the newest holder's.
func (s *service) inForce() {
	if len(s.holders) == 0 {
		return
	}
	h := s.holders[len(s.holders)-1]
	s.def.Store(h.def)
	s.logger.Store(h.logger)
	for _, in := range s.live {
		if in.key == h.key && in.settings.Load() != h.def {
			in.settings.Store(h.def) // timeouts, signals, limits and the health check follow reloads
			in.watch()
		}
	}
}

// release: a config that held the process stops (a reload replaced it, or
// it failed to start, or it was dropped). If it was the last, every
// instance stops. If it was the newest (it did not take over), the older
// config's definition is in force again. If it was an older one, the
// instances it was served by retire for good once its servers drained.
func (s *service) release(a *App) {
	if s.yieldedTo == a {
		// the config that took this process's port is gone: the process
		// comes back, if a config still holds it
		s.yieldedTo = nil
		if len(s.holders) > 0 && !s.exiting && s.mayStart(restoring) {
			// (what ran before comes back, also as Caddy begins to exit: the
			// config that took its port failed, and the drain needs it)
			s.startAllOrCrash(s.current())
		}
	}
	held, newest := s.unhold(a)
	switch {
	case !held:
	case len(s.holders) == 0:
		s.stopEverything("no longer in the config")
	case newest && s.job != nil:
		s.reconcile = true
	case newest:
		s.putBack()
		s.recycleNext() // one that waited while the other definition was in force
	default:
		for _, in := range s.live {
			if in.cond.keptFor == a {
				s.stopIfRetired(in) // the reload took: nothing will put it back
			}
		}
		if e := s.endLater; e != nil && s.job == nil && s.empty() && len(s.backoff.due) == 0 &&
			!slices.ContainsFunc(s.live, s.keptForConfig) && s.mayStart(restoring) {
			s.endForGood(s.current(), e.why, e.code) // (see crashed)
		}
	}
}

// whenGone answers reply once no instance the service stopped is left (at
// once if none is stopping): a config's Stop returns once the processes it
// dropped are gone, so that the next config can take their ports. That
// includes a process no config holds (a reload that added it failed) on a
// fixed port or socket: a process that gave it that address comes back
// next (releaseAll). (On port auto, its ports are its own: a failed
// reload's Stop does not wait for their requests.)
func (s *service) whenGone(reply chan struct{}) {
	if !s.leaving() {
		close(reply)
		return
	}
	s.gone = append(s.gone, reply) // (answered after the event that ends it: step)
}

// leaving reports whether an instance the service stopped is still there
// that the next config may need gone: any instance, once the process stops
// altogether (no config holds it, Caddy's exit, a yield); else one on a
// fixed port or socket that leaves and that no config holds (a reload
// that added it, or started it again, failed). It bounds a config's Stop:
// each such instance stops within its drain_timeout and stop_timeout.
func (s *service) leaving() bool {
	if s.stopAll != "" || s.yieldedTo != nil {
		return len(s.live) > 0
	}
	return slices.ContainsFunc(s.live, func(in *instance) bool {
		return in.def.Port != "auto" && (in.port != 0 || in.def.Socket != "") &&
			(in.state == stateStopping || in.state == stateRetiring && !s.keptForConfig(in)) &&
			!slices.ContainsFunc(s.holders, func(h holder) bool { return h.key == in.key })
	})
}

// yield: a new config drops this process and gives its port (or socket
// address) to another: the process stops now, so that the other can bind
// it, and stays stopped unless that config fails (release).
func (s *service) yield(a *App) {
	s.yieldedTo = a
	s.cancelRestart()
	s.putBacks.cancel()
	s.endLater = nil
	s.dropKeptStreams(nil, "its port goes to another process of the new config")
	if s.job != nil {
		s.job.abort(s, fmt.Errorf("process %q: its port goes to another process of the new config", s.name))
	}
	for i, in := range s.slots {
		if in != nil {
			s.slots[i] = nil
			s.log().Info("stopping the process: the new config drops it and gives its port to another", zap.Int("port", in.port))
			s.retire(in, nil, "its port goes to another process of the new config")
		}
	}
}

// stopEverything stops every instance, for good: no config holds the
// process, or Caddy exits.
func (s *service) stopEverything(reason string) {
	s.stopAll = reason
	s.cancelRestart()
	s.dropKeptStreams(nil, reason)
	s.putBacks.cancel()
	s.endLater = nil
	if s.job != nil {
		s.job.abort(s, s.stopErr())
	}
	for _, q := range s.queue {
		q.reply <- s.stopErr()
	}
	s.queue = nil
	for i, in := range s.slots {
		s.slots[i] = nil
		if in != nil && reason != "Caddy is exiting" {
			s.retire(in, nil, reason) // its requests finish first; at Caddy's exit they did already
		}
	}
	for _, in := range s.live {
		switch {
		case in.state == stateRetiring && reason == "Caddy is exiting":
			s.endRetirement(in, "exit")
		case in.state != stateRetiring:
			s.stopInstance(in, reason)
		}
	}
}

// stopInstance sends an instance its stop signal (stop_timeout, then
// SIGKILL). Whether its exit matters depends on where it is (see
// instanceExited): an instance stopped on purpose is first taken out of
// the serving set by the caller.
func (s *service) stopInstance(in *instance, reason string) {
	if in.state == stateStopping || in.state == stateExited {
		return
	}
	s.closeStreams(in, reason, 0) // cleanly, before the app hears of its stop (at once, spread or not)
	in.setState(stateStopping)
	def := in.settings.Load()
	// readers learn that it is out of service before it hears of it: no
	// request is sent to it once it may have stopped accepting
	s.publish()
	if in.cond.unhealthy != "" {
		s.w.kill(in) // a hung process cannot drain
		s.log().Warn("killing the instance that failed its health check", zap.Int("pid", in.getPID()), zap.String("reason", reason))
		return
	}
	if s.w.stop(in) {
		in.stopBegan = s.w.now()
		s.log().Info("stopping process", zap.Int("pid", in.getPID()), zap.String("reason", reason),
			zap.String("signal", def.StopSignal), zap.Duration("stop_timeout", time.Duration(def.StopTimeout)))
	}
}

// startAll starts every instance of def, in place: a first start. If one
// cannot start, those started stop again.
func (s *service) startAll(def *Process) error {
	s.slots = make([]*instance, def.count)
	for slot := range s.slots {
		if err := s.startServing(def, slot); err != nil {
			for i, in := range s.slots {
				s.slots[i] = nil
				if in != nil {
					s.stopInstance(in, "another instance could not start")
				}
			}
			return err
		}
	}
	return nil
}

// startAllOrCrash starts every instance of def in place; one that cannot
// start counts as a crash of its slot.
func (s *service) startAllOrCrash(def *Process) {
	s.slots = make([]*instance, def.count)
	for slot := range s.slots {
		s.startOrCrash(def, slot, "starting the process again")
	}
}

// startServing starts an instance of def in slot of the serving set, in
// place: a first start, a restart after a crash, a revive. Its failure is a
// crash (the restart policy applies).
func (s *service) startServing(def *Process, slot int) error {
	port, err := s.portFor(def, slot)
	if err != nil {
		return fmt.Errorf("process %q: port auto: %v", def.Name, err)
	}
	in, err := s.spawn(def, port, slot)
	if err != nil {
		return err
	}
	s.slots[slot] = in
	s.keepPort(in)
	return nil
}

// portFor is the port of a new instance started in place in slot: the
// one the slot's last instance had if the definition still asks for port
// auto and that instance is gone (one that a failed reload retired may
// still stop), else a new one.
func (s *service) portFor(def *Process, slot int) (int, error) {
	if p := s.ports[slot]; def.Port == "auto" && p != 0 && !slices.ContainsFunc(s.live, func(in *instance) bool { return in.port == p }) {
		return p, nil
	}
	return s.w.port(def)
}

// keepPort remembers the port auto of the instance that serves in a slot.
func (s *service) keepPort(in *instance) {
	if in.def.Port == "auto" {
		s.ports[in.slot] = in.port
	} else {
		delete(s.ports, in.slot)
	}
}

// spawn starts an instance of def on port in slot, and counts it as live.
func (s *service) spawn(def *Process, port, slot int) (*instance, error) {
	in := &instance{svc: s, def: def, key: spawnKey(def), port: port, slot: slot, restarts: s.history.restarts}
	in.settings.Store(def)
	if s.currentKey() == in.key {
		in.settings.Store(s.current())
	}
	if err := s.w.takeSocket(in); err != nil {
		return nil, fmt.Errorf("process %q: socket %q: %v", def.Name, def.Socket, err)
	}
	if err := s.w.start(in); err != nil {
		s.w.dropSocket(in)
		return nil, err
	}
	s.live = append(s.live, in)
	s.lastSeen = in
	s.w.holdSockets(s)
	if def.Ready != nil {
		in.setState(stateStarting)
	} else {
		in.setState(stateReady)
	}
	return in, nil
}

// instanceExited is the one place that decides what an exit means.
func (s *service) instanceExited(in *instance) {
	stoppedAt := in.result.code
	notReady := in.notReady != "" && s.servingAt(in.slot) == in && (s.job == nil || !s.job.owns(in))
	if notReady {
		// it did not exit by itself: it was stopped for not being ready in
		// time; that is what its end says (and Caddy's exit status)
		in.result.code, in.result.how = ExitNotReady, "stopped: not ready within ready_timeout"
	}
	r := in.result
	if s.history.exits == nil {
		s.history.exits = make(map[int]int)
	}
	s.history.exits[r.code]++
	code := r.code
	s.history.lastExit = &code
	if !in.stopBegan.IsZero() {
		s.history.lastStop = s.w.now().Sub(in.stopBegan)
	}
	in.setState(stateExited)
	s.live = slices.DeleteFunc(s.live, func(x *instance) bool { return x == in })
	s.w.dropSocket(in)
	fields := []zap.Field{zap.Int("pid", in.getPID()), zap.Int("exit_status", r.code), zap.String("exit", r.how), zap.Duration("up_for", r.upFor)}
	in.accepting.Store(false)
	switch {
	case s.job != nil && s.job.owns(in):
		s.job.instanceExited(s, in, fields)
	case notReady:
		s.slots[in.slot] = nil
		s.log().Error("process was not ready within ready_timeout; it was stopped, and counts as failed with exit status 124",
			zap.Int("pid", in.getPID()), zap.Int("instance", in.slot), zap.Duration("ready_timeout", time.Duration(in.def.ReadyTimeout)),
			zap.String("probe", in.notReady), zap.Int("stopped_with_status", stoppedAt))
		s.crashed(in)
	case s.servingAt(in.slot) == in:
		s.slots[in.slot] = nil
		s.log().Error("process exited unexpectedly", append(fields, zap.Int("instance", in.slot))...)
		s.crashed(in)
	default:
		s.log().Info("process exited", fields...)
		if s.job == nil {
			s.recycleNext() // a recycle may have waited for it
		}
	}
}

// crashed applies the restart policy to an instance of the serving set
// that exited (or failed to be ready): a restart of its slot after the
// back-off, or the end of the slot; once no instance is left and none will
// restart, the end of the process, and on_end.
func (s *service) crashed(in *instance) {
	def := s.serving()
	if def == nil {
		def = in.settings.Load() // (a process no config holds: Caddy exits)
	}
	wait, why := s.nextRestart(def, in.result.code, in.result.upFor)
	if why != "" {
		switch {
		case !s.empty() || len(s.backoff.due) > 0:
			s.log().Error("instance ended for good; the other instances serve on", zap.String("why", why),
				zap.Int("instance", in.slot), zap.Int("exit_status", in.result.code))
		case s.job != nil && s.job.adds:
			// the reload that adds the process decides: it fails if its
			// roll does, and the process goes with its config
			s.log().Error("instance ended for good while the reload that adds the process runs", zap.String("why", why),
				zap.Int("instance", in.slot), zap.Int("exit_status", in.result.code))
		case s.booting():
			// the process is still alive in the instance that boots to
			// replace this one: it ends only if that one fails (endJob)
			s.endLater = &pendingEnd{why, in.result.code}
			s.log().Error("instance ended for good; the new instance that boots to replace it serves in its place once ready",
				zap.String("why", why), zap.Int("instance", in.slot), zap.Int("exit_status", in.result.code))
		case slices.ContainsFunc(s.live, s.keptForConfig):
			// a reload in progress replaced the old release, which it keeps
			// until Caddy takes the new config: if the reload fails, the old
			// release serves again (putBack); the process ends only once the
			// new config took over (release)
			s.endLater = &pendingEnd{why, in.result.code}
			s.log().Error("instance ended for good; the old release serves again if the reload in progress fails",
				zap.String("why", why), zap.Int("instance", in.slot), zap.Int("exit_status", in.result.code))
		default:
			s.endForGood(def, why, in.result.code)
		}
		return
	}
	s.log().Info("restarting process", zap.Duration("after", wait), zap.Int("restarts", s.history.restarts+1), zap.Int("instance", in.slot))
	slot := in.slot
	s.cancelRestartOf(slot)
	p := &pendingRestart{}
	p.t = s.w.after(s, wait, restartDue{slot, p})
	s.backoff.due[slot] = p
}

// endForGood: the process ended for good: no instance runs, none will
// start by itself. Unless its on_end keeps Caddy running, Caddy exits.
func (s *service) endForGood(def *Process, why string, code int) {
	s.ended, s.endLater = true, nil
	s.log().Error("process ended for good", zap.String("why", why), zap.Int("exit_status", code))
	s.w.ended(def, s.log(), code)
}

// ExitNotReady is the exit status of a process that was stopped because it
// was not ready within its ready_timeout (as timeout(1) reports a command
// that timed out): its restart policy sees it, and, if the process ends
// for good with on_end stop_caddy, Caddy exits with it.
const ExitNotReady = 124

// booting reports whether a job's new instance boots to serve.
func (s *service) booting() bool {
	return s.job != nil && slices.ContainsFunc(s.job.steps, func(st *step) bool { return st.cand != nil && st.cand.live() })
}

// restartNow starts the instance a crash restart of slot is due for.
func (s *service) restartNow(slot int) {
	if slot >= len(s.slots) || s.slots[slot] != nil || s.serving() == nil || !s.mayStart(restoring) || (s.job != nil && !s.job.beside) {
		return // (a new instance that boots beside takes over from the restarted one once ready)
	}
	s.history.restarts++
	s.startOrCrash(s.serving(), slot, "restarting process failed")
}

// startOrCrash starts an instance of def in slot of the serving set; if it
// cannot start, that counts as a crash (exit status 127): the restart
// policy applies, and on_end.
func (s *service) startOrCrash(def *Process, slot int, what string) bool {
	if err := s.startServing(def, slot); err != nil {
		s.log().Error(what, zap.Error(err))
		s.crashed(&instance{slot: slot, result: exitResult{code: 127, how: "not started"}})
		return false
	}
	return true
}

// cancelRestart calls off every restart that is due.
func (s *service) cancelRestart() {
	for slot := range s.backoff.due {
		s.cancelRestartOf(slot)
	}
}

// cancelRestartOf calls off the restart of slot, if one is due.
func (s *service) cancelRestartOf(slot int) {
	if p := s.backoff.due[slot]; p != nil {
		p.t.Stop()
		delete(s.backoff.due, slot)
	}
}

// nextRestart applies the restart policy to an exit: it returns how long to
// wait before the restart, or why there is none.
func (s *service) nextRestart(def *Process, code int, upFor time.Duration) (time.Duration, string) {
	switch {
	case def.Restart == RestartNever:
		return 0, "restart is never"
	case def.Restart == RestartOnFailure && code == 0:
		return 0, "exited successfully and restart is on_failure"
	}
	if upFor >= restartResetAfter || s.backoff.delay == 0 {
		s.backoff.delay = restartFirstDelay
	} else {
		s.backoff.delay = min(2*s.backoff.delay, restartMaxDelay)
	}
	if def.MaxRestarts > 0 {
		now := s.w.now()
		window := time.Duration(def.RestartWindow)
		s.history.window = slices.DeleteFunc(s.history.window, func(t time.Time) bool { return now.Sub(t) > window })
		if len(s.history.window) >= def.MaxRestarts {
			return 0, fmt.Sprintf("restarted %d times within restart_window %s (max_restarts)", len(s.history.window), window)
		}
		s.history.window = append(s.history.window, now.Add(s.backoff.delay))
	}
	return s.backoff.delay, ""
}

// adminSignal sends a signal asked through the admin API to the instances
// that serve.
func (s *service) adminSignal(ev signalEv) error {
	sent := 0
	for _, in := range s.slots {
		if in == nil || (in.state != stateStarting && in.state != stateReady) {
			continue
		}
		s.log().Info("sending a signal asked through the admin API", zap.Int("pid", in.getPID()), zap.String("signal", ev.name))
		if err := s.w.signal(in, ev.sig); err != nil {
			return fmt.Errorf("process %q: %v", s.name, err)
		}
		sent++
	}
	if sent == 0 {
		return fmt.Errorf("process %q: %w", s.name, errNotRunning)
	}
	return nil
}

// spawnKey is what must be equal for a reload to keep a child running: what
// the child was started from (after expanding placeholders and reading
// env_file), and as whom. Other settings (timeouts, stop signal,
// restart policy) apply to the running child from the reload on.
func spawnKey(def *Process) string {
	b, _ := json.Marshal(struct {
		Args     []string
		Dir      string
		Vars     map[string]string
		Unset    []string
		Identity string
		Port     string
		Socket   string
	}{def.args, def.dir, def.vars, def.UnsetEnv, fmt.Sprintf("%+v", def.id), def.Port, def.Socket})
	return string(b)
}
