package supervise

import (
	"fmt"
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

// job is one replacement.
type job struct {
	kind        jobKind
	why         string   // for logs
	def         *Process // what the new instance runs
	prevDef     *Process // what ran before: revived if the new one fails in place
	beside      bool     // the policy
	slot        int
	old         *instance // the instance it replaces; nil if none runs
	cand        *instance // the new instance
	holder      *holder   // a reload: the config that holds the process once it serves
	retireUntil *App      // beside, a reload: the old instance stays until this config is gone
	answer      func(error)
	stopBegan   time.Time
	aborted     error // the process stops altogether (no config, Caddy's exit, a yield)
	exitMode    bool  // Caddy exits: the new instance boots on to serve the drain
}

type jobKind int

const (
	reloadJob  jobKind = iota // a config with a new definition
	restartJob                // the admin API's restart
	reviveJob                 // a config that did not take over: the older definition again
)

// exitCheckEvery is how often a transition that someone waits for looks
// whether Caddy's process began to exit: Caddy learns of its exit before it
// can stop a config (a reload that waits for a new instance holds the
// config lock), and tells nobody.
const exitCheckEvery = 20 * time.Millisecond

// newReload is the replacement a config with a changed definition needs.
func newReload(s *service, h holder, ev acquireEv) *job {
	old := s.slots[0]
	j := &job{kind: reloadJob, why: "its definition changed", def: h.def, holder: &h, old: old,
		answer: func(err error) { ev.reply <- err }}
	j.beside = h.def.blueGreen() && old != nil && old.state == stateReady
	if len(s.holders) > 0 {
		j.prevDef = s.current()
		j.retireUntil = s.holders[len(s.holders)-1].app
	}
	if ev.candidate && old == nil {
		j.why = "it takes the port of a process the config drops"
	}
	return j
}

// adminRestart is the admin API's restart: the same definition, through
// the same replacement. It answers once the new instance serves.
func (s *service) adminRestart(reply chan restartAnswer) {
	in := s.slots[0]
	switch {
	case s.exiting:
		reply <- restartAnswer{err: fmt.Errorf("process %q: %w", s.name, errExiting)}
		return
	case s.job != nil:
		reply <- restartAnswer{err: fmt.Errorf("process %q: a restart or a reload of it runs: %w", s.name, errBusy)}
		return
	case in == nil || (in.state != stateStarting && in.state != stateReady):
		reply <- restartAnswer{err: fmt.Errorf("process %q: %w", s.name, errNotRunning)}
		return
	}
	def := s.current()
	s.log().Info("restarting process, as asked through the admin API", zap.Int("pid", in.getPID()))
	s.replace(&job{kind: restartJob, why: "a restart through the admin API", def: def, prevDef: def, old: in,
		beside: def.blueGreen() && in.state == stateReady,
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
// was stopped first): the old instance, if it still retires, serves again;
// else the older definition starts again in place.
func (s *service) putBack() {
	key := s.currentKey()
	in := s.slots[0]
	if in != nil && in.key == key {
		return
	}
	var r *instance
	for _, c := range s.live { // the one kept for the config in force, else the newest
		if c.state == stateRetiring && c.key == key && (r == nil || r.retireUntil != s.holders[len(s.holders)-1].app) {
			r = c
		}
	}
	if r != nil {
		s.serveAgain(r)
		s.slots[0], s.port = r, r.port
		s.log().Info("the new config did not take over: the old instance serves on", zap.Int("pid", r.getPID()))
		if in != nil {
			s.retire(in, nil, "the new config did not take over")
		}
		return
	}
	if s.exiting || s.stopAll != "" || s.yieldedTo != nil || (in == nil && (s.backoff.pending || s.ended)) {
		return // what serves serves the drain; a restart to come starts the definition in force
	}
	s.replace(&job{kind: reviveJob, why: "the new config did not take over", def: s.current(), old: in})
}

// replace starts a job: the new instance beside the old one, or the old
// one's stop first.
func (s *service) replace(j *job) {
	s.job = j
	s.cancelRestart()
	if j.answer != nil && s.exitTick == nil {
		s.exitTick = time.NewTicker(exitCheckEvery)
	}
	if j.beside || j.old == nil || !j.old.live() {
		s.startCandidate()
		return
	}
	s.slots[j.slot] = nil // on purpose: its exit ends nothing
	j.stopBegan = time.Now()
	s.retire(j.old, nil, j.why)
}

// startCandidate starts the new instance: on a new port beside the old
// one, or in the old one's place. A revive's instance serves at once, as
// any instance that starts in place (its failure is a crash).
func (s *service) startCandidate() {
	j := s.job
	port, err := s.portFor(j.def)
	if j.beside {
		port, err = j.def.fixedPort()
	}
	if err != nil {
		j.fail(s, fmt.Errorf("process %q: port auto: %v", s.name, err))
		return
	}
	if j.kind == reviveJob {
		if s.startOrCrash(j.def, "starting the previous definition again") {
			s.log().Warn("the new definition did not take over: the previous one was started again", zap.Int("pid", s.slots[0].getPID()))
		}
		s.endJob()
		return
	}
	oldPID := 0
	if j.old != nil {
		oldPID = j.old.getPID()
	}
	s.log().Info("starting a new instance", zap.String("why", j.why), zap.Int("old_pid", oldPID), zap.Int("port", port))
	in, err := s.spawn(j.def, port)
	if err != nil {
		j.fail(s, fmt.Errorf("process %q: the new instance: %w", s.name, err))
		return
	}
	in.slot = j.slot
	j.cand = in
	if in.state == stateReady {
		j.candidateReady(s) // no probe: ready once started
	}
}

// candidateReady: the new instance takes its place in the serving set.
func (j *job) candidateReady(s *service) {
	in := j.cand
	old := s.slots[j.slot] // beside: the old one, or what a crash restart started meanwhile
	s.slots[j.slot], s.port = in, in.port
	s.ended = false   // the old one may have ended for good meanwhile: this one serves
	s.cancelRestart() // the old one's crash restart, if it is due: this one serves now
	j.cand = nil
	if j.exitMode {
		s.endJob()
		return
	}
	oldPID := 0
	if j.old != nil {
		oldPID = j.old.getPID()
	}
	s.log().Info("the new instance is ready and serves", zap.Int("pid", in.getPID()), zap.Int("old_pid", oldPID))
	if old != nil {
		s.retire(old, j.retireUntil, "replaced by a new instance")
	}
	if j.holder != nil {
		s.hold(*j.holder)
	}
	if j.kind == restartJob {
		s.history.restarts++
	}
	s.backoff.delay = 0 // a new instance that got ready: a crash of it starts the back-off over
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

// instanceExited handles the exit of the job's old or new instance.
func (j *job) instanceExited(s *service, in *instance, fields []zap.Field) {
	if in == j.old {
		j.old = nil
		switch {
		case j.kind == restartJob:
			s.log().Info("process exited for the restart asked through the admin API", fields...)
		default:
			s.log().Info("process exited", fields...)
			if j.kind == reloadJob {
				s.log().Info("previous process stopped; starting the new definition",
					zap.Int("old_pid", in.getPID()), zap.Duration("stop_took", time.Since(j.stopBegan)))
			}
		}
		if j.aborted != nil {
			j.reply(s, j.aborted)
			s.endJob()
			return
		}
		s.startCandidate()
		return
	}
	j.cand = nil
	if j.aborted != nil || j.exitMode {
		s.log().Info("process exited", fields...)
		j.fail(s, j.aborted)
		return
	}
	s.log().Error("the new instance exited before it was ready", fields...)
	j.fail(s, s.candidateError(in))
}

// fail ends a job whose new instance failed (it has exited): beside, the
// old instance serves on; in place, the definition that ran before starts
// again.
func (j *job) fail(s *service, err error) {
	switch {
	case j.aborted != nil || j.exitMode:
		j.reply(s, err)
	case j.beside && s.slots[j.slot] == nil:
		j.reply(s, fmt.Errorf("%v; the old instance exited meanwhile, and its restart policy applies", err))
	case j.beside:
		j.reply(s, fmt.Errorf("%v; the old instance still serves", err))
	case j.prevDef == nil || s.exiting:
		j.reply(s, err)
	default:
		if rerr := s.startServing(j.prevDef); rerr != nil {
			j.reply(s, fmt.Errorf("%v; starting the previous definition again failed too: %v", err, rerr))
			s.crashed(&instance{result: exitResult{code: 127, how: "not started"}})
			break
		}
		s.log().Warn("the new definition did not take over: the previous one was started again", zap.Int("pid", s.slots[0].getPID()))
		j.reply(s, fmt.Errorf("%v; the previous definition was started again", err))
	}
	s.endJob()
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
// a yield) while the job runs: its new instance stops; the job ends with
// err once its instances are gone.
func (j *job) abort(s *service, err error) {
	j.aborted = err
	switch {
	case j.cand != nil:
		s.stopInstance(j.cand, "the transition was called off")
	case j.old != nil && j.old.live():
		// the old one stops already; its exit ends the job
	default:
		j.reply(s, err)
		s.endJob()
	}
}

// callerExits: Caddy's process began to exit while the job runs. Beside,
// the new instance serves nothing yet: it stops now and the old one serves
// the drain. In place, nothing else serves: the new one boots on and serves
// the drain. Either way the reload or restart fails at once, so that Caddy
// can go on with its exit.
func (j *job) callerExits(s *service) {
	if j.answer == nil {
		return
	}
	if j.beside && s.slots[j.slot] != nil {
		err := fmt.Errorf("process %q: the new instance: %w; the old instance gets the exit sequence", s.name, errExiting)
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
	if !callerExiting() {
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
	s.job = nil
	if len(s.queue) == 0 {
		s.stopExitTick()
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
	if s.job == nil && len(s.queue) == 0 {
		s.stopExitTick()
	}
}

// candidateError explains why a new instance failed: it exited before it
// was ready, or was not ready within ready_timeout; its exit status and
// last output lines.
func (s *service) candidateError(in *instance) error {
	what, probe := "exited before it was ready", ""
	if in.notReady != "" {
		what = fmt.Sprintf("was not ready within ready_timeout %s", in.def.ReadyTimeout)
		probe = "; its probe: " + in.notReady
	}
	return fmt.Errorf("process %q: the new instance %s (exit status %d; last output: %s)%s", s.name, what, in.result.code, in.tail.String(), probe)
}

// blueGreen reports whether a definition is replaced beside the running
// instance: it needs a port of its own and a way to know it is ready.
func (p *Process) blueGreen() bool { return p.Port == "auto" && p.Ready != nil }
