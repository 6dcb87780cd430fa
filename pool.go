package supervise

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
)

// A pool: `instances` N of one definition, each in a slot of the service's
// serving set with its own port, behind the dynamic upstream. What is
// particular to a pool is here: how many slots, how a reload resizes
// them, and which instance a request goes to. Replacing instances (rolls)
// is replace.go's; recycling and liveness, watch.go's.

// Instances is a number of instances, or auto (InstancesAuto): in JSON a
// positive integer or the string "auto".
type Instances int

// InstancesAuto: as many instances as the CPUs Caddy's process may use.
const InstancesAuto Instances = -1

// UnmarshalJSON implements json.Unmarshaler.
func (n *Instances) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := parseInstances(s)
		*n = v
		return err
	}
	var i int
	if err := json.Unmarshal(b, &i); err != nil || i < 1 {
		return fmt.Errorf("instances %s: must be a whole number above 0, or \"auto\"", bytes.TrimSpace(b))
	}
	*n = Instances(i)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (n Instances) MarshalJSON() ([]byte, error) {
	if n == InstancesAuto {
		return json.Marshal("auto")
	}
	return json.Marshal(int(n))
}

// parseInstances reads `auto` or a whole number above 0.
func parseInstances(s string) (Instances, error) {
	if s == "auto" {
		return InstancesAuto, nil
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 1 {
		return 0, fmt.Errorf("instances %q: must be a whole number above 0, or auto", s)
	}
	return Instances(i), nil
}

// maxInstances bounds `instances`: each is a process and a port.
const maxInstances = 256

// provisionPool checks the options of pools, recycling and liveness, and
// fills in their defaults.
func (p *Process) provisionPool() error {
	switch {
	case p.Instances == InstancesAuto:
		p.count = min(usableCPUs(), maxInstances)
	case p.Instances == 0:
		p.count = 1
	case p.Instances < 0 || p.Instances > maxInstances:
		return fmt.Errorf("instances %d: must be between 1 and %d, or auto", p.Instances, maxInstances)
	default:
		p.count = int(p.Instances)
	}
	if p.count > 1 || p.Instances == InstancesAuto {
		switch {
		case p.Socket != "":
			return fmt.Errorf("instances %s: not with socket %q: a socket has one queue, which every instance would share, so requests could be neither balanced, counted nor kept from an instance that leaves; use port auto, or the app's own workers (puma -w, gunicorn -w) behind the socket", p.Instances.text(), p.Socket)
		case p.Port != "auto" && p.count > 1:
			return fmt.Errorf("instances %s: needs port auto (port %q): each instance listens on a port of its own", p.Instances.text(), p.Port)
		case p.Ready == nil && p.count > 1:
			return fmt.Errorf("instances %s: needs a readiness probe (ready is off): instances are replaced one beside the other, once the new one is ready", p.Instances.text())
		case p.count > 1 && ownsTarget(p.Ready) != "":
			return fmt.Errorf("instances %s: ready %s: an address of its own would probe the same place for every instance; leave it out (each instance's port) or give a path", p.Instances.text(), ownsTarget(p.Ready))
		case p.count > 1 && p.Health != nil && ownsTarget(&ReadyProbe{TCP: p.Health.TCP, HTTP: p.Health.HTTP}) != "":
			return fmt.Errorf("instances %s: health %s: an address of its own would check the same place for every instance; leave it out (each instance's port) or give a path", p.Instances.text(), ownsTarget(&ReadyProbe{TCP: p.Health.TCP, HTTP: p.Health.HTTP}))
		}
	}
	if p.RollBatch < 0 {
		return fmt.Errorf("roll_batch %d: must be a whole number above 0", p.RollBatch)
	}
	if p.RollBatch == 0 {
		p.RollBatch = 1
	}
	if p.MaxLifetimeRequests < 0 {
		return fmt.Errorf("max_lifetime_requests %d: must be a whole number above 0", p.MaxLifetimeRequests)
	}
	if p.MaxMemory < 0 {
		return fmt.Errorf("max_memory %d: must be positive", p.MaxMemory)
	}
	if p.MaxLifetime < 0 {
		return fmt.Errorf("max_lifetime %q: must be positive", p.MaxLifetime)
	}
	if (p.MaxMemory > 0 || p.MaxLifetime > 0 || p.MaxLifetimeRequests > 0) && !p.blueGreen() {
		return fmt.Errorf("%s: recycling replaces an instance beside itself: it needs port auto and a readiness probe (port %q)", p.recycleOption(), p.Port)
	}
	if p.Health != nil {
		if err := p.provisionHealth(); err != nil {
			return err
		}
	}
	return nil
}

// ownsTarget is the address of probe r if it names one of its own (not
// the instance's port), else "".
func ownsTarget(r *ReadyProbe) string {
	switch {
	case r == nil:
	case r.TCP != nil && *r.TCP != "":
		return "tcp " + *r.TCP
	case r.HTTP != nil && *r.HTTP != "" && !strings.HasPrefix(*r.HTTP, "/"):
		return "http " + *r.HTTP
	}
	return ""
}

// recycleOption names the first recycling option set, for errors.
func (p *Process) recycleOption() string {
	switch {
	case p.MaxMemory > 0:
		return fmt.Sprintf("max_memory %s", p.MaxMemory)
	case p.MaxLifetime > 0:
		return fmt.Sprintf("max_lifetime %s", p.MaxLifetime)
	}
	return fmt.Sprintf("max_lifetime_requests %d", p.MaxLifetimeRequests)
}

func (n Instances) text() string {
	if n == InstancesAuto {
		return "auto"
	}
	return strconv.Itoa(int(n))
}

// cpuQuota reads a cgroup v2 cpu.max ("max 100000", "150000 100000"): the
// CPUs it allows, rounded up, or 0 for no limit.
func cpuQuota(cpuMax string) int {
	f := strings.Fields(cpuMax)
	if len(f) != 2 || f[0] == "max" {
		return 0
	}
	quota, err1 := strconv.ParseFloat(f[0], 64)
	period, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || quota <= 0 || period <= 0 {
		return 0
	}
	return int(math.Ceil(quota / period))
}

// rr breaks ties between instances with as many requests in flight.
var rr atomic.Uint64

// pick is the instance a request goes to: among the ready instances of the
// serving set, the one with the fewest requests in flight (streams
// included), ties taken in turn; avoid (the instance a retried request
// failed on) only if there is no other.
func pick(targets []*instance, avoid *instance) *instance {
	if len(targets) == 1 {
		return targets[0]
	}
	start := int(rr.Add(1) % uint64(len(targets)))
	var best *instance
	var least int64
	for i := range targets {
		in := targets[(start+i)%len(targets)]
		if in == avoid {
			continue
		}
		if n := in.inflight.Load(); best == nil || n < least {
			best, least = in, n
		}
	}
	if best == nil {
		return targets[0]
	}
	return best
}

// resize makes the serving set as large as def asks: instances beyond it
// retire (kept for until, the config that had them, if a failed reload
// may put them back); new slots get the instance that retires from them,
// if a config that did not take over put it back, or a new one started in
// place (a failure to start is a crash of the slot).
func (s *service) resize(def *Process, until *App) {
	n := def.count
	for len(s.slots) > n {
		slot := len(s.slots) - 1
		in := s.slots[slot]
		s.slots = s.slots[:slot]
		s.forgetSlot(slot)
		if in != nil {
			s.log().Info("instances went down: the instance retires", zap.Int("instance", slot), zap.Int("instances", n), zap.Int("pid", in.getPID()))
			s.retire(in, until, fmt.Sprintf("instances went down to %d", n))
		}
	}
	for len(s.slots) < n {
		slot := len(s.slots)
		s.slots = append(s.slots, nil)
		if s.job != nil || !s.mayStart(transition) {
			continue // the job fills it, or nothing new starts
		}
		if r := s.retiree(slot, spawnKey(def)); r != nil {
			s.serveAgain(r)
			s.slots[slot] = r
			s.keepPort(r)
			continue
		}
		s.log().Info("instances went up: starting an instance", zap.Int("instance", slot), zap.Int("instances", n))
		s.startOrCrash(def, slot, "starting an added instance failed")
	}
}

// forgetSlot forgets what the service keeps for a slot that is gone: its
// port and its restart.
func (s *service) forgetSlot(slot int) {
	s.cancelRestartOf(slot)
	delete(s.ports, slot)
}

// newPort is a port for an instance started beside another: a new one
// for port auto, never one that a slot of the service keeps for its
// restart.
func (s *service) newPort(def *Process) (int, error) {
	for range 10 {
		port, err := s.w.port(def)
		if err != nil || def.Port != "auto" || !slices.Contains(slices.Collect(maps.Values(s.ports)), port) {
			return port, err
		}
	}
	return s.w.port(def)
}

// retiree is an instance of key that retires from slot, if any: the one
// kept for the config in force, else the newest.
func (s *service) retiree(slot int, key string) *instance {
	var r *instance
	var newest *App
	if len(s.holders) > 0 {
		newest = s.holders[len(s.holders)-1].app
	}
	for _, c := range s.live {
		if c.state == stateRetiring && c.key == key && c.slot == slot && !c.rejected && (r == nil || r.cond.keptFor != newest) {
			r = c
		}
	}
	return r
}
