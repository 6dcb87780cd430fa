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
//     until they end, up to stream_drain_timeout since it left service,
//     and a newer retirement ends them at once (at most one old instance
//     lingers for its streams). When nothing serves in its place (a stop
//     first, the process leaving the config, its port going to another
//     process, Caddy's exit), they end at once. Either way they end
//     cleanly: a close frame 1001, the end of an SSE response.
//  5. Once nothing keeps it, it gets its stop signal (stopInstance, which
//     ends any stream still open first).
//
// How each retirement ended is counted (history.retirements): `idle` (all
// it was sent ended by itself), `streams_closed` (its streams were ended,
// then it was idle), `drain_timeout` (ordinary requests still ran),
// `exit` (Caddy exited first).

// retire takes an instance out of service.
func (s *service) retire(in *instance, until *App, reason string) {
	if in.state != stateReady && in.state != stateRetiring {
		s.stopInstance(in, reason) // it served nothing
		return
	}
	if in.state == stateReady {
		in.retireGen++ // the timers of an earlier retirement do not count
		in.retiredAt = time.Now()
		in.streamsClosed, in.closedStreams = "", 0
	}
	in.setState(stateRetiring)
	in.retireUntil, in.retireReason = until, reason
	s.publish() // out of service before its counts are read
	in.keepStreams = s.slots[in.slot] != nil && s.slots[in.slot] != in
	if in.keepStreams {
		for _, o := range s.live {
			if o != in && o.state == stateRetiring && o.keepStreams {
				s.closeStreams(o, "a newer instance retires")
			}
		}
	} else {
		s.closeStreams(in, "nothing serves in its place")
	}
	s.stopIfRetired(in)
}

// stopIfRetired stops a retiring instance once nothing keeps it, and arms
// its bounds otherwise.
func (s *service) stopIfRetired(in *instance) {
	if in.state != stateRetiring || (in.retireUntil != nil && s.holds(in.retireUntil)) {
		return
	}
	if in.inflight.Load() == 0 {
		outcome := "idle"
		if in.closedStreams > 0 {
			outcome = "streams_closed"
		}
		s.endRetirement(in, outcome)
		return
	}
	if in.retireTimer != in.retireGen {
		in.retireTimer = in.retireGen
		gen, def := in.retireGen, in.settings.Load()
		time.AfterFunc(time.Duration(def.DrainTimeout), func() { s.post(retireDone{in: in, gen: gen}) })
		if in.keepStreams {
			left := time.Until(in.retiredAt.Add(time.Duration(def.StreamDrainTimeout)))
			time.AfterFunc(left, func() { s.post(retireDone{in: in, gen: gen, streams: true}) })
		}
	}
}

// retireDue: one of a retiring instance's bounds has passed.
func (s *service) retireDue(ev retireDone) {
	in := ev.in
	if in.state != stateRetiring || ev.gen != in.retireGen || (in.retireUntil != nil && s.holds(in.retireUntil)) {
		return
	}
	if ev.streams {
		if in.streamsClosed == "" {
			s.closeStreams(in, "stream_drain_timeout passed")
			// they end within wsCloseWait; then it is idle. If not, this
			// stops it:
			gen := in.retireGen
			time.AfterFunc(wsCloseWait+time.Second, func() { s.post(retireDone{in: in, gen: gen}) })
		}
		return
	}
	requests := in.inflight.Load() - in.streams.Load()
	switch {
	case requests > 0:
		s.log().Warn("requests sent to the retiring instance still run after drain_timeout; stopping it",
			zap.Int("pid", in.getPID()), zap.Int64("requests", requests), zap.Int64("streams", in.streams.Load()))
		s.endRetirement(in, "drain_timeout")
	case in.streamsClosed == "":
		// only streams: they have until stream_drain_timeout
	default:
		s.log().Warn("streams of the retiring instance did not end when asked; stopping it",
			zap.Int("pid", in.getPID()), zap.Int64("streams", in.streams.Load()))
		s.endRetirement(in, "streams_closed")
	}
}

// closeStreams ends the open streams of an instance, and those that open
// on it later, once per retirement.
func (s *service) closeStreams(in *instance, why string) {
	if in.streamsClosed != "" {
		return
	}
	in.streamsClosed = why
	if n := endStreams(in); n > 0 {
		in.closedStreams += n
		s.log().Info("ending the open streams of an instance cleanly", zap.Int("pid", in.getPID()),
			zap.Int("streams", n), zap.String("why", why))
	}
}

// endRetirement counts how a retirement ended and stops the instance.
func (s *service) endRetirement(in *instance, outcome string) {
	if s.history.retirements == nil {
		s.history.retirements = make(map[string]int)
	}
	s.history.retirements[outcome]++
	s.log().Info("retirement over", zap.Int("pid", in.getPID()), zap.String("outcome", outcome),
		zap.Duration("retired_for", time.Since(in.retiredAt)), zap.Int("streams_ended", in.closedStreams))
	s.stopInstance(in, in.retireReason)
}

// serveAgain: a retiring instance serves again (a config that did not take
// over puts it back); streams may open on it again.
func (s *service) serveAgain(in *instance) {
	in.retireGen++ // its bounds no longer count
	in.setState(stateReady)
	in.retireUntil = nil
	in.streamsClosed, in.closedStreams, in.keepStreams = "", 0, false
	openStreams.Lock()
	in.streamsEnding = false
	openStreams.Unlock()
}
