package supervise

// The deterministic simulation of the engine (issue 29): the services'
// loops, unchanged, run against a simulated world — a clock, processes
// that boot, serve, hang, crash and exit when told, readiness probes,
// watches (health, memory, lifetime), requests and streams through the
// dynamic upstream, sockets, and a model of Caddy (configs loaded,
// reloads that succeed or fail elsewhere, admin restarts and signals,
// SIGTERM). One seeded random source decides everything, and events run
// one at a time in simulated time, so a run is a pure function of its
// seed: any failure replays exactly. After every event the invariants
// (simInvariants, listed in docs/testing.md) are checked.
//
//	go test -run '^TestSimulation$' .
//	SUPERVISE_SIM_STEPS=1000000 SUPERVISE_SIM_SEED=42 go test -run '^TestSimulation$' .
//
// The real-process tests (soak_test.go, and the tests of each sequence the
// simulation found) show that the simulated world is faithful: each of
// its effects has a real counterpart there.

import (
	"container/heap"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ---- the simulated world's core: a clock and a queue of events ----

// simEvent is something that happens at a moment of simulated time;
// events of the same moment happen in the order they were made.
type simEvent struct {
	at   time.Time
	seq  uint64
	what string
	fn   func() // nil once cancelled
	idx  int
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	return q[i].at.Before(q[j].at) || q[i].at.Equal(q[j].at) && q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int)   { q[i], q[j] = q[j], q[i]; q[i].idx = i; q[j].idx = j }
func (q *simQueue) Push(x any)     { e := x.(*simEvent); e.idx = len(*q); *q = append(*q, e) }
func (q *simQueue) Pop() any       { old := *q; e := old[len(old)-1]; *q = old[:len(old)-1]; return e }
func (q simQueue) peek() *simEvent { return q[0] }

// simJitter is the most an event is late: events that are due together
// happen in any order (threads, pipes and timers race in the real world).
const simJitter = 2 * time.Millisecond

// sim is one run of the simulation.
type sim struct {
	seed    uint64
	rng     *rand.Rand
	now     time.Time
	q       simQueue
	seq     uint64
	steps   int
	limit   int // steps at which the scenario sends SIGTERM
	trace   []string
	tracing bool // keep the whole trace (a scripted run), not only the last lines

	svcs         map[string]*service // the services whose loops run, by name
	procs        map[*instance]*simProc
	pending      map[*service]int // events queued for each service's loop
	watches      map[*instance]*simWatch
	reporting    map[*instance]int  // a watch's report on its way to the loop
	keepers      map[*instance]bool // instances that served only streams as they retired
	boundChecked map[*instance]bool // new instances of jobs whose start was checked (checkBound)
	streams      []*simStream
	open         map[*instance][]*simRequest // requests in flight, by instance
	reqs         int                         // requests in flight
	waiting      []*simRequest
	pid          int
	nextPort     int
	outage       bool // the releases cannot boot now (a database that is down)

	caddy     simCaddy
	waiters   []*simWaiter
	violation string
	fate      func(in *instance) simFate // how a process behaves: random, or scripted
	ended     []string                   // processes that ended for good, with what Caddy was asked
	noLoad    bool                       // a scripted run makes its own requests
	jobSince  map[*job]time.Time
	verdicts  map[*CanaryStatus]bool // canary verdicts checked
	rejected  map[*instance]bool     // instances of releases a canary rejected
	tally     map[string]int         // canary verdicts, by verdict and kind of release
}

func newSim(seed uint64) *sim {
	s := &sim{seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), svcs: make(map[string]*service),
		procs: make(map[*instance]*simProc), pending: make(map[*service]int), watches: make(map[*instance]*simWatch),
		open: make(map[*instance][]*simRequest), reporting: make(map[*instance]int), keepers: make(map[*instance]bool), boundChecked: make(map[*instance]bool),
		pid: 1000, nextPort: 20000}
	s.fate = s.randomFate
	s.verdicts, s.rejected, s.tally = make(map[*CanaryStatus]bool), make(map[*instance]bool), make(map[string]int)
	s.caddy.acquiring = make(map[string]bool)
	return s
}

// at schedules fn at t (never before now).
func (s *sim) at(t time.Time, what string, fn func()) *simEvent {
	if t.Before(s.now) {
		t = s.now
	}
	s.seq++
	e := &simEvent{at: t, seq: s.seq, what: what, fn: fn}
	heap.Push(&s.q, e)
	return e
}

// after schedules fn after d, and up to simJitter later.
func (s *sim) after(d time.Duration, what string, fn func()) *simEvent {
	return s.at(s.now.Add(d+time.Duration(s.rng.Int64N(int64(simJitter)))), what, fn)
}

// dur is a random duration in [lo, hi).
func (s *sim) dur(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

func (s *sim) chance(p float64) bool { return s.rng.Float64() < p }

// log keeps a line of the trace: the last ones, or all of a scripted run.
func (s *sim) log(format string, args ...any) {
	line := fmt.Sprintf("%9.3fs #%d %s", s.now.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)).Seconds(), s.steps, fmt.Sprintf(format, args...))
	if !s.tracing && len(s.trace) >= 400 {
		s.trace = s.trace[1:]
	}
	s.trace = append(s.trace, line)
}

// fail records the first violation of an invariant.
func (s *sim) fail(format string, args ...any) {
	if s.violation == "" {
		s.violation = fmt.Sprintf(format, args...)
		s.log("VIOLATION: %s", s.violation)
	}
}

// run takes events until the queue is empty, a violation, or maxSteps.
func (s *sim) run(maxSteps int) {
	for s.q.Len() > 0 && s.violation == "" && s.steps < maxSteps {
		e := heap.Pop(&s.q).(*simEvent)
		if e.fn == nil {
			continue
		}
		s.now = e.at
		s.steps++
		fn := e.fn
		e.fn = nil
		fn()
		s.checkWaiters()
		s.checkInvariants()
	}
}

// ---- the world the services' loops act on ----

// simWorld is the world of the services of a sim.
type simWorld struct{ s *sim }

func (w simWorld) now() time.Time { return w.s.now }

// post queues ev for the service's loop; false once the loop has ended.
func (w simWorld) post(svc *service, ev any) bool {
	s := w.s
	if s.svcs[svc.name] != svc {
		return false
	}
	s.pending[svc]++
	s.after(0, fmt.Sprintf("%s ← %s", svc.name, evName(ev)), func() {
		s.pending[svc]--
		s.deliver(svc, ev)
	})
	return true
}

func (w simWorld) postLater(svc *service, ev any) { w.post(svc, ev) }

type simTimer struct {
	s   *sim
	svc *service
	e   *simEvent
}

func (t *simTimer) Stop() bool {
	if t.e.fn == nil {
		return false
	}
	t.e.fn = nil
	return true
}

// after: a timer's event is not on its way now (see checkWakeUps).
func (w simWorld) after(svc *service, d time.Duration, ev any) timer {
	s := w.s
	t := &simTimer{s: s, svc: svc}
	t.e = s.after(d, fmt.Sprintf("%s ← %s (timer)", svc.name, evName(ev)), func() {
		s.deliver(svc, ev)
	})
	return t
}

// simTicker: the loop's exit ticker. A tick before Caddy exits changes
// nothing (noticeExit), so the sim delivers ticks only once it exits.
type simTicker struct {
	s       *sim
	svc     *service
	stopped bool
}

func (t *simTicker) C() <-chan time.Time { return nil }
func (t *simTicker) Stop()               { t.stopped = true }

func (w simWorld) ticker(svc *service, d time.Duration) ticker {
	t := &simTicker{s: w.s, svc: svc}
	w.s.caddy.tickers = append(w.s.caddy.tickers, t)
	if w.s.caddy.exiting {
		w.s.tick(t)
	}
	return t
}

// tick delivers the ticker's next tick.
func (s *sim) tick(t *simTicker) {
	s.after(exitCheckEvery, t.svc.name+" ← tick", func() {
		if t.stopped || s.svcs[t.svc.name] != t.svc {
			return
		}
		if t.svc.noticeExit() {
			t.svc.publish()
		}
		s.afterStep(t.svc)
		if !t.stopped {
			s.tick(t)
		}
	})
}

func (w simWorld) port(def *Process) (int, error) {
	switch def.Port {
	case "":
		return 0, nil
	case "auto":
		w.s.nextPort++
		return w.s.nextPort, nil
	}
	return strconv.Atoi(def.Port)
}

func (w simWorld) takeSocket(*instance) error { return nil }
func (w simWorld) dropSocket(*instance)       {}
func (w simWorld) holdSockets(*service)       {}
func (w simWorld) exiting() bool              { return w.s.caddy.exiting }
func (w simWorld) memory(in *instance) int64 {
	if p := w.s.procs[in]; p != nil {
		return p.memory
	}
	return 0
}

