package supervise

import (
	"time"

	"go.uber.org/zap"
)

// Retirement: how an instance leaves service without failing what it
// serves. The rules, in order:
//
//  1. It leaves the serving set's view first: the dynamic upstream sends
//     it nothing new from then on (see admit).
//  2. A config that may still put it back (the old config of a reload in
//     progress) keeps it, whatever else happens.
//  3. Its ordinary requests finish, up to drain_timeout.
//  4. Its streams (WebSockets, SSE; see streams.go): when another instance
//     serves in its place (it was replaced beside itself), it keeps them
//     until they end, up to stream_drain_timeout since it left service;
//     then, or when a newer instance of its slot retires (at most one old
//     instance per slot keeps its streams), they end spread over a tenth of
//     that bound, so that their clients do not all reconnect at once. When
//     nothing serves in its place (a stop first, the process leaving the
//     config, its port going to another process, fewer instances, Caddy's
//     exit), or a rolling restart waits for it to be gone, they end at
//     once. Either way they end cleanly: a close frame 1001, the end of an
//     SSE response.
//  5. Once nothing keeps it, it gets its stop signal (stopInstance, which
//     ends any stream still open first). An instance that failed its
//     health check does not drain: it is killed at once.
//
// How each retirement ended is counted (history.retirements): `idle` (all
// it was sent ended by itself), `streams_closed` (its streams were ended,
// then it was idle), `drain_timeout` (ordinary requests still ran),
// `exit` (Caddy exited first).

// retire takes an instance out of service.
func (s *service) retire(in *instance, until *App, reason string) {
	if in.state != stateReady && in.state != stateRetiring || in.cond.unhealthy != "" {
		s.stopInstance(in, reason) // it served nothing, or cannot drain (SIGKILL: see stopInstance)
		return
	}
	if in.state == stateReady {
		in.retireGen++ // the bounds of an earlier retirement do not count
		in.retiredAt = s.w.now()
		in.streamsClosed, in.closedStreams = "", 0
	}
	in.setState(stateRetiring)
	in.cond.keptFor, in.retireReason = until, reason
	s.publish() // out of service before its counts are read
	in.cond.keepStreams = false
	switch now := s.servingAt(in.slot); {
	case s.job != nil && s.job.stepOf(in) != nil && s.job.stepOf(in).cand == in:
		s.closeStreams(in, "its release did not take over", 0) // (a canary's: see canary.go)
	case now == nil || now == in:
		s.closeStreams(in, "nothing serves in its place", 0)
	case s.job != nil && len(s.job.todo) > 0:
		s.closeStreams(in, "a rolling restart goes on once it is gone", 0)
	default:
		in.cond.keepStreams = true
		s.dropKeptStreams(in, "a newer instance retires")
	}
	s.stopIfRetired(in)
}

// dropKeptStreams ends the streams that retiring instances other than
// except keep: a newer instance retires, or the process stops altogether
// (no config holds it, its port goes to another process): nothing is left
// to reconnect to but the newest instance, or nothing at all.
func (s *service) dropKeptStreams(except *instance, why string) {
	for _, o := range s.live {
		// (with the process stopping, also those an earlier call spreads)
		if o != except && o.state == stateRetiring && (o.cond.keepStreams || except == nil) && (except == nil || o.slot == except.slot) {
			o.cond.keepStreams = false
			spread := time.Duration(0) // the process stops: no time for a spread
			if except != nil {
				spread = closeSpread(o)
			}
			s.closeStreams(o, why, spread)
		}
	}
}

// The bounds of a retirement (retireDone.bound).
const (
	boundDrain   = iota // drain_timeout: its ordinary requests have had their time
	boundStreams        // stream_drain_timeout: its streams have had theirs
	boundClose          // its streams were asked to end a while ago
)

// stopIfRetired stops a retiring instance once nothing keeps it, and arms
// its bounds otherwise.
func (s *service) stopIfRetired(in *instance) {
	if in.state != stateRetiring || s.keptForConfig(in) {
		return
	}
	if in.inflight.Load() == 0 {
		outcome := "idle"
		switch {
		case s.exiting:
			outcome = "exit"
		case in.closedStreams > 0:
			outcome = "streams_closed"
		}
		s.endRetirement(in, outcome)
		return
	}
	if in.retireTimer != in.retireGen {
		in.retireTimer = in.retireGen
		def := in.settings.Load()
		in.drainDeadline = s.w.now().Add(time.Duration(def.DrainTimeout))
		s.retireAfter(in, time.Duration(def.DrainTimeout), boundDrain)
		if in.cond.keepStreams {
			s.retireAfter(in, in.retiredAt.Add(time.Duration(def.StreamDrainTimeout)).Sub(s.w.now()), boundStreams)
		}
	}
}

