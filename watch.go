package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Watching a serving instance: liveness (its health check) and recycling
// (max_memory, max_lifetime, max_lifetime_requests). While an instance is
// ready, one goroutine checks it and reports to its service; the rules of
// what follows are here too:
//
//   - An instance that reaches a recycling limit is replaced beside itself
//     through the one replacement path (replace.go), as by an admin
//     restart of that instance alone: it keeps serving until the new one
//     is ready, then retires with a drain. It is logged and counted with
//     the limit (history.recycles).
//   - An instance that fails its health check `fails` times in a row
//     leaves the dynamic upstream at once (nothing new is sent to it), is
//     replaced the same way, and is killed with SIGKILL once the new one
//     serves: a hung process cannot drain (see retire).
//   - One replacement runs at a time: a recycle that comes while another
//     job runs (a roll, another recycle) waits for it, and then for the
//     old instances it left to be gone (replace.go's oldsLeft), so several
//     instances are never recycled at once and a recycle never runs more
//     than one instance beyond `instances`. A failed health check waits
//     for jobs only: the pool is short of an instance until it is
//     replaced. An instance that leaves service meanwhile needs nothing.

// HealthCheck is the liveness check of a process's instances: unlike the
// readiness probe, it keeps running while an instance serves.
type HealthCheck struct {
	// TCP: healthy while a TCP connection to this address succeeds; empty:
	// the instance's port. Default: the readiness probe's target.
	TCP *string `json:"tcp,omitempty"`

	// HTTP: healthy while a GET of this URL answers 2xx or 3xx within
	// `timeout`; a path alone (`/up`) is that path on the instance's port.
	// Default: the readiness probe's target.
	HTTP *string `json:"http,omitempty"`

	// Interval is how often each instance is checked. Default: `10s`.
	Interval Duration `json:"interval,omitempty"`

	// Timeout bounds one check. Default: `2s`.
	Timeout Duration `json:"timeout,omitempty"`

	// Fails is how many checks in a row must fail for the instance to be
	// taken out and replaced. Default: 3.
	Fails int `json:"fails,omitempty"`

	probe *ReadyProbe // what is checked
	dflt  bool        // the default probe of a process with a port
}

// Defaults of HealthCheck.
const (
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	DefaultHealthFails    = 3
)

// memoryEvery is how often max_memory samples an instance's memory.
const memoryEvery = time.Second

// UnmarshalJSON decodes a health check strictly and names the field of a
// bad duration.
func (h *HealthCheck) UnmarshalJSON(b []byte) error {
	type plain HealthCheck
	var aux struct {
		*plain
		Interval json.RawMessage `json:"interval,omitempty"`
		Timeout  json.RawMessage `json:"timeout,omitempty"`
	}
	aux.plain = (*plain)(h)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return fmt.Errorf("health: %v", err)
	}
	for name, f := range map[string]struct {
		raw json.RawMessage
		dst *Duration
	}{"interval": {aux.Interval, &h.Interval}, "timeout": {aux.Timeout, &h.Timeout}} {
		if f.raw != nil {
			if err := f.dst.UnmarshalJSON(f.raw); err != nil {
				return fmt.Errorf("health: %s %v", name, err)
			}
		}
	}
	return nil
}

// provisionHealth checks the health check and fills in its defaults.
func (p *Process) provisionHealth() error {
	h := p.Health
	switch {
	case h.Interval < 0:
		return fmt.Errorf("health: interval %q: must be positive", h.Interval)
	case h.Timeout < 0:
		return fmt.Errorf("health: timeout %q: must be positive", h.Timeout)
	case h.Fails < 0:
		return fmt.Errorf("health: fails %d: must be a whole number above 0", h.Fails)
	}
	if h.Interval == 0 {
		h.Interval = Duration(DefaultHealthInterval)
	}
	if h.Timeout == 0 {
		h.Timeout = Duration(DefaultHealthTimeout)
	}
	if h.Fails == 0 {
		h.Fails = DefaultHealthFails
	}
	if h.Timeout > h.Interval {
		return fmt.Errorf("health: timeout %s: longer than interval %s", h.Timeout, h.Interval)
	}
	switch {
	case h.TCP != nil || h.HTTP != nil:
		h.probe = &ReadyProbe{TCP: h.TCP, HTTP: h.HTTP}
		return p.checkProbe("health", h.probe)
	case p.Ready == nil:
		return fmt.Errorf("health: with ready off, give what to check: health tcp [HOST:PORT] or health http [URL]")
	}
	h.probe, h.dflt = p.Ready, p.readyDefault
	return nil
}