// ended: a process ended for good. Caddy is asked to exit, unless its
// on_end keeps it running; either way the documented rules must hold.
func (w simWorld) ended(def *Process, _ *zap.Logger, code int) {
	s := w.s
	svc := s.svcs[def.Name]
	s.log("%s ENDED for good (status %d, on_end %s)", def.Name, code, def.OnEnd)
	s.ended = append(s.ended, def.Name)
	if svc != nil {
		s.checkEndRules(svc, def)
	}
	if def.OnEnd != OnEndKeepRunning {
		s.after(0, "SIGTERM from on_end stop_caddy", s.sigterm)
	}
}

func (w simWorld) gone(svc *service) {
	if w.s.svcs[svc.name] == svc {
		delete(w.s.svcs, svc.name)
	}
	close(svc.done)
	w.s.log("%s: the service's loop ended", svc.name)
}

// deliver runs one event in the service's loop, as its goroutine would.
func (s *sim) deliver(svc *service, ev any) {
	if s.svcs[svc.name] != svc {
		if d, ok := ev.(simDropped); ok {
			d.dropped()
		}
		return
	}
	if e, ok := ev.(instanceExited); ok {
		if p := s.procs[e.in]; p != nil {
			p.reaped = true // the loop hears of it: from now on the PID may be anyone's
		}
	}
	svc.step(ev)
	s.afterStep(svc)
	s.retryWaiting()
}

// afterStep ends the loop once nothing is left to supervise.
func (s *sim) afterStep(svc *service) {
	if s.svcs[svc.name] == svc && svc.finished() {
		svc.w.gone(svc)
	}
}

// simDropped is an event whose sender must learn that the loop had ended
// (the real post returns false).
type simDropped interface{ dropped() }

