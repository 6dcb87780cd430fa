package supervise

import (
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Replacement: the one path by which an instance of the serving set is
// replaced by a new one, for a reload that changes the process's
// definition, a restart through the admin API, and a config that does not
// take over (the older definition comes back). A service runs one at a
// time; a reload that comes meanwhile waits for it, an admin restart gets
// 409.
//
// The policy:
//
//   - Beside the old one, when the new instance has a port of its own and a
//     way to tell it is ready (`port auto` and `ready`): it starts on a new
//     port while the old one serves. Once it is ready it takes the old one's
//     place in the serving set, and the old one retires: it gets its stop
//     signal at once after an admin restart; after a reload, once the old
//     config is gone and its servers finished what they had sent to it (or
//     after drain_timeout). If the new instance exits or is not ready within
//     ready_timeout, it is stopped, its restart and on_end do not apply, the
//     transition fails with its exit status and last output lines, and the
//     old one serves on.
//   - Stop the old one first, otherwise (a fixed port, a socket Caddy holds,
//     no port, no probe): the new instance needs what the old one holds. The
//     old one stops (requests wait in the dynamic upstream, or in a held
//     socket's queue), then the new one starts in its place; it serves once
//     ready. If it fails, the old definition is started again (revive) and
//     the transition fails.
//
// Caddy's exit during a transition: a new instance booting beside one that
// serves is stopped at once, and the old one serves the drain; one booting
// in place of one already stopped boots on and serves the drain (it is all
// there is). Either way the reload or restart fails with "Caddy is
// exiting".

// A pool's instances are replaced in a roll: one slot of the serving set
// at a time (roll_batch at a time), each beside its predecessor. The next
// batch starts once the old instances of the previous one are gone, so
// that a roll never runs more than instances + roll_batch processes; an
// old instance the roll goes on from ends its streams at once (see
// retire.go: the old instances of the last batch keep theirs). A new
// instance that fails stops the roll: the others of its batch stop, the
// slots it has not reached keep their instances, and the job fails with
// how far it got. A reload that fails that way is not taken by Caddy, and
// the definition in force (the old one) comes back on the slots the roll
// replaced (putBack). One instance is a roll of one slot.

// job is one replacement: a roll over one or more slots.
type job struct {
	kind        jobKind
	why         string    // for logs
	def         *Process  // what the new instances run
	prevDef     *Process  // what ran before: revived if the new one fails in place
	beside      bool      // the policy
	todo        []int     // the slots the roll has not reached
	steps       []*step   // the batch that runs
	waiting     bool      // the next batch waits for old instances to be gone (see oldsLeft)
	target      *instance // a recycle: the instance it replaces (nothing, if it left its slot meanwhile)
	total, done int       // slots in the roll, slots replaced
	holder      *holder   // a reload: the config that holds the process once it serves
	held        bool      // the holder holds it: the first batch switched
	retireUntil *App      // beside, a reload: the last batch's old instances stay until this config is gone
	answer      func(error)
	aborted     error         // the process stops altogether (no config, Caddy's exit, a yield)
	adds        bool          // a reload adds the process: its failures are the reload's, never an end (see crashed)
	exitMode    bool          // Caddy exits: the new instance boots on to serve the drain
	canary      *canaryWindow // the first batch's canary window, while it is open (canary.go)
	canaryDone  bool          // the window was open and closed: no other for this job
}

// step is the replacement of one slot.
type step struct {
	slot      int
	old       *instance // the instance it replaces; nil if none runs
	cand      *instance // the new instance
	ready     bool      // the new instance is ready; it waits for the rest of its batch
	stopBegan time.Time
}

type jobKind int

const (
	reloadJob  jobKind = iota // a config with a new definition
	restartJob                // the admin API's restart
	reviveJob                 // a config that did not take over: the older definition again
	recycleJob                // an instance is recycled or failed its health check (watch.go)
)

// exitCheckEvery is how often a transition that someone waits for looks
// whether Caddy's process began to exit: Caddy learns of its exit before it
// can stop a config (a reload that waits for a new instance holds the
// config lock), and tells nobody.
const exitCheckEvery = 20 * time.Millisecond

// allSlots is 0, 1, …, n-1.
func allSlots(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// newReload is the replacement a config with a changed definition needs:
// a roll over every slot of the new definition.
func newReload(s *service, h holder, ev acquireEv) *job {
	j := &job{kind: reloadJob, why: "its definition changed", def: h.def, holder: &h, todo: allSlots(h.def.count),
		answer: func(err error) { ev.reply <- err }}
	old := s.slots[0]
	j.beside = h.def.blueGreen() && (h.def.count > 1 || old != nil && old.state == stateReady)
	if len(s.holders) > 0 {
		j.prevDef = s.current()
		j.retireUntil = s.holders[len(s.holders)-1].app
	}
	if ev.candidate && s.empty() {
		j.why = "it takes the port of a process the config drops"
	}
	return j
}

// adminRestart is the admin API's restart: the same definition, through
// the same replacement, a roll over every instance. It answers once the
// new instances serve.
func (s *service) adminRestart(reply chan restartAnswer) {
	switch {
	case s.stopAll != "":
		reply <- restartAnswer{err: s.stopErr()}
		return
	case s.exiting || s.w.exiting():
		reply <- restartAnswer{err: fmt.Errorf("process %q: %w", s.name, errExiting)}
		return
	case s.job != nil:
		reply <- restartAnswer{err: fmt.Errorf("process %q: a restart or a reload of it runs: %w", s.name, errBusy)}
		return
	case !slices.ContainsFunc(s.slots, func(in *instance) bool {
		return in != nil && (in.state == stateStarting || in.state == stateReady)
	}):
		reply <- restartAnswer{err: fmt.Errorf("process %q: %w", s.name, errNotRunning)}
		return
	}
	def := s.current()
	in := s.slots[0]
	s.log().Info("restarting process, as asked through the admin API", zap.Ints("pids", s.servingPIDs()))
	s.replace(&job{kind: restartJob, why: "a restart through the admin API", def: def, prevDef: def, todo: allSlots(len(s.slots)),
		beside: def.blueGreen() && (len(s.slots) > 1 || in != nil && in.state == stateReady),
		answer: func(err error) {
			if err != nil {
				reply <- restartAnswer{err: err}
				return
			}
			reply <- restartAnswer{view: s.view.Load()} // published by reply
		}})
}

// putBack makes the definition in force serve again after the newest
// config let go of the process without taking over (it failed to start, or
// was stopped first): as many slots as it asks for; on each, the old
// instance if it still retires; else the older definition starts again, in
// a roll. A roll that fails is tried again after a back-off (1 s, doubling
// up to 30 s: see putBackFailed), until the definition in force serves
// every slot: meanwhile the slots keep what serves (each instance with its
// own definition's health check and limits), and one that fails its
// health check calls the next try at once (recycleNext).
func (s *service) putBack() {
	s.putBacks.cancel() // (this is the try)
	def := s.current()
	if def == nil {
		return // no config holds the process: nothing to put back
	}
	s.resize(def, nil)
	key := s.currentKey()
	var revive []int
	for slot, in := range s.slots {
		if in != nil && in.key == key {
			continue
		}
		if r := s.retiree(slot, key); r != nil {
			s.serveAgain(r)
			s.slots[slot] = r
			s.keepPort(r)
			s.log().Info("the new config did not take over: the old instance serves on", zap.Int("pid", r.getPID()))
			if in != nil {
				s.retire(in, nil, "the new config did not take over")
			}
			continue
		}
		if in == nil && (s.backoff.due[slot] != nil || s.ended) {
			continue // a restart to come starts the definition in force
		}
		revive = append(revive, slot)
	}
	if !s.empty() {
		s.endLater = nil // (an instance of the release that did not take over ended for good meanwhile: see crashed)
	}
	if len(revive) == 0 {
		s.putBacks.fails = 0 // the definition in force serves
		return
	}
	if !s.mayStart(transition) {
		return // (what serves serves the drain)
	}
	s.replace(&job{kind: reviveJob, why: "the new config did not take over", def: def, todo: revive,
		beside: def.blueGreen() && def.count > 1})
}

// putBackFailed: a put-back's roll failed (the definition in force cannot
// boot now): it is tried again after a back-off.
func (s *service) putBackFailed() {
	wait := s.putBacks.next()
	s.log().Warn("putting the definition in force back failed; trying again later", zap.Duration("after", wait), zap.Int("failures", s.putBacks.fails))
	s.putBacks.due = s.w.after(s, wait, putBackDue{s.putBacks.gen})
}

// putBackWaits reports whether a failed put-back waits for its next try.
func (s *service) putBackWaits() bool { return s.putBacks.due != nil }

// replace starts a job.
func (s *service) replace(j *job) {
	s.job = j
	j.total = len(j.todo)
	if j.answer != nil && s.exitTick == nil {
		s.exitTick = s.w.ticker(s, exitCheckEvery)
	}
	if j.def.count > len(s.slots) {
		s.slots = append(s.slots, make([]*instance, j.def.count-len(s.slots))...) // the roll fills them
	}
	s.nextBatch()
}

// nextBatch starts the roll's next batch, once the old instances of the
// previous one are gone; with no slot left, the roll is over.
func (s *service) nextBatch() {
	j := s.job
	if len(j.todo) == 0 {
		s.rollOver() // (the last batch's old instances retire as they may: nothing new starts)
		return
	}
	n := min(max(j.def.RollBatch, 1), len(j.todo))
	// instances that failed their health check are replaced first (the
	// pool is short of them); a batch waits for the old instances of the
	// previous one, but those are replaced at once, alone (they count no
	// more), unless more than roll_batch old instances are left (a failed
	// reload's put-back retires some beside a roll's last batch): the bound
	// holds either way
	sick := slices.DeleteFunc(slices.Clone(j.todo), func(slot int) bool {
		in := s.servingAt(slot)
		return in == nil || in.cond.unhealthy == ""
	})
	j.todo = append(slices.Clone(sick), slices.DeleteFunc(j.todo, func(slot int) bool { return slices.Contains(sick, slot) })...)
	if s.oldsLeft() {
		if j.waiting = len(sick) == 0 || s.olds(false) > max(j.def.RollBatch, 1); j.waiting {
			return // the loop calls again after each event
		}
		n = min(n, len(sick))
	}
	j.waiting = false
	j.steps = nil
	for _, slot := range j.todo[:n] {
		if j.target != nil && s.slots[slot] != j.target {
			continue // the instance to recycle left its slot meanwhile
		}
		j.steps = append(j.steps, &step{slot: slot, old: s.slots[slot]})
	}
	j.todo = j.todo[n:]
	if len(j.steps) == 0 {
		s.rollOver()
		return
	}
	if j.total > 1 {
		s.log().Info("rolling restart: replacing instances", zap.String("why", j.why), zap.Ints("instances", j.slotsOf()),
			zap.Int("done", j.done), zap.Int("of", j.total))
	}
	for _, st := range j.steps {
		if j.beside || st.old == nil || !st.old.live() {
			s.startCandidate(st)
			if s.job != j {
				return // it failed, and the job with it
			}
			continue
		}
		s.cancelRestartOf(st.slot)
		s.slots[st.slot] = nil // on purpose: its exit ends nothing
		st.stopBegan = s.w.now()
		s.retire(st.old, nil, j.why) // then startCandidate, once it exited
	}
}

// oldsLeft reports whether a pool's next batch must wait: an old instance
// is not gone yet (it drains, or stops), beyond those a config keeps (a
// reload may still put them back) and those that only serve their
// streams (bounded by stream_drain_timeout). So a roll, or a recycle,
// never runs more than instances + roll_batch instances besides those.
// One instance (instances 1) waits for nothing, as it always did.
func (s *service) oldsLeft() bool { return s.olds(true) > 0 }

// olds counts the old instances a batch waits for (see oldsLeft); with
// sick false, not those that failed their health check (killed once
// replaced, they count no more toward the bound).
func (s *service) olds(sick bool) int {
	if len(s.slots) <= 1 && s.job.def.count <= 1 {
		return 0
	}
	n := 0
	for _, in := range s.live {
		switch {
		case slices.Contains(s.slots, in) || s.jobStep(in) != nil:
		case s.keptForConfig(in):
		case in.state == stateRetiring && in.cond.keepStreams && in.streams.Load() > 0 && in.inflight.Load() <= in.streams.Load():
			// (one with nothing in flight is no stream keeper: it stops now,
			// and its exit wakes the batch)
		case !sick && in.cond.unhealthy != "":
		case in.state == stateRetiring || in.state == stateStopping:
			n++
		}
	}
	return n
}

// slotsOf is the slots of the batch that runs.
func (j *job) slotsOf() []int {
	var slots []int
	for _, st := range j.steps {
		slots = append(slots, st.slot)
	}
	return slots
}

// stepOf is the step whose old or new instance in is, if any.
func (j *job) stepOf(in *instance) *step {
	for _, st := range j.steps {
		if st.cand == in || st.old == in {
			return st
		}
	}
	return nil
}

// owns reports whether the job decides what the exit of in means: a new
// instance, or an old one it stopped in place.
func (j *job) owns(in *instance) bool {
	st := j.stepOf(in)
	return st != nil && (st.cand == in || !j.beside && st.old == in)
}

// startCandidate starts the new instance of a step: on a new port beside
// the old one, or in the old one's place. A revive's instance in place
// serves at once, as any instance that starts in place (its failure is a
// crash).
func (s *service) startCandidate(st *step) {
	j := s.job
	port, err := s.portFor(j.def, st.slot)
	if j.beside {
		port, err = s.newPort(j.def)
	}
	if err != nil {
		j.fail(s, st, fmt.Errorf("process %q: port auto: %v", s.name, err))
		return
	}
	if j.kind == reviveJob && !j.beside { // (one instance: the only step)
		s.cancelRestartOf(st.slot)
		if s.startOrCrash(j.def, st.slot, "starting the previous definition again") {
			s.log().Warn("the new definition did not take over: the previous one was started again", zap.Int("pid", s.slots[st.slot].getPID()))
		}
		s.endJob()
		return
	}
	oldPID := 0
	if st.old != nil {
		oldPID = st.old.getPID()
	}
	s.log().Info("starting a new instance", zap.String("why", j.why), zap.Int("old_pid", oldPID), zap.Int("port", port), zap.Int("instance", st.slot))
	in, err := s.spawn(j.def, port, st.slot)
	if err != nil {
		j.fail(s, st, fmt.Errorf("process %q: the new instance: %w", s.name, err))
		return
	}
	st.cand = in
	if in.state == stateReady {
		j.candidateReady(s, st) // no probe: ready once started
	}
}

// candidateReady: a new instance is ready; once all of its batch are, they
// take their places in the serving set.
func (j *job) candidateReady(s *service, st *step) {
	st.ready = true
	s.stepDone()
}

// stepDone switches the batch once every step of it is ready: the new
// instances serve, the old ones retire.
func (s *service) stepDone() {
	j := s.job
	if slices.ContainsFunc(j.steps, func(st *step) bool { return !st.ready }) {
		return
	}
	if s.canaryDue() {
		s.openCanary() // the switch waits for its verdict (canary.go)
		return
	}
	last := len(j.todo) == 0
	for _, st := range j.steps {
		in := st.cand
		if in == nil {
			continue // a revive in place: it serves already
		}
		old := s.slots[st.slot] // beside: the old one, or what a crash restart started meanwhile
		s.slots[st.slot] = in
		s.keepPort(in)
		s.cancelRestartOf(st.slot) // the old one's crash restart, if one is due: this one serves now
		in.watch()                 // from now on what its watch finds counts (watch.go)
		if in.countDue.Load() {
			// it reached max_lifetime_requests as a canary, before it served
			// (the recycle it asked for then was dropped: see recycle)
			s.w.postLater(s, instanceRecycle{in: in, reason: "max_lifetime_requests", gen: -1})
		}
		st.cand = nil
		oldPID := 0
		if st.old != nil {
			oldPID = st.old.getPID()
		}
		s.log().Info("the new instance is ready and serves", zap.Int("pid", in.getPID()), zap.Int("old_pid", oldPID), zap.Int("instance", st.slot))
		if old != nil {
			until := j.retireUntil
			if !last {
				until = nil // the roll goes on: it must be gone first (a failed reload starts the old release again)
			}
			s.retire(old, until, "replaced by a new instance")
		}
	}
	j.done += len(j.steps)
	j.steps = nil
	if j.exitMode {
		s.endJob()
		return
	}
	if !j.adds || last {
		// (a reload that adds the process takes it over only once all of
		// it serves: until then its failure is the reload's, and a process
		// that had ended for good stays ended if it fails)
		s.ended, s.endLater = false, nil // an old one may have ended for good meanwhile: the new ones serve
		if j.holder != nil && !j.held {
			j.held = true
			s.hold(*j.holder)
			s.putBacks.cancel() // the config that took over is in force
			s.putBacks.fails, s.reconcile = 0, false
		}
	}
	s.backoff.delay = 0 // new instances that got ready: a crash starts the back-off over
	s.nextBatch()
}

// rollOver: every slot of the roll was replaced.
func (s *service) rollOver() {
	j := s.job
	if j.kind == restartJob {
		s.history.restarts++
	}
	if j.def.count < len(s.slots) {
		s.resize(j.def, j.retireUntil) // a reload with fewer instances
	}
	if j.total > 1 {
		s.log().Info("rolling restart done", zap.String("why", j.why), zap.Int("instances", j.done))
	}
	if j.kind == reviveJob {
		s.putBacks.fails = 0
	}
	j.reply(s, nil)
	s.endJob()
}

// holds reports whether config a holds the process.
func (s *service) holds(a *App) bool {
	for _, h := range s.holders {
		if h.app == a {
			return true
		}
	}
	return false
}

// keptForConfig reports whether in retires but a config still keeps it: a
// reload in progress may put it back.
func (s *service) keptForConfig(in *instance) bool {
	return in.state == stateRetiring && in.cond.keptFor != nil && s.holds(in.cond.keptFor)
}

// instanceExited handles the exit of a new instance, or of an old one the
// job stopped in place.
func (j *job) instanceExited(s *service, in *instance, fields []zap.Field) {
	st := j.stepOf(in)
	if in == st.old {
		st.old = nil
		switch {
		case j.kind == restartJob:
			s.log().Info("process exited for the restart asked through the admin API", fields...)
		default:
			s.log().Info("process exited", fields...)
			if j.kind == reloadJob {
				s.log().Info("previous process stopped; starting the new definition",
					zap.Int("old_pid", in.getPID()), zap.Duration("stop_took", s.w.now().Sub(st.stopBegan)))
			}
		}
		if j.aborted != nil {
			j.reply(s, j.aborted)
			s.endJob()
			return
		}
		s.startCandidate(st)
		return
	}
	st.cand = nil
	if j.canary != nil {
		s.closeCanary(reject, "engine", fmt.Sprintf("a new instance (pid %d) exited during the window", in.getPID()))
	}
	if j.aborted != nil || j.exitMode {
		s.log().Info("process exited", fields...)
		j.fail(s, st, j.aborted)
		return
	}
	if in.servedCanary {
		s.log().Error("the new instance exited during its canary window", fields...)
		j.fail(s, st, s.candidateError(in))
		return
	}
	s.log().Error("the new instance exited before it was ready", fields...)
	j.fail(s, st, s.candidateError(in))
}

// fail ends a job whose new instance in step st failed (it has exited, or
// could not start): the other new instances of its batch stop; beside, the
// old instances serve on; in place, the definition that ran before starts
// again.
func (j *job) fail(s *service, st *step, err error) {
	why := "another new instance of its batch failed"
	if j.canaryDone && j.done == 0 {
		why = "its release did not take over"
	}
	for _, o := range j.steps {
		if o.cand != nil {
			s.dropCandidate(o.cand, why)
			o.cand = nil
		}
	}
	j.steps = nil
	if j.target != nil && j.aborted == nil && !j.exitMode && j.beside && s.slots[st.slot] == j.target {
		s.recycleFailed(j.target)
	}
	if j.kind == reviveJob && j.aborted == nil && !j.exitMode {
		s.putBackFailed()
	}
	if j.holder != nil && j.held {
		// a reload that took over at an earlier batch failed: Caddy lets
		// its config go, and that release puts the old definition back;
		// a put-back called meanwhile (an unhealthy instance of it) would
		// run against the failing release
		s.reconcile = false
	}
	if err != nil && j.total > 1 {
		err = fmt.Errorf("%w; the roll stopped at instance %d: %d of %d replaced, those it had not reached untouched", err, st.slot, j.done, j.total)
	}
	switch {
	case j.adds:
		// nothing ran before it: what its earlier batches started goes
		// with it (no config will hold it; a process that had ended for
		// good stays ended)
		s.dropAdded("the reload that adds the process failed")
		j.reply(s, err)
	case j.aborted != nil || j.exitMode:
		j.reply(s, err)
	case j.beside && st.old != nil && s.slots[st.slot] == nil:
		j.reply(s, fmt.Errorf("%v; the old instance exited meanwhile, and its restart policy applies", err))
	case j.beside:
		j.reply(s, fmt.Errorf("%v; the old instance still serves", err))
	case j.prevDef == nil || s.exiting:
		j.reply(s, err)
	default:
		if rerr := s.startServing(j.prevDef, st.slot); rerr != nil {
			j.reply(s, fmt.Errorf("%v; starting the previous definition again failed too: %v", err, rerr))
			s.crashed(&instance{slot: st.slot, result: exitResult{code: 127, how: "not started"}})
			break
		}
		s.log().Warn("the new definition did not take over: the previous one was started again", zap.Int("pid", s.slots[st.slot].getPID()))
		j.reply(s, fmt.Errorf("%v; the previous definition was started again", err))
	}
	s.endJob()
}

// dropAdded: a reload that adds the process failed or was called off:
// what its batches started stops, and no restart is due (no config holds
// the process).
func (s *service) dropAdded(reason string) {
	s.cancelRestart()
	for slot, in := range s.slots {
		if in != nil {
			s.slots[slot] = nil
			s.retire(in, nil, reason)
		}
	}
}

// reply answers whoever waits for the job, once, after the service's view
// shows what the job did: a config that goes on reads it.
func (j *job) reply(s *service, err error) {
	if j.answer != nil {
		s.publish()
		j.answer(err)
		j.answer = nil
	}
}

// abort: the process stops altogether (no config holds it, Caddy's exit,
// a yield) while the job runs: its new instances stop; the job ends with
// err once its instances are gone.
func (j *job) abort(s *service, err error) {
	j.aborted = err
	if j.adds {
		s.dropAdded("the reload that adds the process was called off")
	}
	waits := false
	for _, st := range j.steps {
		switch {
		case st.cand != nil:
			s.dropCandidate(st.cand, "the transition was called off")
			waits = true
		case !j.beside && st.old != nil && st.old.live():
			waits = true // the old one stops already; its exit ends the job
		}
	}
	if !waits {
		j.reply(s, err)
		s.endJob()
	}
}

// callerExits: Caddy's process began to exit while the job runs. Beside,
// the new instances serve nothing yet: they stop now and the old ones
// serve the drain. In place, nothing else serves: the new one boots on and
// serves the drain. Either way the reload or restart fails at once, so
// that Caddy can go on with its exit.
func (j *job) callerExits(s *service) {
	// (a job between two batches has nothing booting: it stops here; so
	// does a reload that adds the process: no config will hold it)
	calledOff := len(j.steps) == 0 || j.adds || j.beside && !slices.ContainsFunc(j.steps, func(st *step) bool { return s.slots[st.slot] == nil })
	if j.canary != nil && !calledOff {
		// an old instance is gone (its crash restart will not come now):
		// the new release, which serves already, serves the drain
		j.exitMode = true
		s.closeCanary(promote, "engine", "Caddy is exiting, and an old instance no longer serves: the new release serves the drain")
		if j.answer != nil {
			j.reply(s, fmt.Errorf("process %q: %w; the new release of the canary window serves the drain", s.name, errExiting))
		}
		s.stepDone()
		return
	}
	if j.answer == nil { // a recycle or a revive: nobody waits
		if calledOff {
			j.abort(s, fmt.Errorf("process %q: %w", s.name, errExiting))
		} else {
			j.exitMode = true
		}
		return
	}
	if calledOff {
		err := fmt.Errorf("process %q: the new instance: %w; the old instance gets the exit sequence", s.name, errExiting)
		if j.adds {
			err = fmt.Errorf("process %q: %w; the reload that adds it is called off", s.name, errExiting)
		}
		j.reply(s, err) // at once: the reload holds Caddy's config lock, which its exit needs
		j.abort(s, err)
		return
	}
	j.exitMode = true
	j.reply(s, fmt.Errorf("process %q: %w; the new instance boots on and serves the drain", s.name, errExiting))
}

// noticeExit runs while someone waits for a job or for the process (a
// reload queued behind a restart): Caddy's exit calls them off (see
// callerExits), so that Caddy, which needs the config lock a waiting
// reload holds, can go on with its exit.
func (s *service) noticeExit() bool {
	if !s.w.exiting() {
		return false
	}
	for _, q := range s.queue {
		q.reply <- fmt.Errorf("process %q: %w", s.name, errExiting)
	}
	s.queue = nil
	if s.job != nil {
		s.job.callerExits(s)
	}
	s.stopExitTick()
	return true
}

func (s *service) stopExitTick() {
	if s.exitTick != nil {
		s.exitTick.Stop()
		s.exitTick = nil
	}
}

// endJob ends the job; then a config that waited for it goes on, or the
// definition in force changed meanwhile.
func (s *service) endJob() {
	j := s.job
	s.job = nil
	if def := s.current(); !j.held && def != nil {
		for len(s.slots) > max(def.count, 1) && s.slots[len(s.slots)-1] == nil {
			s.slots = s.slots[:len(s.slots)-1] // the slots a roll added and did not fill
			s.forgetSlot(len(s.slots))
		}
	}
	if len(s.queue) == 0 {
		s.stopExitTick()
	}
	if e := s.endLater; e != nil && !j.adds && !slices.ContainsFunc(s.live, s.keptForConfig) {
		// the instance that booted to replace the one that ended for good
		// did not get to serve: the process ends now (unless a reload in
		// progress keeps the old release: see crashed)
		if s.empty() && len(s.backoff.due) == 0 && s.mayStart(restoring) {
			s.endForGood(s.current(), e.why, e.code)
		}
		s.endLater = nil
	}
	if s.reconcile {
		s.reconcile = false
		s.putBack()
	}
	for len(s.queue) > 0 && s.job == nil {
		next := s.queue[0]
		s.queue = s.queue[1:]
		s.acquire(next)
	}
	if s.job == nil {
		s.recycleNext() // a recycle or a liveness failure that waited for the job
	}
	if s.job == nil && len(s.queue) == 0 {
		s.stopExitTick()
	}
}

// candidateError explains why a new instance failed: it exited before it
// was ready, or was not ready within ready_timeout; its exit status and
// last output lines.
func (s *service) candidateError(in *instance) error {
	what, probe := "exited before it was ready", ""
	if in.servedCanary {
		what = "exited during its canary window"
	}
	if in.notReady != "" {
		what = fmt.Sprintf("was not ready within ready_timeout %s", in.def.ReadyTimeout)
		probe = "; its probe: " + in.notReady
	}
	return fmt.Errorf("process %q: the new instance %s (exit status %d; last output: %s)%s", s.name, what, in.result.code, in.tail.String(), probe)
}

// blueGreen reports whether a definition is replaced beside the running
// instance: it needs a port of its own and a way to know it is ready.
func (p *Process) blueGreen() bool { return p.Port == "auto" && p.Ready != nil }