// watch starts or ends what watches the instance: while it is ready, and
// only if its settings ask for it. Called by the service's loop (on each
// change of state, and when a reload changes its settings).
func (in *instance) watch() {
	if in.unwatch != nil {
		in.unwatch()
		in.unwatch = nil
	}
	in.watchGen++ // what an earlier watch reports no longer counts
	def := in.settings.Load()
	if in.state != stateReady || def.Health == nil && def.MaxMemory == 0 && def.MaxLifetime == 0 {
		return
	}
	in.unwatch = in.svc.w.watch(in, def, in.watchGen)
}

// startWatching starts the goroutine that watches the instance (the real
// world's watch).
func (in *instance) startWatching(def *Process, gen int) (cancel func()) {
	ctx, cancel := context.WithCancel(context.Background())
	go in.watching(ctx, def, in.svc.log(), gen)
	return cancel
}

// watching checks the instance until ctx ends: its health check every
// interval, its memory every second, its lifetime once. It reports each
// limit once (the service recycles, or retries a recycle that failed, by
// its own rules) and goes on checking its health for as long as the
// instance serves, whatever the jobs do; a failed health check is its
// last report (the instance leaves service).
func (in *instance) watching(ctx context.Context, def *Process, logger *zap.Logger, gen int) {
	var health, memory <-chan time.Time
	var check check
	var name string
	if h := def.Health; h != nil {
		t := time.NewTicker(time.Duration(h.Interval))
		defer t.Stop()
		health = t.C
		check, name = def.checkOf(h.probe, h.dflt, in.port, time.Duration(h.Timeout))
	}
	if def.MaxMemory > 0 {
		t := time.NewTicker(memoryEvery)
		defer t.Stop()
		memory = t.C
	}
	var lifetime <-chan time.Time
	if def.MaxLifetime > 0 {
		t := time.NewTimer(time.Until(in.startedAt.Add(time.Duration(def.MaxLifetime))))
		defer t.Stop()
		lifetime = t.C
	}
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-health:
			attempt, cancel := context.WithTimeout(ctx, time.Duration(def.Health.Timeout))
			err := check(attempt)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				fails = 0
				continue
			}
			fails++
			logger.Warn("instance failed its health check", zap.Int("pid", in.getPID()), zap.String("check", name),
				zap.String("error", err.Error()), zap.Int("fails", fails), zap.Int("of", def.Health.Fails))
			if fails >= def.Health.Fails {
				in.svc.post(instanceUnhealthy{in, fmt.Sprintf("%s: %v (%d checks in a row)", name, err, fails), gen})
				return
			}
		case <-memory:
			if rss := groupMemory(in.getPID()); rss > int64(def.MaxMemory) {
				in.svc.post(instanceRecycle{in, "max_memory", gen})
				memory = nil
			}
		case <-lifetime:
			in.svc.post(instanceRecycle{in, "max_lifetime", gen})
			lifetime = nil
		}
		if health == nil && memory == nil && lifetime == nil {
			return // nothing left to watch
		}
	}
}

// unhealthy: an instance failed its health check. It leaves the dynamic
// upstream now, and is replaced.
func (s *service) unhealthy(in *instance, why string) {
	if s.notServingYet(in) || in.state != stateReady || !in.serves() {
		return // it left service meanwhile, or is not in it yet (a new instance)
	}
	in.cond.unhealthy = why
	s.log().Error("instance failed its health check: it leaves the upstream, and is replaced, then killed",
		zap.Int("pid", in.getPID()), zap.Int("instance", in.slot), zap.String("why", why))
	s.publish() // out of the upstream before anything else
	s.recycle(in, "health")
	if in.key != s.currentKey() && len(s.holders) > 0 {
		// of another definition than the one in force: a put-back that
		// failed waits for its next try; this one cannot wait
		if s.job == nil {
			s.putBack()
		} else {
			s.reconcile = true
		}
	}
}