// retireAfter posts one of the retirement's bounds after d.
func (s *service) retireAfter(in *instance, d time.Duration, bound int) {
	s.w.after(s, d, retireDone{in: in, gen: in.retireGen, bound: bound})
}

// streamsStuck reports whether streams of the instance were asked to end
// long enough ago (by now) that those still open will not.
func streamsStuck(in *instance, now time.Time) bool {
	return in.streamsClosed != "" && in.streams.Load() > 0 && now.Sub(in.streamsClosedAt) >= in.streamsSpread+wsCloseWait+time.Second
}

// closeSpread is the window over which a retiring instance that still
// serves its streams ends them (stream_drain_timeout passed, or a newer
// instance retires): a tenth of stream_drain_timeout, at most 30 s, so
// that their clients do not all reconnect at once.
func closeSpread(in *instance) time.Duration {
	return min(time.Duration(in.settings.Load().StreamDrainTimeout)/10, 30*time.Second)
}

// retireDue: one of a retiring instance's bounds has passed.
func (s *service) retireDue(ev retireDone) {
	in := ev.in
	if in.state != stateRetiring || ev.gen != in.retireGen || s.keptForConfig(in) {
		return
	}
	requests := in.inflight.Load() - in.streams.Load()
	switch {
	case ev.bound == boundStreams:
		s.closeStreams(in, "stream_drain_timeout passed", closeSpread(in)) // once they ended it is idle, and stops
	case requests > 0 && (ev.bound == boundDrain || s.w.now().After(in.drainDeadline)):
		s.log().Warn("requests sent to the retiring instance still run after drain_timeout; stopping it",
			zap.Int("pid", in.getPID()), zap.Int64("requests", requests), zap.Int64("streams", in.streams.Load()))
		s.endRetirement(in, "drain_timeout")
	case requests <= 0 && streamsStuck(in, s.w.now()):
		s.log().Warn("streams of the retiring instance did not end when asked; stopping it",
			zap.Int("pid", in.getPID()), zap.Int64("streams", in.streams.Load()))
		s.endRetirement(in, "streams_closed")
	}
	// else: its ordinary requests still have time, or only streams are left
	// and they have until stream_drain_timeout
}

// closeStreams ends the open streams of an instance, and those that open
// on it later, spread over a window (see endStreams); a retiring instance
// whose streams do not end is stopped a while later (boundClose). Called
// again (without a spread: the instance stops), it ends at once those
// whose turn has not come.
func (s *service) closeStreams(in *instance, why string, spread time.Duration) {
	first := in.streamsClosed == ""
	if !first && spread > 0 {
		return
	}
	if first {
		in.streamsClosed, in.streamsClosedAt, in.streamsSpread = why, s.w.now(), spread
	}
	n := s.w.endStreams(in, spread)
	if n == 0 {
		return
	}
	in.closedStreams += n
	what := "ending the open streams of an instance cleanly"
	if !first {
		what = "ending the rest of the instance's streams at once"
	}
	s.log().Info(what, zap.Int("pid", in.getPID()), zap.Int("streams", n), zap.String("why", why), zap.Duration("spread_over", spread))
	if first && in.state == stateRetiring {
		s.retireAfter(in, spread+wsCloseWait+time.Second, boundClose)
	}
}

// endRetirement counts how a retirement ended and stops the instance.
func (s *service) endRetirement(in *instance, outcome string) {
	if s.history.retirements == nil {
		s.history.retirements = make(map[string]int)
	}
	s.history.retirements[outcome]++
	s.log().Info("retirement over", zap.Int("pid", in.getPID()), zap.String("outcome", outcome),
		zap.Duration("retired_for", s.w.now().Sub(in.retiredAt)), zap.Int("streams_ended", in.closedStreams))
	s.stopInstance(in, in.retireReason)
}

// serveAgain: a retiring instance serves again (a config that did not take
// over puts it back); streams may open on it again.
func (s *service) serveAgain(in *instance) {
	in.retireGen++           // its bounds no longer count
	in.countDue.Store(false) // (a report dropped while it retired: it counts again)
	in.setState(stateReady)
	in.cond.keptFor, in.retiredAt, in.drainDeadline = nil, time.Time{}, time.Time{}
	in.streamsClosed, in.closedStreams, in.cond.keepStreams, in.streamsSpread = "", 0, false, 0
	openStreams.Lock()
	in.streamsEnding = false
	openStreams.Unlock()
}
