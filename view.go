package supervise

import (
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
)

// view is what the readers of a service see: a snapshot its loop publishes
// after every event. The dynamic upstream, the admin API and the metrics
// read it without a lock; changed is closed when the next one replaces it,
// so a reader that waits for a change cannot miss one.
type view struct {
	targets []*instance // the ready instances of the serving set
	addrs   []string    // where they serve
	pending bool        // none is ready now, but one will be by itself (starting, restarting, replaced)
	canary  *canaryView // a deploy's canary window that is open (canary.go)
	status  Status
	live    []*instance // status.Instances' instances, in order
	metrics viewMetrics
	changed chan struct{}
}

// viewMetrics are the figures /metrics reports of a service.
type viewMetrics struct {
	up, ready   bool
	restarts    int
	exits       map[int]int
	startedAt   time.Time
	lastStop    time.Duration
	lastDrain   time.Duration
	retirements map[string]int
	recycles    map[string]int
	canaries    map[string]int
}

// fresh returns a view that includes every event the loop took before the
// call (it waits for the loop to take one more, which costs a round trip):
// for readers that may have seen an event's log line, such as the admin
// API's status asked for right after it.
func (s *service) fresh() *view {
	done := make(chan struct{})
	if s.post(func(*service) { close(done) }) {
		<-done
	}
	return s.view.Load()
}

// publish replaces the service's view with one of its state now.
func (s *service) publish() {
	v := &view{changed: make(chan struct{}), status: s.status(), live: slices.Clone(s.live)}
	serving := false
	for _, in := range s.live {
		in.accepting.Store(in.serves())
		if why := in.conditionsError(); why != "" {
			s.log().Error("invalid instance conditions (a bug)", zap.Int("pid", in.getPID()), zap.String("why", why))
		}
	}
	for _, in := range s.slots {
		if in == nil {
			continue
		}
		serving = true
		if in.serves() {
			v.targets = append(v.targets, in)
			v.addrs = append(v.addrs, in.address())
		}
	}
	if j := s.job; j != nil && j.canary != nil {
		v.canary = &canaryView{w: j.canary}
		for _, in := range j.canary.cands {
			if in.serves() {
				v.canary.targets = append(v.canary.targets, in)
			}
		}
		if len(v.canary.targets) == 0 {
			v.canary = nil
		}
	}
	v.pending = len(v.addrs) == 0 && (s.unborn || len(s.holders) > 0 && s.stopAll == "" && s.yieldedTo == nil && !s.ended &&
		(serving || s.job != nil || len(s.backoff.due) > 0))
	v.metrics = viewMetrics{
		up:          serving,
		ready:       len(v.targets) > 0,
		restarts:    s.history.restarts,
		exits:       maps.Clone(s.history.exits),
		lastStop:    s.history.lastStop,
		lastDrain:   s.history.lastDrain,
		retirements: maps.Clone(s.history.retirements),
		recycles:    maps.Clone(s.history.recycles),
		canaries:    maps.Clone(s.history.canaries),
	}
	if shown := s.shown(); shown != nil {
		v.metrics.startedAt = shown.startedAt
	}
	if old := s.view.Swap(v); old != nil {
		close(old.changed)
	}
}

// shown is the instance the status tells about: the one that serves, else
// one that is being started in its place, else the last one.
func (s *service) shown() *instance {
	for _, in := range s.slots {
		if in != nil {
			return in
		}
	}
	if s.job != nil && !s.job.beside && len(s.job.steps) > 0 && s.job.steps[0].cand != nil {
		return s.job.steps[0].cand
	}
	return s.lastSeen
}

// status is the admin API's status of the service.
func (s *service) status() Status {
	st := Status{Name: s.name, Restarts: s.history.restarts, LastExit: s.history.lastExit, State: stateExited}
	if def := s.current(); def != nil {
		st.Socket, st.StopSignal = def.Socket, def.StopSignal
	}
	st.Instances = []InstanceStatus{}
	for _, in := range s.live {
		is := InstanceStatus{PID: in.getPID(), Instance: in.slot, State: in.state, Serving: slices.Contains(s.slots, in), Port: in.port,
			Unhealthy: in.cond.unhealthy, Recycle: in.cond.recycle}
		if !in.startedAt.IsZero() {
			t := in.startedAt
			is.StartedAt = &t
		}
		if in.state == stateRetiring || in.state == stateStopping && !in.retiredAt.IsZero() {
			t := in.retiredAt
			is.RetiredAt = &t
		}
		st.Instances = append(st.Instances, is)
	}
	if len(s.history.retirements) > 0 {
		st.Retirements = maps.Clone(s.history.retirements)
	}
	if len(s.history.recycles) > 0 {
		st.Recycles = maps.Clone(s.history.recycles)
	}
	st.Canary = s.canaryLast
	if s.job != nil && s.job.canary != nil {
		st.Canary = s.job.canary.status() // (its figures now: see statusNow)
	}
	in := s.shown()
	if in == nil {
		return st
	}
	st.PID, st.State, st.Port = in.getPID(), in.state, in.port
	st.Ready = in.serves()
	st.Command = in.def.argsFor(in.place())
	if !in.startedAt.IsZero() {
		t := in.startedAt
		st.StartedAt = &t
	}
	return st
}

// statusNow is the view's status with what changes between events filled
// in: each instance's open streams and memory.
func (v *view) statusNow() Status {
	st := v.status
	st.Waiting = waitingFor(st.Name).Load()
	if v.canary != nil {
		st.Canary = v.canary.w.status()
	}
	st.Instances = slices.Clone(st.Instances)
	for i, in := range v.live {
		st.Instances[i].Streams = in.openStreamCounts()
		st.Instances[i].Requests = in.served.Load()
		st.Instances[i].Responses = in.responseCounts()
		if st.Instances[i].State != stateExited {
			st.Instances[i].MemoryBytes = groupMemory(st.Instances[i].PID)
		}
	}
	return st
}