// recycle replaces an instance beside itself for reason, now or once the
// job that runs is over.
func (s *service) recycle(in *instance, reason string) {
	def := in.settings.Load()
	switch {
	case s.notServingYet(in) || in.state != stateReady || s.servingAt(in.slot) != in:
		return // it left service meanwhile
	case reason == "health" && s.job != nil && s.job.target == in:
		return // its recycle waits for old instances: it no longer does (nextBatch)
	case in.cond.recycle != "":
		return // its recycle is on its way
	case reason != "health" && !limitSet(def, reason):
		if reason == "max_lifetime_requests" {
			in.countDue.Store(false) // set again, it counts again
		}
		return // a reload took the limit away
	case reason != "health" && s.w.now().Before(in.recycleRetryAt):
		return // its last recycle failed: the retry comes after the back-off
	}
	in.cond.recycle = reason
	if in.recycled {
		s.recycleNext() // a retry: logged and counted the first time
		return
	}
	in.recycled = true
	if s.history.recycles == nil {
		s.history.recycles = make(map[string]int)
	}
	s.history.recycles[reason]++
	fields := []zap.Field{zap.Int("pid", in.getPID()), zap.Int("instance", in.slot), zap.String("reason", reason)}
	switch reason {
	case "max_memory":
		fields = append(fields, zap.String("max_memory", def.MaxMemory.String()), zap.Int64("memory_bytes", s.w.memory(in)))
	case "max_lifetime":
		fields = append(fields, zap.Duration("max_lifetime", time.Duration(def.MaxLifetime)))
	case "max_lifetime_requests":
		fields = append(fields, zap.Int64("max_lifetime_requests", def.MaxLifetimeRequests))
	}
	if reason != "health" {
		s.log().Info("recycling an instance: it is replaced beside itself", fields...)
	}
	s.recycleNext()
}

// limitSet reports whether def still sets the limit a recycle is for.
func limitSet(def *Process, reason string) bool {
	switch reason {
	case "max_memory":
		return def.MaxMemory > 0
	case "max_lifetime":
		return def.MaxLifetime > 0
	case "max_lifetime_requests":
		return def.MaxLifetimeRequests > 0
	}
	return true
}

// notServingYet reports whether in is a new instance that a job has not
// switched to yet: what its watch found does not count (its watch starts
// over when it begins to serve: stepDone).
func (s *service) notServingYet(in *instance) bool {
	st := s.jobStep(in)
	return st != nil && st.cand == in
}

// recycleFailed: the replacement of a recycled instance failed (its new
// instance could not start, exited, or was not ready). It serves on (one
// that failed its health check stays out of the upstream) and the recycle
// is tried again after a back-off: 1 s, doubling up to 30 s.
func (s *service) recycleFailed(in *instance) {
	reason := in.cond.recycle
	in.cond.recycle = ""
	in.recycleFails++
	wait := min(time.Second<<min(in.recycleFails-1, 5), 30*time.Second)
	in.recycleRetryAt = s.w.now().Add(wait) // (its watch goes on: its health is still checked)
	s.log().Warn("recycling the instance failed; trying again later", zap.Int("pid", in.getPID()), zap.Int("instance", in.slot),
		zap.String("reason", reason), zap.Duration("after", wait))
	s.w.after(s, wait, instanceRecycle{in, reason, -1})
}

// recycleNext starts the replacement of an instance that waits to be
// recycled — one that failed its health check first, then in slot order —
// unless a job runs (endJob calls again) or nothing new may start. An
// instance of another definition than the one in force is not recycled:
// the put-back replaces it (see putBack), which tries at once when it
// fails its health check (see unhealthy).
func (s *service) recycleNext() {
	if s.job != nil || !s.mayStart(transition) {
		return
	}
	var next *instance
	for _, in := range s.slots {
		switch {
		case in == nil || in.cond.recycle == "":
		case in.key != s.currentKey():
			// (the put-back replaces it: see unhealthy)
		case next == nil || in.cond.unhealthy != "" && next.cond.unhealthy == "":
			next = in
		}
	}
	if next == nil {
		return
	}
	def := s.current()
	s.replace(&job{kind: recycleJob, why: "recycled: " + next.cond.recycle, def: def, prevDef: def, todo: []int{next.slot},
		beside: def.blueGreen(), target: next})
}