// evName names an event for the trace.
func evName(ev any) string {
	switch ev := ev.(type) {
	case instanceReady:
		return fmt.Sprintf("ready pid %d", ev.in.getPID())
	case instanceNotReady:
		return fmt.Sprintf("not ready pid %d", ev.in.getPID())
	case instanceExited:
		return fmt.Sprintf("exited pid %d (%s)", ev.in.getPID(), ev.in.result.how)
	case instanceIdle:
		return fmt.Sprintf("idle pid %d", ev.in.getPID())
	case instanceUnhealthy:
		return fmt.Sprintf("unhealthy pid %d", ev.in.getPID())
	case instanceRecycle:
		return fmt.Sprintf("recycle pid %d: %s", ev.in.getPID(), ev.reason)
	case retireDone:
		return fmt.Sprintf("retirement bound %d of pid %d", ev.bound, ev.in.getPID())
	case restartDue:
		return fmt.Sprintf("restart due (slot %d)", ev.slot)
	case acquireEv:
		return fmt.Sprintf("acquire %s (%s)", ev.def.Name, ev.def.Env["RELEASE"])
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", ev), "supervise.")
}

// logger is a logger whose lines go into the trace.
func (s *sim) logger() *zap.Logger { return zap.New(simCore{s}) }

// simCore puts the engine's log lines into the trace.
type simCore struct{ s *sim }

func (c simCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.InfoLevel }
func (c simCore) With([]zapcore.Field) zapcore.Core { return c }
func (c simCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c simCore) Sync() error { return nil }
func (c simCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	var kv []string
	for k, v := range enc.Fields {
		kv = append(kv, fmt.Sprintf("%s=%v", k, v))
	}
	slices.Sort(kv)
	c.s.log("  %s: %s %s", e.LoggerName, e.Message, strings.Join(kv, " "))
	return nil
}

// ---- simulated processes ----

// simFate is how a process behaves once started.
type simFate struct {
	noStart bool          // it cannot be started at all (a missing binary)
	boot    time.Duration // until its probe passes; < 0: never
	crash   time.Duration // it exits by itself this long after its start; 0: never
	code    int           // with this status
}

// simProc is a started process.
type simProc struct {
	in       *instance
	pid      int
	exited   bool // its group is gone (instanceExited is on its way)
	reaped   bool // the loop took instanceExited
	stopping bool
	hung     bool // SIGSTOPped: answers nothing, its probe and health checks fail
	memory   int64
	probe    *simEvent
	exit     *simEvent
	stopAt   time.Time
}

// randomFate: most releases boot in a few seconds; some never boot
// ("broken" exits, "hang" never answers its probe); while the sim has an
// outage nothing boots; now and then a process crashes later.
func (s *sim) randomFate(in *instance) simFate {
	release := in.def.Env["RELEASE"]
	f := simFate{boot: s.dur(20*time.Millisecond, 3*time.Second)}
	switch {
	case strings.HasPrefix(release, "nostart"):
		return simFate{noStart: true}
	case strings.HasPrefix(release, "broken"), s.outage:
		return simFate{boot: -1, crash: s.dur(10*time.Millisecond, 800*time.Millisecond), code: 3}
	case strings.HasPrefix(release, "hang"):
		f.boot = -1
	}
	if s.chance(0.03) {
		f.crash, f.code = s.dur(10*time.Millisecond, 90*time.Second), 1
	}
	return f
}

func (w simWorld) start(in *instance) error {
	s := w.s
	f := s.fate(in)
	if f.noStart {
		s.log("%s: start fails (no such program)", in.def.Name)
		return fmt.Errorf("starting process %q: no such program (simulated)", in.def.Name)
	}
	if in.port != 0 && in.def.Socket == "" {
		for o, p := range s.procs {
			if !p.exited && o.port == in.port && o.def.Socket == "" {
				s.fail("%s: an instance starts on port %d, where pid %d (%s) still listens", in.def.Name, in.port, p.pid, o.def.Name)
			}
		}
	}
	s.pid++
	in.mu.Lock()
	in.pid, in.pinned, in.execed = s.pid, true, true
	in.mu.Unlock()
	in.startedAt = s.now
	p := &simProc{in: in, pid: s.pid, memory: 50 << 20}
	s.procs[in] = p
	s.log("%s: started pid %d (%s, port %d, slot %d)", in.def.Name, p.pid, in.def.Env["RELEASE"], in.port, in.slot)
	if in.def.Ready != nil {
		timeout := time.Duration(in.def.ReadyTimeout)
		if f.boot >= 0 && f.boot < timeout {
			p.probe = s.after(f.boot, fmt.Sprintf("probe of pid %d passes", p.pid), func() {
				p.probe = nil
				if !p.hung {
					w.post(in.svc, instanceReady{in})
				}
			})
		} else {
			p.probe = s.after(timeout, fmt.Sprintf("probe of pid %d gives up", p.pid), func() {
				p.probe = nil
				w.post(in.svc, instanceNotReady{in, "simulated: no answer"})
			})
		}
	}
	if f.crash > 0 {
		s.after(f.crash, fmt.Sprintf("pid %d crashes", p.pid), func() { s.exitProc(p, f.code, fmt.Sprintf("exit code %d", f.code)) })
	}
	return nil
}

// exitProc: the process's group is gone; its requests fail; the loop hears
// of it (the probe and the watch stop with it).
func (s *sim) exitProc(p *simProc, code int, how string) {
	if p.exited {
		return
	}
	p.exited = true
	if p.probe != nil {
		p.probe.fn = nil
		p.probe = nil
	}
	in := p.in // (its watch goes on until the loop hears of the exit)
	in.result = exitResult{code: code, how: how, upFor: s.now.Sub(in.startedAt)}
	s.log("%s: pid %d exits (%s)", in.def.Name, p.pid, how)
	s.failRequestsOf(in)
	ev := instanceExited{in}
	if !(simWorld{s}).post(in.svc, ev) {
		s.fail("pid %d exited, but its service's loop had ended: nobody reaps it", p.pid)
	}
}

func (s *sim) proc(in *instance, what string) *simProc {
	p := s.procs[in]
	if p == nil {
		s.fail("%s of an instance never started (pid %d)", what, in.getPID())
		return nil
	}
	if p.reaped {
		s.fail("%s of pid %d after its exit was handled: its PID may be another process's now", what, p.pid)
		return nil
	}
	return p
}

func (w simWorld) stop(in *instance) bool {
	s := w.s
	p := s.proc(in, "stop signal")
	if p == nil || p.stopping || p.exited {
		return false
	}
	if in.accepting.Load() {
		s.fail("stop signal to pid %d while requests may still be sent to it", p.pid)
	}
	if n := in.inflight.Load() - in.streams.Load(); n > 0 && !s.mayCut(in) {
		s.fail("stop signal to pid %d with %d requests in flight, before its drain_timeout", p.pid, n)
	}
	p.stopping, p.stopAt = true, s.now
	timeout := time.Duration(in.settings.Load().StopTimeout)
	if d := s.dur(0, timeout*6/5); d < timeout && !p.hung {
		p.exit = s.after(d, fmt.Sprintf("pid %d exits on its stop signal", p.pid), func() { s.exitProc(p, 0, "exit code 0") })
	} else {
		p.exit = s.after(timeout, fmt.Sprintf("pid %d killed at stop_timeout", p.pid), func() { s.exitProc(p, 137, "killed by SIGKILL") })
	}
	return true
}

// mayCut reports whether the requests in flight of in may be cut short:
// its drain_timeout since it retired is over, or, at Caddy's exit, the
// drain is over or drain_timeout (the one in force, as exitSequence reads
// it) has passed since the exit sequence began.
func (s *sim) mayCut(in *instance) bool {
	if !in.drainDeadline.IsZero() && !s.now.Before(in.drainDeadline) {
		return true
	}
	if s.caddy.exitBegan.IsZero() {
		return false
	}
	timeout := DefaultDrainTimeout
	if def := in.svc.current(); def != nil {
		timeout = time.Duration(def.DrainTimeout)
	}
	return s.caddy.drained || s.caddy.draining && s.reqs == 0 || s.now.Sub(s.caddy.exitBegan) >= timeout
}

func (w simWorld) kill(in *instance) {
	s := w.s
	p := s.proc(in, "SIGKILL")
	if p == nil || p.exited {
		return
	}
	if in.accepting.Load() {
		s.fail("SIGKILL to pid %d while requests may still be sent to it", p.pid)
	}
	p.stopping = true
	s.after(0, fmt.Sprintf("pid %d killed", p.pid), func() { s.exitProc(p, 137, "killed by SIGKILL") })
}

func (w simWorld) signal(in *instance, sig syscall.Signal) error {
	p := w.s.proc(in, "signal "+sig.String())
	if p == nil || p.exited {
		return errNotRunning
	}
	return nil
}

// ---- watches: health, memory, lifetime ----

type simWatch struct {
	s      *sim
	in     *instance
	def    *Process
	gen    int
	active bool
	events []*simEvent
}

func (wt *simWatch) stop() {
	wt.active = false
	for _, e := range wt.events {
		e.fn = nil
	}
	if wt.s.watches[wt.in] == wt {
		delete(wt.s.watches, wt.in)
	}
}

// report: the watch found a failure or a limit. Like the real one, it
// ends after a failed health check (the instance leaves service); after a
// limit, it goes on checking the instance's health.
func (wt *simWatch) report(ev any) {
	if !wt.active {
		return
	}
	if _, unhealthy := ev.(instanceUnhealthy); unhealthy {
		wt.stop()
	}
	s, in, svc := wt.s, wt.in, wt.in.svc
	if s.svcs[svc.name] != svc {
		return
	}
	s.reporting[in]++ // on its way: the loop has not heard of it yet
	s.pending[svc]++
	s.after(0, fmt.Sprintf("%s ← %s", svc.name, evName(ev)), func() {
		s.pending[svc]--
		if s.reporting[in]--; s.reporting[in] == 0 {
			delete(s.reporting, in)
		}
		s.deliver(svc, ev)
	})
}

func (w simWorld) watch(in *instance, def *Process, gen int) func() {
	s := w.s
	if old := s.watches[in]; old != nil {
		old.stop()
	}
	wt := &simWatch{s: s, in: in, def: def, gen: gen, active: true}
	s.watches[in] = wt
	if def.MaxLifetime > 0 {
		wt.events = append(wt.events, s.at(in.startedAt.Add(time.Duration(def.MaxLifetime)), fmt.Sprintf("pid %d reaches max_lifetime", in.getPID()), func() {
			wt.report(instanceRecycle{in, "max_lifetime", gen})
		}))
	}
	if p := s.procs[in]; p != nil && p.hung {
		s.hungCheck(wt)
	}
	if p := s.procs[in]; p != nil && def.MaxMemory > 0 && p.memory > int64(def.MaxMemory) {
		wt.events = append(wt.events, s.after(memoryEvery, fmt.Sprintf("pid %d over max_memory", in.getPID()), func() {
			wt.report(instanceRecycle{in, "max_memory", gen})
		}))
	}
	return wt.stop
}

// hungCheck: a hung instance fails its health checks; after `fails` of
// them its watch reports it.
func (s *sim) hungCheck(wt *simWatch) {
	h := wt.def.Health
	if h == nil {
		return
	}
	d := time.Duration(h.Interval)*time.Duration(h.Fails) + time.Duration(h.Timeout)
	wt.events = append(wt.events, s.after(s.dur(d/2, d), fmt.Sprintf("pid %d fails its health checks", wt.in.getPID()), func() {
		wt.report(instanceUnhealthy{wt.in, "simulated: no answer", wt.gen})
	}))
}

// ---- requests and streams through the dynamic upstream ----

type simRequest struct {
	svc    *service
	in     *instance
	stream bool
	since  time.Time
	ended  bool
	failed bool // its process went away: no answer
	waits  bool // it waits for its response's status (the instance counts it: see awaitStatus)
	sentAt time.Time
	end    *simEvent
	st     *simStream

	scripted   bool          // a script's (hold): ends when it says
	opensAfter time.Duration // a script's: when its response becomes a stream
}

type simStream struct {
	req    *simRequest
	ending bool // its end is on its way (endStreams picked it)
	closed bool // its close went out
}

// request sends a request to the service as the dynamic upstream would:
// to a ready instance (waiting while none is, up to `wait`).
func (s *sim) request(svc *service, stream bool) {
	r := &simRequest{svc: svc, stream: stream, since: s.now}
	s.route(r)
}

func (s *sim) route(r *simRequest) {
	svc := r.svc
	if s.svcs[svc.name] != svc {
		return
	}
	v := svc.view.Load()
	for range 8 {
		if len(v.targets) == 0 && v.canary == nil {
			break
		}
		targets := v.targets
		if c := v.canary; c != nil && (len(targets) == 0 || s.rng.IntN(100) < c.w.def.Share) {
			targets = c.targets // (the cookie that keeps a client on one release is HTTP's: the real tests)
		}
		if len(targets) == 0 {
			break
		}
		in := targets[s.rng.IntN(len(targets))]
		if p := s.procs[in]; p != nil && p.stopping && in.accepting.Load() {
			s.fail("the upstream offers pid %d, which got its stop signal", p.pid)
		}
		if in.enter() {
			s.admitted(r, in)
			return
		}
	}
	if v.pending && s.now.Sub(r.since) < DefaultUpstreamWait {
		s.waiting = append(s.waiting, r) // until the view changes
	}
}

// retryWaiting routes the requests that wait, once a view changed.
func (s *sim) retryWaiting() {
	if len(s.waiting) == 0 {
		return
	}
	w := s.waiting
	s.waiting = nil
	for _, r := range w {
		s.route(r)
	}
}

// hold sends a request to the instance itself, which lasts d (a script's).
func (s *sim) hold(in *instance, stream bool, d time.Duration) {
	s.holdOpening(in, stream, 0, d)
}

// holdOpening is hold, with a stream that is an ordinary request until
// opensAfter.
func (s *sim) holdOpening(in *instance, stream bool, opensAfter, d time.Duration) {
	r := &simRequest{svc: in.svc, stream: stream, since: s.now, scripted: true, opensAfter: opensAfter}
	if !in.enter() {
		s.fail("a script's request to pid %d was not admitted", in.getPID())
		return
	}
	s.admitted(r, in)
	if r.end != nil {
		r.end.fn = nil
	}
	r.end = s.after(d, "a request of the script ends", func() { s.finish(r) })
}

func (s *sim) admitted(r *simRequest, in *instance) {
	r.in = in
	r.waits, r.sentAt = true, s.now
	in.awaited.Add(1)
	s.reqs++
	s.open[in] = append(s.open[in], r)
	if p := s.procs[in]; p != nil && p.exited {
		r.end = s.after(0, "a request to a process that is gone fails", func() { s.finish(r) })
		return
	} else if p != nil && (p.hung || strings.HasPrefix(in.def.Env["RELEASE"], "stall")) {
		return // it never answers; it fails when the process goes
	}
	if r.stream {
		// an ordinary request until its response becomes a stream (the
		// WebSocket upgrade, the SSE headers): then counted as one, as
		// stream.open does
		// (a script's stream is one at once, and ends when it says)
		open := func() {
			if r.ended {
				return
			}
			st := &simStream{req: r}
			r.st = st
			r.statusCame()
			s.streams = append(s.streams, st)
			in.countStream(wsStream, 1)
			in.becameStream()
			s.checkWakeUps(in.svc)
			if in.streamsEnding || s.caddy.draining {
				s.endStream(st, 0)
			} else if !r.scripted {
				r.end = s.after(s.dur(time.Second, 10*time.Minute), "a stream ends by itself", func() { s.finish(r) })
			}
		}
		if r.scripted {
			s.after(r.opensAfter, "a script's response becomes a stream", open)
		} else {
			s.after(s.dur(0, 200*time.Millisecond), "a response becomes a stream", open)
		}
		return
	}
	r.end = s.after(s.dur(time.Millisecond, 2*time.Second), "a request ends", func() { s.finish(r) })
}

// finish ends a request (and its stream), as the handler's return would.
func (s *sim) finish(r *simRequest) {
	if r.ended {
		return
	}
	r.ended = true
	if r.end != nil {
		r.end.fn = nil
	}
	s.reqs--
	in := r.in
	s.open[in] = slices.DeleteFunc(s.open[in], func(x *simRequest) bool { return x == r })
	if len(s.open[in]) == 0 {
		delete(s.open, in)
	}
	if r.st != nil {
		in.countStream(wsStream, -1) // before the request's end: streams ≤ requests
		s.streams = slices.DeleteFunc(s.streams, func(x *simStream) bool { return x == r.st })
	}
	r.statusCame()
	in.outcomes[s.outcomeOf(r)].Add(1) // (as supervise_streams counts it)
	in.requestEnded()
	s.checkWakeUps(in.svc)
}

// statusCame: the request got its response's status (or ended).
func (r *simRequest) statusCame() {
	if r.waits {
		r.waits = false
		r.in.answered.Add(1)
	}
}

// outcomeOf is how a request ended: no answer if its process went away; a
// 5xx from a "bad" release, and from half of a "flaky" one's.
func (s *sim) outcomeOf(r *simRequest) outcome {
	release := r.in.def.Env["RELEASE"]
	switch {
	case r.failed || r.in.state == stateExited:
		return noAnswer
	case strings.HasPrefix(release, "bad"), strings.HasPrefix(release, "flaky") && s.chance(0.5):
		return serverError
	}
	return answered
}

// failRequestsOf: the instance's process is gone; what it served fails.
func (s *sim) failRequestsOf(in *instance) {
	for _, r := range slices.Clone(s.open[in]) {
		if r.end != nil {
			r.end.fn = nil
		}
		r.failed = true
		s.after(0, "a request fails with its process", func() { s.finish(r) })
	}
}

func (w simWorld) endStreams(in *instance, spread time.Duration) int {
	s := w.s
	in.streamsEnding = true
	var mine []*simStream
	for _, st := range s.streams {
		// (without a spread, also those waiting their turn in one)
		if st.req.in == in && (!st.ending || spread == 0 && !st.closed) {
			mine = append(mine, st)
		}
	}
	for i, st := range mine {
		s.endStream(st, spread*time.Duration(i)/time.Duration(len(mine)))
	}
	return len(mine)
}

// endStream ends a stream cleanly after d: its client answers the close.
// An end that waits its turn in a spread (d > 0) is dropped if, by then,
// its instance serves again (a put-back) and Caddy does not exit, as the
// real timer's check does.
func (s *sim) endStream(st *simStream, d time.Duration) {
	st.ending = true
	if d == 0 {
		s.closeStream(st)
		return
	}
	s.after(d, "a stream's turn to end comes", func() {
		if st.req.ended || st.closed {
			return
		}
		if !s.caddy.draining && !st.req.in.streamsEnding {
			st.ending = false // (it may be picked again)
			return
		}
		s.closeStream(st)
	})
}

// closeStream: the stream's close goes out; its client answers it.
func (s *sim) closeStream(st *simStream) {
	if !st.closed {
		st.closed = true
		s.after(s.dur(time.Millisecond, 50*time.Millisecond), "a stream is ended", func() { s.finish(st.req) })
	}
}

// ---- Caddy: configs, reloads, the admin API, the exit ----

// simConfig is a config Caddy loads: its supervise app.
type simConfig struct {
	gen            int
	app            *App
	failsElsewhere bool // another app of it fails to start (a busy port)
	acquired       []*service
	yielded        []*service
}

type simCaddy struct {
	active    *simConfig
	loading   *simConfig // its Start runs: Caddy's config lock is held
	gens      int
	sigterm   bool // SIGTERM came
	exiting   bool // caddy.Exiting()
	draining  bool // the final config's servers began to shut down
	drained   bool
	done      bool // Caddy's process exited
	exitAt    time.Time
	exitBegan time.Time // the final config's stop began the exit sequence
	tickers   []*simTicker
	acquiring map[string]bool // processes whose acquire waits for its answer
	results   []string        // what each reload and restart answered, for the trace
}

// simWaiter waits for a condition that only the loops' events change.
type simWaiter struct {
	ready func() bool
	then  func()
}

func (s *sim) await(ready func() bool, then func()) {
	s.waiters = append(s.waiters, &simWaiter{ready, then})
}

func (s *sim) checkWaiters() {
	for again := true; again; {
		again = false
		for i, w := range s.waiters {
			if w.ready() {
				s.waiters = slices.Delete(s.waiters, i, i+1)
				w.then()
				again = true
				break
			}
		}
	}
}

// postTo posts ev for the loop of svc; onDrop runs if the loop ended
// before it took it (the real post returns false).
func (s *sim) postTo(svc *service, ev any, onDrop func()) {
	s.postThen(svc, ev, onDrop, nil)
}

// postThen is postTo, then then runs once the loop took ev: what the
// real poster does next comes after ev in the loop's queue.
func (s *sim) postThen(svc *service, ev any, onDrop, then func()) {
	if s.svcs[svc.name] != svc {
		if onDrop != nil {
			onDrop()
		}
		return
	}
	s.pending[svc]++
	s.after(0, fmt.Sprintf("%s ← %s", svc.name, evName(ev)), func() {
		s.pending[svc]--
		if s.svcs[svc.name] != svc {
			if onDrop != nil {
				onDrop()
			}
			return
		}
		s.deliver(svc, ev)
		if then != nil {
			then()
		}
	})
}

// ask is the real ask: the service of name takes ev, made (and taking ev
// as its first event, at once) if none runs.
func (s *sim) ask(name string, ev any) *service {
	if svc := s.svcs[name]; svc != nil {
		s.postTo(svc, ev, func() { s.ask(name, ev) })
		return svc
	}
	svc := newService(name, simWorld{s})
	s.svcs[name] = svc
	s.log("%s: a new service takes %s", name, evName(ev))
	svc.handle(ev)
	svc.unborn = false
	svc.publish()
	s.afterStep(svc)
	return svc
}

// names are the names of the services whose loops run, in order.
func (s *sim) names() []string {
	names := make([]string, 0, len(s.svcs))
	for name := range s.svcs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// all runs f for each item at once (as releaseAll's goroutines), then
// then, once each called its done.
func simAll[T any](s *sim, items []T, f func(item T, done func()), then func()) {
	left := len(items)
	if left == 0 {
		then()
		return
	}
	for _, it := range items {
		f(it, func() {
			if left--; left == 0 {
				then()
			}
		})
	}
}

// start is App.Start: yield the ports the config takes, then acquire each
// process in order; if one fails, let go of all (releaseAll).
func (s *sim) start(cfg *simConfig, done func(error)) {
	a := cfg.app
	var yields []*service
	for _, name := range s.names() {
		svc := s.svcs[name]
		if slices.ContainsFunc(a.Processes, func(d *Process) bool { return d.Name == name }) {
			continue
		}
		st := svc.view.Load().status
		if slices.ContainsFunc(a.Processes, func(d *Process) bool { return d.takes(st.Port, st.Socket) }) {
			yields = append(yields, svc)
		}
	}
	var yieldNext func(i int)
	yieldNext = func(i int) {
		if i == len(yields) {
			s.acquireFrom(cfg, 0, done)
			return
		}
		svc := yields[i]
		reply := make(chan struct{})
		s.postTo(svc, yieldEv{app: a, reply: reply}, func() { yieldNext(i + 1) })
		s.await(func() bool { return isClosed(reply) }, func() {
			cfg.yielded = append(cfg.yielded, svc)
			yieldNext(i + 1)
		})
	}
	yieldNext(0)
}

// acquireFrom acquires the config's processes from the i-th on.
func (s *sim) acquireFrom(cfg *simConfig, i int, done func(error)) {
	a := cfg.app
	if i == len(a.Processes) {
		done(nil)
		return
	}
	def := a.Processes[i]
	candidate := slices.ContainsFunc(cfg.yielded, func(svc *service) bool {
		st := svc.view.Load().status
		return def.takes(st.Port, st.Socket)
	})
	reply := make(chan error, 1)
	key := spawnKey(def)
	// the reload adds the process: none ran before (or it had ended for good)
	added := true
	if old := s.svcs[def.Name]; old != nil && !old.ended {
		added = len(old.live) == 0 && len(old.backoff.due) == 0
	}
	reload := s.caddy.active != nil // (not Caddy's first config)
	s.caddy.acquiring[def.Name] = reload && added
	svc := s.ask(def.Name, acquireEv{app: a, def: def, candidate: candidate, reload: reload, reply: reply})
	cfg.acquired = append(cfg.acquired, svc)
	s.await(func() bool { return len(reply) > 0 }, func() {
		delete(s.caddy.acquiring, def.Name)
		if err := <-reply; err != nil {
			s.releaseAll(cfg, func() { done(err) })
			return
		}
		if reload && added && def.Ready != nil && !slices.ContainsFunc(svc.slots, func(in *instance) bool {
			return in != nil && in.key == key && in.state == stateReady
		}) {
			s.fail("%s: a reload took over a process it started (%s) before it was ready: if it fails now, its on_end applies to the site", def.Name, def.Env["RELEASE"])
		}
		s.acquireFrom(cfg, i+1, done)
	})
}

// releaseAll is App.releaseAll: let go of the acquired processes, then
// of those the config stopped for their ports; done once they are gone.
func (s *sim) releaseAll(cfg *simConfig, done func()) {
	release := func(svcs []*service, then func()) {
		simAll(s, svcs, func(svc *service, done func()) {
			reply := make(chan struct{})
			s.postTo(svc, releaseEv{app: cfg.app, reply: reply}, done)
			s.await(func() bool { return isClosed(reply) }, done)
		}, then)
	}
	acquired, yielded := cfg.acquired, cfg.yielded
	cfg.acquired, cfg.yielded = nil, nil
	release(acquired, func() { release(yielded, done) })
}

// reload loads cfg as Caddy does: start it; if it (or another of its
// apps) fails, stop it and the old one serves on; else stop the old one.
// Caddy's config lock makes loads wait for each other.
func (s *sim) reload(cfg *simConfig) {
	if s.caddy.loading != nil || s.caddy.exiting {
		return // (a load that waits for the lock: the next one comes)
	}
	s.caddy.loading = cfg
	s.log("reload: config %d (%s)", cfg.gen, describe(cfg.app))
	s.start(cfg, func(err error) {
		if err == nil && cfg.failsElsewhere {
			err = fmt.Errorf("another app of the config failed to start")
			s.releaseAll(cfg, func() { s.loaded(cfg, err) }) // its Stop, while the old config is active
			return
		}
		if err != nil {
			s.loaded(cfg, err)
			return
		}
		old := s.caddy.active
		s.caddy.active = cfg
		if old == nil {
			s.loaded(cfg, nil)
			return
		}
		s.releaseAll(old, func() { s.loaded(cfg, nil) }) // the old config's Stop
	})
}

// loaded: the load is over; an exit that waited for the lock goes on.
func (s *sim) loaded(cfg *simConfig, err error) {
	s.caddy.loading = nil
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	s.log("reload of config %d: %s", cfg.gen, cut(result, 200))
	if s.caddy.exiting {
		s.finalStop()
	}
}

// sigterm: Caddy's exit begins (SIGTERM, or on_end stop_caddy). It waits
// for a load in progress (the config lock), which the loops' exit tickers
// call off.
func (s *sim) sigterm() {
	if s.caddy.sigterm {
		return
	}
	s.caddy.sigterm, s.caddy.exiting, s.caddy.exitAt = true, true, s.now
	s.log("SIGTERM: Caddy exits")
	for _, t := range s.caddy.tickers {
		if !t.stopped {
			s.tick(t)
		}
	}
	if s.caddy.loading == nil {
		s.finalStop()
	}
}

// finalStop is Caddy's stop of its last config: the exit sequence
// (exitSequence), the drain, then waitForChildren.
func (s *sim) finalStop() {
	began := s.now
	s.caddy.exitBegan = began
	s.log("the final config stops: the exit sequence")
	svcs := make([]*service, 0, len(s.svcs))
	for _, name := range s.names() {
		svcs = append(svcs, s.svcs[name])
	}
	drained := func() bool { return s.caddy.draining && s.reqs == 0 }
	grace := 90 * time.Second
	s.after(grace, "the grace period ends", func() { s.caddy.drained = true })
	// for each process, as exitSequence's goroutine does: exitEv, then
	// (once the loop took it) drain_timeout since the exit began or the
	// drain, whichever comes first, then stopAllEv
	for _, svc := range svcs {
		s.postThen(svc, exitEv{}, nil, func() {
			timeout := DefaultDrainTimeout
			if def := svc.current(); def != nil {
				timeout = time.Duration(def.DrainTimeout)
			}
			sent := false
			send := func() {
				if !sent {
					sent = true
					s.postTo(svc, stopAllEv{reason: "Caddy is exiting", drained: s.now.Sub(began)}, nil)
				}
			}
			s.after(max(0, began.Add(timeout).Sub(s.now)), svc.name+": drain_timeout since the exit began", send)
			s.await(func() bool { return drained() || s.caddy.drained }, send)
		})
	}
	// the servers begin to shut down: every stream ends, no new request
	s.after(0, "the servers begin to shut down", func() {
		s.caddy.draining = true
		s.waiting = nil
		for _, st := range slices.Clone(s.streams) {
			s.endStream(st, 0) // (also those waiting their turn in a spread)
		}
	})
	s.await(func() bool { return drained() || s.caddy.drained }, func() {
		s.log("the http app stopped: waitForChildren")
		left := slices.Clone(svcs)
		for _, name := range s.names() {
			if svc := s.svcs[name]; !slices.Contains(left, svc) {
				left = append(left, svc) // (none should have come)
			}
		}
		for _, svc := range left {
			s.postTo(svc, stopAllEv{reason: "Caddy is exiting"}, nil)
		}
		s.await(func() bool { return len(s.svcs) == 0 }, func() {
			s.caddy.done = true
			s.log("Caddy's process exits")
		})
	})
}

// restart is the admin API's restart of a process.
func (s *sim) restart(name string) {
	svc := s.svcs[name]
	if svc == nil {
		return
	}
	reply := make(chan restartAnswer, 1)
	s.log("admin: restart %s", name)
	s.postTo(svc, restartEv{reply: reply}, nil)
	s.await(func() bool { return len(reply) > 0 }, func() {
		a := <-reply
		if a.err != nil {
			s.log("admin restart of %s: %s", name, cut(a.err.Error(), 200))
		} else {
			s.log("admin restart of %s: ok", name)
		}
	})
}

// describe sums a config up for the trace.
func describe(a *App) string {
	var parts []string
	for _, p := range a.Processes {
		parts = append(parts, fmt.Sprintf("%s %s port=%q instances=%d", p.Name, p.Env["RELEASE"], p.Port, p.count))
	}
	return strings.Join(parts, "; ")
}

// ---- the scenario: configs that change, faults, load ----

// simSpec is what a config says of its processes: web, the app (its
// variant is the seed's), and maybe jobs, a worker that serves no HTTP.
type simSpec struct {
	variant                        string // blue-green, fixed, socket, none, pool
	release                        string
	instances, rollBatch           int
	health                         bool
	maxLifetime, maxMemory         bool
	maxRequests                    int64
	restart, onEnd                 string
	maxRestarts                    int
	drain, stop, ready, streamWait time.Duration
	jobs                           bool
	jobsRelease                    string
	jobsReady                      bool
	canary                         *Canary // the deploys' canary (blue-green and pool), if any
}

var simVariants = []string{"blue-green", "fixed", "socket", "none", "pool"}

// newSpec is a seed's first config.
func (s *sim) newSpec() simSpec {
	sp := simSpec{variant: simVariants[s.rng.IntN(len(simVariants))], release: "v1", instances: 1, rollBatch: 1}
	if sp.variant == "pool" {
		sp.instances, sp.rollBatch = 2+s.rng.IntN(3), 1+s.rng.IntN(2)
	}
	sp.restart = []string{RestartAlways, RestartOnFailure, RestartOnFailure, RestartNever}[s.rng.IntN(4)]
	sp.onEnd = []string{OnEndStopCaddy, OnEndKeepRunning}[s.rng.IntN(2)]
	if sp.restart != RestartNever && s.chance(0.3) {
		sp.maxRestarts = 3 + s.rng.IntN(5)
	}
	sp.drain = s.dur(200*time.Millisecond, 20*time.Second)
	sp.stop = s.dur(200*time.Millisecond, 8*time.Second)
	sp.ready = s.dur(2*time.Second, 40*time.Second)
	sp.streamWait = s.dur(5*time.Second, 5*time.Minute)
	s.changeOptions(&sp)
	sp.jobs = s.chance(0.4)
	sp.jobsRelease, sp.jobsReady = "v1", s.chance(0.5)
	return sp
}

// changeOptions draws the options a reload may change.
func (s *sim) changeOptions(sp *simSpec) {
	recycles := sp.variant == "blue-green" || sp.variant == "pool"
	sp.health = sp.variant != "none" && s.chance(0.5)
	sp.maxLifetime = recycles && s.chance(0.3)
	sp.maxMemory = recycles && s.chance(0.3)
	sp.maxRequests = 0
	if recycles && s.chance(0.2) {
		sp.maxRequests = 50 + s.rng.Int64N(400)
	}
	sp.canary = nil
	if recycles && s.chance(0.4) {
		sp.canary = &Canary{Share: 1 + s.rng.IntN(maxCanaryShare), Window: Duration(s.dur(500*time.Millisecond, 15*time.Second))}
	}
}

// nextSpec is what a reload changes: a new release (good, or one that
// never boots), the pool's size, the options, the worker.
func (s *sim) nextSpec(sp simSpec) simSpec {
	s.caddy.gens++
	n := strconv.Itoa(s.caddy.gens)
	switch r := s.rng.IntN(100); {
	case r < 55:
		sp.release = "v" + n
	case r < 65:
		sp.release = "broken" + n
	case r < 70:
		sp.release = "hang" + n
	case r < 73:
		sp.release = "nostart" + n
	case r < 80:
		sp.release = "bad" + n // boots, answers its probe, fails every request (5xx)
	case r < 83:
		sp.release = "flaky" + n // fails half of its requests
	case r < 85:
		sp.release = "stall" + n // boots, answers its probe, never answers a request
	}
	if sp.variant == "pool" && s.chance(0.15) {
		sp.instances = 1 + s.rng.IntN(4)
	}
	if s.chance(0.15) {
		s.changeOptions(&sp)
	}
	if s.chance(0.15) {
		sp.jobs = !sp.jobs
		sp.jobsReady = s.chance(0.5)
	}
	if s.chance(0.15) {
		sp.jobsRelease = []string{"v" + n, "broken" + n}[s.rng.IntN(2)]
	}
	return sp
}

// config makes (and provisions) the config of sp.
func (s *sim) config(sp simSpec) *simConfig {
	web := &Process{Name: "web", Command: []string{"sh", "-c", "exec app"}, Env: map[string]string{"RELEASE": sp.release},
		Restart: sp.restart, OnEnd: sp.onEnd, MaxRestarts: sp.maxRestarts, DrainTimeout: Duration(sp.drain), StopTimeout: Duration(sp.stop),
		StreamDrainTimeout: Duration(sp.streamWait)}
	switch sp.variant {
	case "blue-green":
		web.Port, web.Ready = "auto", &ReadyProbe{HTTP: ptr("/up")}
	case "pool":
		web.Port, web.Ready = "auto", &ReadyProbe{HTTP: ptr("/up")}
		web.Instances, web.RollBatch = Instances(sp.instances), sp.rollBatch
	case "fixed":
		web.Port = "23000"
	case "socket":
		web.Socket, web.Ready = "127.0.0.1:24000", &ReadyProbe{HTTP: ptr("/up")}
	}
	if web.Ready != nil || web.Port != "" {
		web.ReadyTimeout = Duration(sp.ready)
	}
	if sp.health {
		web.Health = &HealthCheck{}
	}
	if sp.maxLifetime {
		web.MaxLifetime = Duration(s.dur(20*time.Second, 3*time.Minute))
	}
	if sp.maxMemory {
		web.MaxMemory = 200 << 20
	}
	web.MaxLifetimeRequests = sp.maxRequests
	if sp.canary != nil {
		c := *sp.canary
		web.Canary = &c
	}
	defs := []*Process{web}
	if sp.jobs {
		jobs := &Process{Name: "jobs", Command: []string{"sh", "-c", "exec jobs"}, Env: map[string]string{"RELEASE": sp.jobsRelease},
			Restart: RestartAlways, DrainTimeout: Duration(100 * time.Millisecond), StopTimeout: Duration(sp.stop)}
		if sp.jobsReady {
			jobs.Ready, jobs.ReadyTimeout = &ReadyProbe{TCP: ptr("127.0.0.1:9")}, Duration(sp.ready)
		}
		defs = append(defs, jobs)
	}
	if s.chance(0.5) {
		slices.Reverse(defs) // the order of the config's processes
	}
	a := &App{Processes: defs, logger: s.logger(), started: make(chan struct{}), drained: make(chan struct{}), link: &configLink{}}
	for i, d := range defs {
		if err := d.provision(i); err != nil {
			panic(fmt.Sprintf("sim: provisioning %s: %v", d.Name, err))
		}
	}
	s.caddy.gens++
	return &simConfig{gen: s.caddy.gens, app: a}
}

// scenario runs a random schedule: Caddy starts with a config; then, at
// random moments, reloads (a new release, a broken one, changed options,
// a worker added or dropped, a reload that fails elsewhere), admin
// restarts and signals, crashes and hangs of instances, memory leaks,
// outages during which nothing boots, and load (requests and streams);
// after about `steps` steps, SIGTERM.
func (s *sim) scenario(steps int) {
	s.limit = steps/2 + s.rng.IntN(steps/2+1)
	spec := s.newSpec()
	s.reload(s.config(spec))
	s.after(time.Millisecond, "load", s.load)
	var act func()
	act = func() {
		if s.caddy.sigterm {
			return
		}
		if s.steps >= s.limit {
			s.sigterm()
			return
		}
		switch r := s.rng.IntN(100); {
		case r < 28:
			if s.caddy.loading == nil {
				spec = s.nextSpec(spec)
				cfg := s.config(spec)
				cfg.failsElsewhere = s.chance(0.12)
				s.reload(cfg)
			}
		case r < 31:
			if s.caddy.loading == nil && s.caddy.active != nil { // the same config again (a forced reload)
				cfg := s.config(spec)
				s.reload(cfg)
			}
		case r < 45:
			s.restart([]string{"web", "jobs"}[s.rng.IntN(2)])
		case r < 60:
			s.crashOne()
		case r < 66:
			s.hangOne()
		case r < 70:
			s.leakOne()
		case r < 75:
			s.outage = !s.outage
			s.log("outage: %v", s.outage)
		case r < 77:
			if svc := s.svcs["web"]; svc != nil {
				reply := make(chan error, 1)
				s.postTo(svc, signalEv{sig: syscall.SIGUSR1, name: "USR1", reply: reply}, nil)
				s.await(func() bool { return len(reply) > 0 }, func() { <-reply })
			}
		case r < 82:
			if svc := s.svcs["web"]; svc != nil {
				for range 1 + s.rng.IntN(5) {
					s.request(svc, true)
				}
			}
		}
		s.after(s.dur(50*time.Millisecond, 4*time.Second), "next action", act)
	}
	s.after(s.dur(100*time.Millisecond, time.Second), "next action", act)
}

// load sends web requests, a few of them streams, until Caddy drains.
func (s *sim) load() {
	if s.caddy.draining || s.noLoad {
		return
	}
	if svc := s.svcs["web"]; svc != nil && svc.current() != nil && (svc.current().Port != "" || svc.current().Socket != "") {
		s.request(svc, s.chance(0.05))
	}
	s.after(s.dur(5*time.Millisecond, 120*time.Millisecond), "load", s.load)
}

// liveProcs lists the processes of a service that run, in start order.
func (s *sim) liveProcs(name string) []*simProc {
	svc := s.svcs[name]
	if svc == nil {
		return nil
	}
	var ps []*simProc
	for _, in := range svc.live {
		if p := s.procs[in]; p != nil && !p.exited {
			ps = append(ps, p)
		}
	}
	return ps
}

func (s *sim) pickProc() *simProc {
	ps := append(s.liveProcs("web"), s.liveProcs("jobs")...)
	if len(ps) == 0 {
		return nil
	}
	return ps[s.rng.IntN(len(ps))]
}

// crashOne: a process dies by itself (the OOM killer, a bug).
func (s *sim) crashOne() {
	if p := s.pickProc(); p != nil {
		s.log("fault: pid %d is killed from outside", p.pid)
		s.exitProc(p, 137, "killed by SIGKILL")
	}
}

// hangOne: a process stops answering (SIGSTOP): its requests hang, its
// health checks fail.
func (s *sim) hangOne() {
	if p := s.pickProc(); p != nil && !p.hung {
		s.hangProc(p)
	}
}

// hangProc: the process stops answering.
func (s *sim) hangProc(p *simProc) {
	p.hung = true
	s.log("fault: pid %d hangs", p.pid)
	if p.probe != nil && p.probe.what != "" && strings.Contains(p.probe.what, "passes") {
		p.probe.fn = nil // it will not pass: it gives up at ready_timeout
		in := p.in
		p.probe = s.at(in.startedAt.Add(time.Duration(in.def.ReadyTimeout)), "probe gives up", func() {
			p.probe = nil
			(simWorld{s}).post(in.svc, instanceNotReady{in, "simulated: hung"})
		})
	}
	for _, r := range s.open[p.in] {
		if r.end != nil {
			r.end.fn = nil // it never answers
		}
	}
	if wt := s.watches[p.in]; wt != nil {
		s.hungCheck(wt)
	}
}

// leakOne: a process's memory grows past max_memory.
func (s *sim) leakOne() {
	ps := s.liveProcs("web")
	if len(ps) == 0 {
		return
	}
	p := ps[s.rng.IntN(len(ps))]
	p.memory = 300 << 20
	if wt := s.watches[p.in]; wt != nil && wt.def.MaxMemory > 0 {
		wt.events = append(wt.events, s.after(s.dur(0, memoryEvery), fmt.Sprintf("pid %d over max_memory", p.pid), func() {
			wt.report(instanceRecycle{p.in, "max_memory", wt.gen})
		}))
	}
}

// ---- the invariants, checked after every event ----
//
// Each is listed in docs/testing.md ("The simulation's invariants").

// checkInvariants checks every service, and the world's own books.
func (s *sim) checkInvariants() {
	for _, name := range s.names() {
		s.checkService(s.svcs[name])
	}
	if s.reqs < 0 {
		s.fail("requests in flight: %d", s.reqs)
	}
}

// oldAfter is how long a transition may take at most: a roll of every
// slot, each a boot (ready_timeout), a drain, a stop, with room.
func oldAfter(svc *service) time.Duration {
	def := svc.current()
	if def == nil {
		return 10 * time.Minute
	}
	per := time.Duration(def.ReadyTimeout) + time.Duration(def.DrainTimeout) + time.Duration(def.StopTimeout) + 10*time.Second
	return time.Duration(len(svc.slots)+def.count+1)*per + time.Minute
}

func (s *sim) checkService(svc *service) {
	// counts: never negative; what the instance counts is what was sent
	for _, in := range svc.live {
		inflight, streams := in.inflight.Load(), in.streams.Load()
		if streams < 0 || inflight < streams {
			s.fail("pid %d: %d requests in flight, %d streams", in.getPID(), inflight, streams)
		}
		if n := int64(len(s.open[in])); n != inflight {
			s.fail("pid %d counts %d requests in flight; %d were sent and have not ended", in.getPID(), inflight, n)
		}
		if in.state == stateExited {
			s.fail("pid %d: exited, but still live", in.getPID())
		}
	}
	for _, in := range svc.live {
		if why := in.conditionsError(); why != "" {
			s.fail("%s: pid %d: %s", svc.name, in.getPID(), why)
		}
	}
	// the serving set: live instances, each once
	for i, in := range svc.slots {
		if in == nil {
			continue
		}
		if !slices.Contains(svc.live, in) {
			s.fail("slot %d holds pid %d, which is not live", i, in.getPID())
		}
		if j := slices.Index(svc.slots, in); j != i {
			s.fail("pid %d serves in slots %d and %d", in.getPID(), j, i)
		}
	}
	if j := svc.job; j != nil {
		for _, st := range j.steps {
			if st.cand != nil && !s.boundChecked[st.cand] {
				s.boundChecked[st.cand] = true
				s.checkBound(svc, st.cand)
			}
		}
	}
	s.checkWatches(svc)
	s.checkWakeUps(svc)
	s.checkDefinition(svc)
	s.checkCanary(svc)
}

// checkCanary: a window that is open has its new instances ready, taking
// their share, outside the serving set, and ends within its bound (three
// windows, and a check); a release that fails every request is never
// promoted by the rule once it failed a few, a release without a failure
// never rejected by it, one that fails far more often than the old one
// never promoted by it; a rejected release's instances never serve.
func (s *sim) checkCanary(svc *service) {
	if j := svc.job; j != nil && j.canary != nil {
		w := j.canary
		if !j.beside || j.done != 0 || j.adds || j.kind != reloadJob && j.kind != restartJob {
			s.fail("%s: a canary window in a %v job (beside %v, done %d, adds %v)", svc.name, j.kind, j.beside, j.done, j.adds)
		}
		if d := s.now.Sub(w.began); d > canaryBound(time.Duration(w.def.Window))+canaryCheckEvery+2*simJitter {
			s.fail("%s: the canary window is open for %s (window %s)", svc.name, d, w.def.Window)
		}
		for _, in := range w.cands {
			if in.state != stateReady || !in.canary || slices.Contains(svc.slots, in) {
				s.fail("%s: canary pid %d: %s, canary %v, in the serving set %v", svc.name, in.getPID(), in.state, in.canary, slices.Contains(svc.slots, in))
			}
		}
		if v := svc.view.Load(); v.canary == nil || v.canary.w != w {
			s.fail("%s: a canary window is open, and the view has none", svc.name)
		}
	}
	for _, in := range svc.slots {
		if in != nil && s.rejected[in] {
			s.fail("%s: pid %d serves, and its release was rejected", svc.name, in.getPID())
		}
	}
	last := svc.canaryLast
	if last == nil || s.verdicts[last] {
		return
	}
	s.verdicts[last] = true
	release := ""
	if p := s.pidProc(last.PIDs[0]); p != nil {
		release = p.in.def.Env["RELEASE"]
	}
	s.log("canary verdict %s by %s, release %s: %s", last.State, last.By, release, last.Reason)
	s.tally[last.State+" "+strings.TrimRight(release, "0123456789")+" by "+last.By]++
	var failed int64         // requests of the new release that ended failed
	var oldest time.Duration // the longest a request of it waits for its status now
	for _, pid := range last.PIDs {
		if p := s.pidProc(pid); p != nil {
			failed += p.in.outcomes[serverError].Load() + p.in.outcomes[noAnswer].Load()
			for _, r := range s.open[p.in] {
				if r.waits {
					oldest = max(oldest, s.now.Sub(r.sentAt))
				}
			}
		}
	}
	switch {
	case last.By == "rule" && strings.HasPrefix(last.State, "promoted") && last.New.Requests > 0 && last.New.Failed == last.New.Requests:
		s.fail("%s: the canary promoted release %s, which failed every request (%s)", svc.name, release, last.Reason)
	case last.By == "rule" && strings.HasPrefix(last.State, "promoted") && last.New.Requests >= minCanaryRequests && last.Old.Requests >= minCanaryRequests &&
		float64(last.New.Failed) >= 0.4*float64(last.New.Requests) && float64(last.Old.Failed) < 0.1*float64(last.Old.Requests):
		s.fail("%s: the canary promoted release %s, which failed far more than the old one (%s)", svc.name, release, last.Reason)
	case last.By == "rule" && strings.HasPrefix(last.State, "promoted") && strings.HasPrefix(release, "stall") &&
		oldest >= canaryOverdue+canaryCheckEvery+simJitter && last.Old.Failed*10 < last.Old.Requests:
		// (a release that answers nothing, against an old one that answers)
		s.fail("%s: the canary promoted release %s while a request waited %s for it (%s)", svc.name, release, oldest, last.Reason)
	case last.By == "rule" && last.State == "rejected" && failed == 0 && oldest < canaryOverdue:
		s.fail("%s: the canary rejected release %s without a failed request, or one that waited %s (%s)", svc.name, release, canaryOverdue, last.Reason)
	}
	if last.State == "rejected" || last.State == "called_off" {
		for _, pid := range last.PIDs {
			if p := s.pidProc(pid); p != nil {
				s.rejected[p.in] = true
			}
		}
	}
}

// pidProc is the process of pid, if the sim started it.
func (s *sim) pidProc(pid int) *simProc {
	for _, p := range s.procs {
		if p.pid == pid {
			return p
		}
	}
	return nil
}

// checkBound: no transition starts an instance while `instances` +
// `roll_batch` run
// (of the largest definition in play: in force, of a job, or the serving
// set's size), besides those a config still keeps (a reload in progress
// may put them back), those that only serve their streams (kept up to
// stream_drain_timeout, or ending, spread over a tenth of it, and then
// stopping), and those that failed their health check (out of service,
// killed once replaced: a replacement does not wait for them). With one
// instance, those that retire or stop do not count either: a reload or
// restart does not wait for the old instance's drain (bounded by its
// drain_timeout and stop_timeout) — a pool's roll does. Nor do those that
// a reload with fewer `instances` retires: nothing replaces them, and they
// leave within their drain_timeout. (A crash restart refills its slot at
// once, whatever drains: it is not a transition.)
func (s *sim) checkBound(svc *service, starting *instance) {
	def := svc.current()
	if def == nil && svc.job != nil {
		def = svc.job.def // (a reload adds the process: no config holds it yet)
	}
	if def == nil || svc.exiting || svc.stopAll != "" {
		return
	}
	count, batch := def.count, def.RollBatch
	if j := svc.job; j != nil {
		count, batch = max(count, j.def.count, len(svc.slots)), max(batch, j.def.RollBatch)
	}
	n := 0
	for _, in := range svc.live {
		switch {
		case in == starting:
		case in.state == stateRetiring && in.cond.keptFor != nil && svc.holds(in.cond.keptFor):
		case strings.HasPrefix(in.retireReason, "instances went down") && (in.state == stateRetiring || in.state == stateStopping):
			// fewer instances: not replaced, leaving (a resize up does not
			// wait for them either)
		case in.state == stateRetiring && in.streams.Load() > 0 && in.inflight.Load() <= in.streams.Load():
			s.keepers[in] = true // (an idle one is no keeper: it runs until it exits)
		case in.state == stateStopping && s.keepers[in]:
		case in.cond.unhealthy != "":
		case count <= 1 && (in.state == stateRetiring || in.state == stateStopping):
		default:
			n++
		}
	}
	if n+1 > count+max(batch, 1) {
		s.fail("%s: an instance starts (slot %d) while %d run (instances %d, roll_batch %d)", svc.name, starting.slot, n, count, batch)
	}
}

// checkWatches: every instance that serves is watched as its settings
// say (health, max_memory, max_lifetime), whatever jobs do.
func (s *sim) checkWatches(svc *service) {
	for _, in := range svc.slots {
		if in == nil || in.state != stateReady || in.cond.unhealthy != "" {
			continue
		}
		def := in.settings.Load()
		if def.Health == nil && def.MaxMemory == 0 && def.MaxLifetime == 0 {
			continue
		}
		if wt := s.watches[in]; (wt == nil || !wt.active) && s.reporting[in] == 0 {
			s.fail("%s: pid %d serves, but nothing watches it (health %v, max_memory %d, max_lifetime %s)",
				svc.name, in.getPID(), def.Health != nil, def.MaxMemory, def.MaxLifetime)
		}
	}
}

// checkWakeUps: what the loop waits for is on its way: a roll that waits
// for old instances to be gone, once none is left, and a retiring
// instance that could stop, have an event queued that makes the loop look
// again (a lost wake-up would wait for an unrelated event, or forever);
// and no transition lasts longer than its timeouts allow.
func (s *sim) checkWakeUps(svc *service) {
	if s.svcs[svc.name] != svc || s.pending[svc] > 0 {
		return
	}
	if j := svc.job; j != nil && j.waiting && !svc.oldsLeft() {
		s.fail("%s: the roll waits for old instances that are gone, and no event will tell it (a lost wake-up)", svc.name)
	}
	for _, in := range svc.live {
		if in.state == stateRetiring && in.inflight.Load() == 0 && (in.cond.keptFor == nil || !svc.holds(in.cond.keptFor)) {
			s.fail("%s: pid %d retires with nothing in flight, and no event will stop it (a lost wake-up)", svc.name, in.getPID())
		}
	}
}

// checkDefinition: with no transition running, what serves runs the
// definition in force (or nothing, while a restart is due or the process
// ended), and a job never outlives its timeouts.
func (s *sim) checkDefinition(svc *service) {
	if svc.job != nil {
		if s.jobSince == nil {
			s.jobSince = make(map[*job]time.Time)
		}
		since, ok := s.jobSince[svc.job]
		if !ok {
			s.jobSince[svc.job] = s.now
		} else if s.now.Sub(since) > oldAfter(svc) {
			s.fail("%s: a %s job has run for %s", svc.name, jobKindName(svc.job.kind), s.now.Sub(since))
		}
		return
	}
	if len(svc.holders) == 0 && len(svc.queue) == 0 && svc.stopAll == "" && !svc.empty() {
		s.fail("%s: pids %v serve, but no config holds the process (a reload that added it failed?)", svc.name, svc.servingPIDs())
	}
	if len(svc.queue) > 0 || len(svc.holders) == 0 || svc.stopAll != "" || svc.yieldedTo != nil || svc.exiting || s.caddy.exiting {
		return
	}
	if l := s.caddy.loading; l != nil && svc.holds(l.app) {
		return // a reload runs: if it fails, the config in force goes and the old one comes back
	}
	if svc.putBackWaits() {
		return // a put-back failed: it is tried again
	}
	key := svc.currentKey()
	for i, in := range svc.slots {
		if in != nil && in.key != key && in.state != stateStopping {
			s.fail("%s: slot %d runs pid %d of another definition than the one in force, and nothing will replace it", svc.name, i, in.getPID())
		}
	}
}

func jobKindName(k jobKind) string {
	return []string{"reload", "restart", "revive", "recycle"}[k]
}

// checkEndRules: Caddy is asked to exit for a process that ended for
// good only when nothing of it serves, none will start by itself, and the
// config that holds it took over.
func (s *sim) checkEndRules(svc *service, def *Process) {
	switch {
	case !svc.empty():
		s.fail("%s ended for good while an instance serves", svc.name)
	case len(svc.backoff.due) > 0:
		s.fail("%s ended for good while a restart is due", svc.name)
	case svc.job != nil && slices.ContainsFunc(svc.job.steps, func(st *step) bool { return st.cand != nil && st.cand.live() }):
		s.fail("%s ended for good while a new instance boots to replace it", svc.name)
	case s.caddy.acquiring[svc.name] && def.Ready != nil && def != svc.current():
		// (without a probe a process counts as ready once started; at
		// Caddy's first start nothing else serves, and requests wait; and
		// the release in force may end by its own policy while a reload's
		// new instance boots, once that one fails too: R4)
		s.fail("%s ended for good while a reload waits for it: the broken release ends the site", svc.name)
	}
}

// finalChecks: once Caddy's process exited, nothing is left.
func (s *sim) finalChecks() {
	switch {
	case !s.caddy.done:
		s.fail("Caddy did not exit: services %v still run", s.names())
	case len(s.svcs) > 0:
		s.fail("services left: %v", s.names())
	case s.reqs != 0:
		var where []string
		for in, rs := range s.open {
			p := s.procs[in]
			where = append(where, fmt.Sprintf("pid %d: %d (exited %v, hung %v, stream %v)", in.getPID(), len(rs), p != nil && p.exited, p != nil && p.hung, rs[0].stream))
		}
		slices.Sort(where)
		s.fail("%d requests never ended: %v", s.reqs, where)
	}
	for in, p := range s.procs {
		if !p.reaped && !p.exited {
			s.fail("pid %d (%s) left running", p.pid, in.def.Name)
			break
		}
	}
}

// ---- the test ----

// simStepsPerSeed is about how many events a seed's run takes before its
// SIGTERM (then the exit's own).
const simStepsPerSeed = 25000

// TestSimulation runs seeds until SUPERVISE_SIM_STEPS events ran in all
// (default 3 000 000; 2 000 000 with the race detector: about half a minute
// on two cores), or for SUPERVISE_SIM_DURATION (a Go duration: then the
// steps do not count), from SUPERVISE_SIM_SEED (default: a random one,
// printed) on. A violation prints its seed, which replays it exactly, and
// the events that led to it. It ends with the line `simulation: N steps,
// S seeds, V violations` (go test shows it with -v, or when it fails).
func TestSimulation(t *testing.T) {
	total := 3_000_000
	if raceEnabled {
		total = 2_000_000
	}
	var until time.Time
	if v := os.Getenv("SUPERVISE_SIM_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("SUPERVISE_SIM_DURATION %q: a duration such as 20m", v)
		}
		until, total = time.Now().Add(d), math.MaxInt
	}
	if v := os.Getenv("SUPERVISE_SIM_STEPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SUPERVISE_SIM_STEPS %q: a whole number above 0", v)
		}
		total = n
	}
	first := rand.Uint64() % 1_000_000_000
	if v := os.Getenv("SUPERVISE_SIM_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SUPERVISE_SIM_SEED %q: %v", v, err)
		}
		first = n
	}
	t.Logf("first seed %d (SUPERVISE_SIM_SEED=%d repeats this run)", first, first)
	steps, seeds, violations := 0, 0, 0
	verdicts := make(map[string]int)
	for seed := first; steps < total && (until.IsZero() || time.Now().Before(until)); seed++ {
		s := runSim(seed, simStepsPerSeed)
		steps += s.steps
		seeds++
		for k, n := range s.tally {
			verdicts[k] += n
		}
		if s.violation != "" {
			violations++
			t.Errorf("seed %d: %s\nreplay: SUPERVISE_SIM_SEED=%d SUPERVISE_SIM_STEPS=1 go test -run '^TestSimulation$' -v .\nthe last events:\n%s",
				seed, s.violation, seed, strings.Join(s.trace, "\n"))
			if violations >= 3 {
				break
			}
		}
	}
	fmt.Printf("simulation: %d steps, %d seeds, %d violations\n", steps, seeds, violations)
	kinds := slices.Sorted(maps.Keys(verdicts))
	for i, k := range kinds {
		kinds[i] = fmt.Sprintf("%s %d", k, verdicts[k])
	}
	t.Logf("canary verdicts, by release kind: %s", strings.Join(kinds, ", "))
}

// runSim runs one seed's scenario, of about steps events before SIGTERM,
// through Caddy's exit.
func runSim(seed uint64, steps int) *sim {
	s := newSim(seed)
	s.scenario(steps)
	s.run(steps*4 + 100000)
	if s.violation == "" {
		s.finalChecks()
	}
	return s
}
