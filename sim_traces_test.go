package supervise

// The schedules the simulation found defects with (issue 29, R1–R5), kept
// as scripted traces: a seed stops reproducing its schedule once the engine
// or the generator changes, a script does not. Each runs in the simulated
// world with fixed fates and actions at fixed moments, with every
// invariant checked after every event, and failed on the engine before its
// fix — but for those that say they guard a change. (The real-process
// twins of R1–R5 are in sequences_test.go.)

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// simScript is a scripted run: processes behave as fate says, and each
// action runs at its moment.
type simScript struct {
	fate    func(s *sim, in *instance) simFate
	actions []simAction
	checkAt time.Duration              // when check runs, then SIGTERM
	check   func(t *testing.T, s *sim) // what must hold then
}

type simAction struct {
	at time.Duration
	do func(s *sim)
}

// runScript runs a script, then SIGTERM, through Caddy's exit.
func runScript(t *testing.T, sc simScript) *sim {
	t.Helper()
	s := newSim(1)
	s.tracing, s.noLoad = true, true
	s.fate = func(in *instance) simFate { return sc.fate(s, in) }
	base := s.now
	for _, a := range sc.actions {
		s.at(base.Add(a.at), "script", func() { a.do(s) })
	}
	s.at(base.Add(sc.checkAt), "script: the end", func() {
		if sc.check != nil {
			sc.check(t, s)
		}
		s.sigterm()
	})
	s.run(1_000_000)
	if s.violation == "" {
		s.finalChecks()
	}
	if s.violation != "" {
		t.Errorf("%s\n%s", s.violation, strings.Join(s.trace, "\n"))
	}
	return s
}

// load loads a config of these processes (provisioned).
func (s *sim) loadDefs(failsElsewhere bool, defs ...*Process) {
	a := &App{Processes: defs, logger: s.logger(), started: make(chan struct{}), drained: make(chan struct{}), link: &configLink{}}
	for i, d := range defs {
		if err := d.provision(i); err != nil {
			panic(fmt.Sprintf("sim: provisioning %s: %v", d.Name, err))
		}
	}
	s.caddy.gens++
	s.reload(&simConfig{gen: s.caddy.gens, app: a, failsElsewhere: failsElsewhere})
}

// scriptWeb is a web process on port auto with a probe, of a release.
func scriptWeb(release string, extra func(p *Process)) *Process {
	p := &Process{Name: "web", Command: []string{"sh", "-c", "exec app"}, Env: map[string]string{"RELEASE": release},
		Port: "auto", Ready: &ReadyProbe{HTTP: ptr("/up")}, ReadyTimeout: Duration(20 * time.Second),
		DrainTimeout: Duration(30 * time.Second), StopTimeout: Duration(2 * time.Second), StreamDrainTimeout: Duration(5 * time.Minute)}
	if extra != nil {
		extra(p)
	}
	return p
}

// scriptJobs is a worker of a release (no port), with a TCP probe that
// waits up to readyTimeout if readyTimeout > 0.
func scriptJobs(release string, readyTimeout time.Duration) *Process {
	p := &Process{Name: "jobs", Command: []string{"sh", "-c", "exec jobs"}, Env: map[string]string{"RELEASE": release}}
	if readyTimeout > 0 {
		p.Ready, p.ReadyTimeout = &ReadyProbe{TCP: ptr("127.0.0.1:9")}, Duration(readyTimeout)
	}
	return p
}

// boots: a release boots in a second, unless the sim has an outage or the
// release is "broken".
func boots(s *sim, in *instance) simFate {
	if s.outage || strings.HasPrefix(in.def.Env["RELEASE"], "broken") {
		return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
	}
	return simFate{boot: time.Second}
}

// serving is the instance of web in slot, or nil.
func (s *sim) serving(slot int) *instance {
	if svc := s.svcs["web"]; svc != nil && slot < len(svc.slots) {
		return svc.slots[slot]
	}
	return nil
}

// R1: a recycle (max_lifetime) that fails, the release unable to boot
// then; the instance hangs afterwards: its health check still runs and
// catches it.
func TestSimTraceFailedRecycleKeepsHealthChecks(t *testing.T) {
	var hung *instance
	runScript(t, simScript{
		fate: boots,
		actions: []simAction{
			{0, func(s *sim) {
				s.loadDefs(false, scriptWeb("v1", func(p *Process) {
					p.Health, p.MaxLifetime = &HealthCheck{}, Duration(5*time.Second)
				}))
			}},
			{4 * time.Second, func(s *sim) { s.outage = true }},
			{8 * time.Second, func(s *sim) {
				hung = s.serving(0)
				s.hangProc(s.procs[hung])
			}},
			{60 * time.Second, func(s *sim) { s.outage = false }},
		},
		checkAt: 120 * time.Second,
		check: func(t *testing.T, s *sim) {
			if hung.cond.unhealthy == "" || !s.procs[hung].exited || hung.result.code != 137 {
				t.Errorf("the hung instance was not caught by its health check (unhealthy %q), replaced and killed (%s)", hung.cond.unhealthy, hung.result.how)
			}
		},
	})
}

// R2: a pool's reload rolls to v2 and fails elsewhere; v1 cannot boot
// then: the put-back is tried again until it can, and v1 serves again.
func TestSimTraceFailedPutBackIsRetried(t *testing.T) {
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) { p.Instances = 2 })
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v1" && s.outage {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			{5 * time.Second, func(s *sim) { s.outage = true; s.loadDefs(true, pool("v2")) }},
			{20 * time.Second, func(s *sim) { s.outage = false }},
		},
		checkAt: 60 * time.Second,
		check: func(t *testing.T, s *sim) {
			svc := s.svcs["web"]
			for i, in := range svc.slots {
				if in == nil || in.def.Env["RELEASE"] != "v1" || in.state != stateReady {
					t.Errorf("slot %d does not serve v1 again: %v", i, in)
				}
			}
		},
	})
}

// R3: a roll waits for the old instances of the previous one; when the
// last ordinary request of one that keeps its streams ends, the roll goes
// on at once (checkWakeUps fails a lost wake-up).
func TestSimTraceRollWakesWhenOnlyStreamsAreLeft(t *testing.T) {
	rollWaitsForOldInstances(t, func(s *sim, in *instance) {
		s.hold(in, false, 6*time.Second) // a slow request
	})
}

// rollWaitsForOldInstances: a pool of 2 (roll_batch 2) serves a stream on
// each instance, and what second does; a restart, then another, which
// waits for the first one's old instances: it must go on before their
// drain_timeout, once they serve only streams.
func rollWaitsForOldInstances(t *testing.T, second func(s *sim, in *instance)) {
	t.Helper()
	runScript(t, simScript{
		fate: boots,
		actions: []simAction{
			{0, func(s *sim) {
				s.loadDefs(false, scriptWeb("v1", func(p *Process) { p.Instances, p.RollBatch = 2, 2 }))
			}},
			{3 * time.Second, func(s *sim) {
				for slot := range 2 {
					s.hold(s.serving(slot), true, 10*time.Minute) // a stream
					second(s, s.serving(slot))
				}
				s.restart("web")
			}},
			{5 * time.Second, func(s *sim) { s.restart("web") }}, // waits for the old ones
		},
		checkAt: 15 * time.Second, // (drain_timeout: 30 s)
		check: func(t *testing.T, s *sim) {
			if j := s.svcs["web"].job; j != nil {
				t.Errorf("the second restart still runs (%s): it did not go on when the old instances served only streams", jobKindName(j.kind))
			}
		},
	})
}

// R4: the serving instance dies while its replacement boots beside it,
// with restart never and on_end stop_caddy: the booting instance is the
// process still alive, and nothing ends.
func TestSimTraceOldInstanceDeathDuringBoot(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate { return simFate{boot: 3 * time.Second} },
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptWeb("v1", nil)) }},
			{5 * time.Second, func(s *sim) { s.restart("web") }},
			{6 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
		},
		checkAt: 15 * time.Second,
		check: func(t *testing.T, s *sim) {
			if in := s.serving(0); in == nil || in.state != stateReady {
				t.Errorf("the restart's new instance does not serve: %v", in)
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("the process ended for good: %v", s.ended)
	}
}

// R5: a reload adds a process with a probe that exits before it is ready:
// the reload fails, and its on_end does not apply.
func TestSimTraceReloadAddingABrokenProcess(t *testing.T) {
	s := runScript(t, simScript{
		fate: boots,
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptWeb("v1", nil)) }},
			{5 * time.Second, func(s *sim) {
				jobs := scriptJobs("broken1", 10*time.Second)
				s.loadDefs(false, scriptWeb("v1", nil), jobs)
			}},
		},
		checkAt: 20 * time.Second,
		check: func(t *testing.T, s *sim) {
			if s.svcs["jobs"] != nil {
				t.Errorf("the broken process still has a service")
			}
			if s.caddy.sigterm {
				t.Errorf("Caddy was asked to exit")
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by the long run: a reload adds a pool; its first instance serves,
// then dies for good (restart never) while the second boots, which fails:
// the reload fails, and the process's on_end does not apply.
func TestSimTraceAddedPoolFailsAsAReload(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.slot == 1 {
				return simFate{boot: -1, crash: 4 * time.Second, code: 1}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptJobs("v1", 0)) }},
			{time.Second, func(s *sim) {
				s.loadDefs(false, scriptJobs("v1", 0),
					scriptWeb("v1", func(p *Process) { p.Instances = 2; p.Restart = RestartNever }))
			}},
			{3 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
		},
		checkAt: 20 * time.Second,
		check: func(t *testing.T, s *sim) {
			if s.svcs["web"] != nil || s.caddy.sigterm {
				t.Errorf("the added pool is still there (%v), or Caddy was asked to exit (%v)", s.svcs["web"] != nil, s.caddy.sigterm)
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by the long run: a put-back's roll whose first batch replaces an
// instance that failed its health check waits for nothing — and its next
// batches wait for the old instances again (checkBound).
func TestSimTracePutBackUrgencyIsPerBatch(t *testing.T) {
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) {
			p.Instances = 3
			p.Health = &HealthCheck{Interval: Duration(2 * time.Second), Timeout: Duration(time.Second), Fails: 2}
		})
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v1" && s.outage {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			// v1 cannot boot: the reload to v2 rolls, fails elsewhere, and
			// the put-back of v1 fails
			{3 * time.Second, func(s *sim) { s.outage = true; s.loadDefs(true, pool("v2")) }},
			{12 * time.Second, func(s *sim) {
				for slot := range 3 {
					s.hold(s.serving(slot), false, 40*time.Second) // the v2 instances drain slowly
				}
				s.hangProc(s.procs[s.serving(0)]) // and one hangs
			}},
			{13 * time.Second, func(s *sim) { s.outage = false }},
		},
		checkAt: 120 * time.Second,
		check: func(t *testing.T, s *sim) {
			for i, in := range s.svcs["web"].slots {
				if in == nil || in.def.Env["RELEASE"] != "v1" {
					t.Errorf("slot %d does not serve v1 again", i)
				}
			}
		},
	})
}

// liveOf lists the processes of name that still run in the simulated
// world (whatever the engine believes).
func (s *sim) liveOf(name string) []int {
	var pids []int
	for in, p := range s.procs {
		if in.def.Name == name && !p.exited {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// Found by review: Caddy exits while a reload that adds a process waits
// for its first instance; that instance gets ready as the exit goes on,
// then crashes before the exit stops it. No config holds the process:
// the crash is judged by the definition it ran (it had none to read), and
// its on_end does not apply.
func TestSimTraceCrashOfAnAddedProcessAtExit(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "jobs" {
				return simFate{boot: 3 * time.Second, crash: 5 * time.Second, code: 1}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptWeb("v1", nil)) }},
			{4 * time.Second, func(s *sim) { s.hold(s.serving(0), false, 60*time.Second) }}, // the drain lasts
			{5 * time.Second, func(s *sim) {
				jobs := scriptJobs("v1", 10*time.Second)
				s.loadDefs(false, scriptWeb("v1", nil), jobs)
			}},
			{6 * time.Second, func(s *sim) { s.sigterm() }},
		},
		checkAt: 100 * time.Second,
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by review: a put-back fails (the release in force cannot boot
// now) and waits for its next try, long after an outage; an instance of
// the other definition that serves meanwhile fails its health check: the
// put-back is tried at once, not at its next try.
func TestSimTraceUnhealthyInstanceOfAnotherDefinition(t *testing.T) {
	var hung *instance
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) {
			p.Instances = 2
			p.Health = quickHealth()
		})
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v1" && s.outage {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			// v2 rolls, the reload fails elsewhere, v1 cannot boot: the
			// put-back's tries back off, the next one 30 s away by 42 s
			{5 * time.Second, func(s *sim) { s.outage = true; s.loadDefs(true, pool("v2")) }},
			{42 * time.Second, func(s *sim) { s.outage = false }},
			{43 * time.Second, func(s *sim) {
				hung = s.serving(0)
				s.hangProc(s.procs[hung])
			}},
		},
		checkAt: 52 * time.Second,
		check: func(t *testing.T, s *sim) {
			if !s.procs[hung].exited {
				t.Errorf("the hung v2 instance (pid %d) still runs 9 s after it hung", s.procs[hung].pid)
			}
			if in := s.serving(0); in == nil || in.def.Env["RELEASE"] != "v1" || in.state != stateReady {
				t.Errorf("slot 0 does not serve v1: %v", in)
			}
		},
	})
}

// Guards a change found by review: a failed put-back's next try that falls
// due while a reload rolls waits its turn (the reload may take over) the
// same back-off again; once the reload failed too, the tries go on until
// the release in force serves again.
func TestSimTracePutBackTryDuringAReload(t *testing.T) {
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) { p.Instances = 2 })
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			r := in.def.Env["RELEASE"]
			if r == "v1" && s.outage || r == "v3" && in.slot == 1 {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			{5 * time.Second, func(s *sim) { s.outage = true; s.loadDefs(true, pool("v2")) }},
			{23 * time.Second, func(s *sim) { s.loadDefs(false, pool("v3")) }}, // fails at its second instance
			{8 * time.Second, func(s *sim) { s.outage = false }},
		},
		checkAt: 90 * time.Second,
		check: func(t *testing.T, s *sim) {
			for i, in := range s.svcs["web"].slots {
				if in == nil || in.def.Env["RELEASE"] != "v1" || in.state != stateReady {
					t.Errorf("slot %d does not serve v1 again: %v", i, in)
				}
			}
		},
	})
}

// Found by review: a reload gives web's port to a process it adds; Caddy
// exits before that one starts: the reload fails, and web, whose config
// is the one that drains, comes back to serve the drain.
func TestSimTraceYieldedProcessServesTheExit(t *testing.T) {
	web := &Process{Name: "web", Command: []string{"sh", "-c", "exec app"}, Env: map[string]string{"RELEASE": "v1"},
		Port: "23000", ReadyTimeout: Duration(20 * time.Second), DrainTimeout: Duration(30 * time.Second), StopTimeout: Duration(2 * time.Second)}
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate { return simFate{boot: time.Second} },
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, web) }},
			{3 * time.Second, func(s *sim) { s.hold(s.serving(0), false, 8*time.Second) }}, // web yields once it ends
			{4 * time.Second, func(s *sim) {
				api := &Process{Name: "api", Command: []string{"sh", "-c", "exec api"}, Env: map[string]string{"RELEASE": "v1"},
					Port: "23000", Ready: &ReadyProbe{HTTP: ptr("/up")}, ReadyTimeout: Duration(20 * time.Second)}
				s.loadDefs(false, api)
			}},
			{6 * time.Second, func(s *sim) { s.sigterm() }},
		},
		checkAt: 100 * time.Second,
	})
	exit := slices.IndexFunc(s.trace, func(l string) bool { return strings.Contains(l, "SIGTERM") })
	back := slices.IndexFunc(s.trace, func(l string) bool { return strings.Contains(l, "web: started pid 1002") })
	if exit < 0 || back < exit {
		t.Errorf("web did not come back for the final drain once the reload failed:\n%s", strings.Join(s.trace, "\n"))
	}
}

// Found by review: a pool ended for good (restart never, on_end
// keep_running); a reload starts it again and fails at its second
// instance: the first one, which no config holds, goes with the reload,
// and the process stays ended.
func TestSimTraceEndedPoolStaysEndedWhenAReloadFails(t *testing.T) {
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) { p.Instances = 2; p.Restart = RestartNever; p.OnEnd = OnEndKeepRunning })
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v2" && in.slot == 1 {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			{3 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
			{4 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(1)], 137, "killed by SIGKILL") }},
			{6 * time.Second, func(s *sim) { s.loadDefs(false, pool("v2")) }},
		},
		checkAt: 60 * time.Second,
		check: func(t *testing.T, s *sim) {
			svc := s.svcs["web"]
			if !svc.ended || !svc.empty() {
				t.Errorf("web does not stay ended (ended %v, serving %v)", svc.ended, svc.servingPIDs())
			}
			if pids := s.liveOf("web"); len(pids) > 0 {
				t.Errorf("instances of the failed reload still run: %v", pids)
			}
		},
	})
}

// Guards a change (a reload that adds the process holds it only once all
// of it serves), found by the simulation as it was made: a reload adds a
// pool; its first instance serves, then is killed while the second boots:
// it restarts as the reload's
// release, by its restart policy (no config holds that yet), not as the
// one that had ended.
func TestSimTraceAddedPoolRestartsAsTheReload(t *testing.T) {
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v2" && in.slot == 1 {
				return simFate{boot: 4 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) {
				s.loadDefs(false, scriptWeb("v1", func(p *Process) { p.Restart = RestartNever; p.OnEnd = OnEndKeepRunning }))
			}},
			{3 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
			{5 * time.Second, func(s *sim) {
				s.loadDefs(false, scriptWeb("v2", func(p *Process) { p.Instances, p.Restart = 2, RestartAlways }))
			}},
			{7 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
		},
		checkAt: 30 * time.Second,
		check: func(t *testing.T, s *sim) {
			for i, in := range s.svcs["web"].slots {
				if in == nil || in.def.Env["RELEASE"] != "v2" || in.state != stateReady {
					t.Errorf("slot %d does not serve v2: %v", i, in)
				}
			}
		},
	})
}

// Guards the same change: a reload that adds a pool fails at its last
// instance: those it started go with it (no config holds them).
func TestSimTraceAddedPoolLeavesNothingWhenItFails(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "web" && in.slot == 2 {
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptJobs("v1", 0)) }},
			{time.Second, func(s *sim) {
				s.loadDefs(false, scriptJobs("v1", 0),
					scriptWeb("v1", func(p *Process) { p.Instances = 3 }))
			}},
		},
		checkAt: 40 * time.Second,
		check: func(t *testing.T, s *sim) {
			if s.svcs["web"] != nil {
				t.Errorf("the failed pool still has a service")
			}
			if pids := s.liveOf("web"); len(pids) > 0 {
				t.Errorf("instances of the failed reload still run: %v", pids)
			}
			if s.caddy.sigterm {
				t.Errorf("Caddy was asked to exit")
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by the long run: a roll's batch that waits for the old instances
// of the previous one replaces those of its instances that failed their
// health check at once — alone: the others wait (checkBound).
func TestSimTraceUnhealthyInstanceIsReplacedAlone(t *testing.T) {
	var hung *instance
	runScript(t, simScript{
		fate: boots,
		actions: []simAction{
			{0, func(s *sim) {
				s.loadDefs(false, scriptWeb("v1", func(p *Process) {
					p.Instances, p.RollBatch = 4, 2
					p.Health = quickHealth()
				}))
			}},
			{5 * time.Second, func(s *sim) {
				for slot := range 2 {
					s.hold(s.serving(slot), false, 20*time.Second) // the first batch's old ones drain slowly
				}
				s.restart("web")
			}},
			{5500 * time.Millisecond, func(s *sim) {
				hung = s.serving(2)
				s.hangProc(s.procs[hung])
			}},
		},
		checkAt: 60 * time.Second,
		check: func(t *testing.T, s *sim) {
			if !s.procs[hung].exited {
				t.Errorf("the hung instance (pid %d) still runs", s.procs[hung].pid)
			}
		},
	})
}

// Found by the long run: a reload replaces web and waits for another
// process; web's new instance, which serves, dies for good (restart never)
// while the old one is kept for the old config. If the reload then fails,
// the old release serves again: the process did not end (before, it had
// ended for good, and Caddy exited with on_end stop_caddy).
func TestSimTraceNewReleaseDiesBeforeAFailedReloadIsOver(t *testing.T) {
	s := runScript(t, reloadWhileAnotherBoots(false, func(t *testing.T, s *sim) {
		if in := s.serving(0); in == nil || in.def.Env["RELEASE"] != "v1" {
			t.Errorf("the old release does not serve again: %v", in)
		}
		if s.caddy.sigterm {
			t.Errorf("Caddy was asked to exit")
		}
	}))
	if len(s.ended) > 0 {
		t.Errorf("the process ended for good: %v", s.ended)
	}
}

// The same when the reload takes: then the process has ended for good
// (guards the change above: the end is deferred, not lost).
func TestSimTraceNewReleaseDiesBeforeATakenReloadIsOver(t *testing.T) {
	s := runScript(t, reloadWhileAnotherBoots(true, nil))
	if !slices.Contains(s.ended, "web") {
		t.Errorf("web did not end for good once the reload took: %v", s.ended)
	}
}

// reloadWhileAnotherBoots: web v1 serves; a reload brings web v2 and adds
// jobs, which boots for 5 s (then gets ready, or exits if !ok); web v2
// serves at 6 s and is killed at 7 s.
func reloadWhileAnotherBoots(ok bool, check func(t *testing.T, s *sim)) simScript {
	return simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "jobs" && !ok {
				return simFate{boot: -1, crash: 5 * time.Second, code: 3}
			}
			if in.def.Name == "jobs" {
				return simFate{boot: 5 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptWeb("v1", nil)) }},
			{5 * time.Second, func(s *sim) {
				jobs := scriptJobs("v1", 10*time.Second)
				s.loadDefs(false, scriptWeb("v2", nil), jobs)
			}},
			{7 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
		},
		checkAt: 20 * time.Second,
		check:   check,
	}
}

// addedPool: config 1 runs jobs; config 2 adds web, a pool of two with a
// health check (the roll: slot 0, then slot 1).
func addedPool(s *sim) {
	jobs := scriptJobs("v1", 0)
	s.loadDefs(false, jobs)
	s.at(s.now.Add(5*time.Second), "script", func() {
		s.loadDefs(false, jobs, scriptWeb("v1", func(p *Process) {
			p.Instances = 2
			p.Health = quickHealth()
		}))
	})
}

// Found by review: a reload adds a pool; its first instance serves, then
// fails its health check while the second boots, which then fails: the
// reload fails, and nothing is put back (no config holds the process; the
// put-back's definition was nil).
func TestSimTraceAddedPoolUnhealthyThenFailed(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "web" && in.slot == 1 {
				return simFate{boot: -1, crash: 4 * time.Second, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, addedPool},
			{6500 * time.Millisecond, func(s *sim) { s.hangProc(s.procs[s.serving(0)]) }},
		},
		checkAt: 30 * time.Second,
		check: func(t *testing.T, s *sim) {
			if s.svcs["web"] != nil {
				t.Errorf("web still has a service: %v", s.svcs["web"].servingPIDs())
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by review: Caddy exits while a reload that adds a pool waits for
// its second instance: the first one, which serves, stops with the reload
// (no config holds it: it does not serve the drain).
func TestSimTraceExitDuringAnAddedPoolsRoll(t *testing.T) {
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "web" && in.slot == 1 {
				return simFate{boot: 10 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, addedPool},
			{7 * time.Second, func(s *sim) { s.hold(s.serving(0), false, 20*time.Second) }}, // the drain lasts
		},
		checkAt: 8 * time.Second, // (then SIGTERM)
	})
	if len(s.ended) > 0 {
		t.Errorf("on_end applied: %v", s.ended)
	}
}

// Found by review: a reload adds api on web's fixed port (web yields);
// Caddy exits while api boots: web comes back for the drain only once
// api is gone (the release of api's config waits for it).
func TestSimTraceYieldedPortIsFreeBeforeTheComeback(t *testing.T) {
	web := &Process{Name: "web", Command: []string{"sh", "-c", "exec app"}, Env: map[string]string{"RELEASE": "v1"},
		Port: "23000", ReadyTimeout: Duration(20 * time.Second), DrainTimeout: Duration(30 * time.Second), StopTimeout: Duration(2 * time.Second)}
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "api" {
				return simFate{boot: 10 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, web) }},
			{4 * time.Second, func(s *sim) {
				api := &Process{Name: "api", Command: []string{"sh", "-c", "exec api"}, Env: map[string]string{"RELEASE": "v1"},
					Port: "23000", Ready: &ReadyProbe{HTTP: ptr("/up")}, ReadyTimeout: Duration(20 * time.Second), StopTimeout: Duration(5 * time.Second)}
				s.loadDefs(false, api)
			}},
		},
		checkAt: 7 * time.Second, // (then SIGTERM, while api boots)
	})
	if len(s.ended) > 0 {
		t.Errorf("a process ended for good: %v", s.ended)
	}
}

// Guards a change found by review: as R3, but the last ordinary request
// of an old instance becomes a stream (a WebSocket's upgrade, an SSE
// response's headers) instead of ending: the roll goes on at once too
// (it fails without stream.open's wake-up).
func TestSimTraceRollWakesWhenARequestBecomesAStream(t *testing.T) {
	rollWaitsForOldInstances(t, func(s *sim, in *instance) {
		s.holdOpening(in, true, 6*time.Second, 10*time.Minute) // a stream in 6 s
	})
}

// Found by a sweep (seed 195 077 772): web ended for good; a reload
// starts it again as a pool, which fails at its second instance; the
// first one retires, still finishing a request, when the next reload
// starts web again: the new instance does not take the slot's port,
// which the old one still holds.
func TestSimTraceReaddedProcessGetsAFreePort(t *testing.T) {
	web := func(release string, n Instances) *Process {
		return scriptWeb(release, func(p *Process) { p.Instances, p.Restart, p.OnEnd = n, RestartNever, OnEndKeepRunning })
	}
	jobs := scriptJobs("v1", 0)
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "web" && in.def.Env["RELEASE"] == "v2" && in.slot == 1 {
				return simFate{boot: -1, crash: 4 * time.Second, code: 3}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, jobs, web("v1", 1)) }},
			{3 * time.Second, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }}, // ends for good
			{5 * time.Second, func(s *sim) { s.loadDefs(false, jobs, web("v2", 2)) }},
			{6500 * time.Millisecond, func(s *sim) { s.hold(s.serving(0), false, 20*time.Second) }},
			{11 * time.Second, func(s *sim) { s.loadDefs(false, jobs, web("v3", 1)) }},
		},
		checkAt: 20 * time.Second,
		check: func(t *testing.T, s *sim) {
			if in := s.serving(0); in == nil || in.def.Env["RELEASE"] != "v3" || in.state != stateReady {
				t.Errorf("web v3 does not serve: %v\n%s", in, strings.Join(s.trace, "\n"))
			}
		},
	})
}

// Found by the final review: a reload replaces web and waits for another
// process; an admin restart of web's new release boots when that release's
// instance dies for good, and the restart's instance fails too: the
// process does not end while the old release is kept (the reload may
// fail, and it does: the old release serves again).
func TestSimTraceRestartFailsWhileTheOldReleaseIsKept(t *testing.T) {
	v2 := 0
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			switch {
			case in.def.Name == "jobs":
				return simFate{boot: -1, crash: 10 * time.Second, code: 3}
			case in.def.Env["RELEASE"] == "v2":
				if v2++; v2 > 1 {
					return simFate{boot: -1, crash: time.Second, code: 3} // the restart's
				}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, scriptWeb("v1", nil)) }},
			{5 * time.Second, func(s *sim) {
				jobs := scriptJobs("v1", 20*time.Second)
				s.loadDefs(false, scriptWeb("v2", nil), jobs)
			}},
			{7 * time.Second, func(s *sim) { s.restart("web") }},
			{7500 * time.Millisecond, func(s *sim) { s.exitProc(s.procs[s.serving(0)], 137, "killed by SIGKILL") }},
		},
		checkAt: 30 * time.Second,
		check: func(t *testing.T, s *sim) {
			if in := s.serving(0); in == nil || in.def.Env["RELEASE"] != "v1" {
				t.Errorf("the old release does not serve again: %v", in)
			}
		},
	})
	if len(s.ended) > 0 {
		t.Errorf("the process ended for good: %v", s.ended)
	}
}

// Found by the final review: a put-back (v1, during an outage) falls due
// while a reload's roll (v3) boots its first batch; the reload takes over
// at that batch, then fails at the next: the put-back that fell due is
// not run against v3 (which would start the failed release again).
func TestSimTracePutBackDueDuringARollThatTakesOver(t *testing.T) {
	v3 := 0
	pool := func(release string) *Process {
		return scriptWeb(release, func(p *Process) { p.Instances = 3 })
	}
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			switch r := in.def.Env["RELEASE"]; {
			case r == "v1" && s.outage:
				return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
			case r == "v3":
				if v3++; v3 > 1 {
					return simFate{boot: -1, crash: 300 * time.Millisecond, code: 3}
				}
				return simFate{boot: 12 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, pool("v1")) }},
			{5 * time.Second, func(s *sim) { s.outage = true; s.loadDefs(true, pool("v2")) }},
			{16 * time.Second, func(s *sim) { s.loadDefs(false, pool("v3")) }},
			{45 * time.Second, func(s *sim) { s.outage = false }},
		},
		checkAt: 120 * time.Second,
		check: func(t *testing.T, s *sim) {
			if v3 != 2 {
				t.Errorf("v3 started %d times, want 2 (its roll's first two instances)", v3)
			}
			for i, in := range s.svcs["web"].slots {
				if in == nil || in.def.Env["RELEASE"] != "v1" || in.state != stateReady {
					t.Errorf("slot %d does not serve v1 again: %v", i, in)
				}
			}
		},
	})
}

// Found by the final review: api ended for good (config 1 still holds
// it); a reload starts it again on web's fixed port (web yields); Caddy
// exits while api boots: web comes back for the drain only once api is
// gone.
func TestSimTraceYieldedPortIsFreeAfterAnEndedProcessComesBack(t *testing.T) {
	fixed := func(name, port string, ready bool) *Process {
		p := &Process{Name: name, Command: []string{"sh", "-c", "exec " + name}, Env: map[string]string{"RELEASE": "v1"},
			Port: port, ReadyTimeout: Duration(20 * time.Second), DrainTimeout: Duration(30 * time.Second),
			StopTimeout: Duration(5 * time.Second), Restart: RestartNever, OnEnd: OnEndKeepRunning}
		if ready {
			p.Ready = &ReadyProbe{HTTP: ptr("/up")}
		}
		return p
	}
	s := runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Name == "api" && in.port == 23000 {
				return simFate{boot: 10 * time.Second}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) {
				web := fixed("web", "23000", false)
				web.StopTimeout = Duration(time.Second) // (api starts soon after the yield)
				s.loadDefs(false, web, fixed("api", "24000", false))
			}},
			{2 * time.Second, func(s *sim) { s.exitProc(s.procs[s.svcs["api"].slots[0]], 137, "killed by SIGKILL") }},
			{4 * time.Second, func(s *sim) { s.loadDefs(false, fixed("api", "23000", true)) }},
		},
		checkAt: 7 * time.Second, // (then SIGTERM, while api boots)
	})
	if !slices.Contains(s.ended, "api") || len(s.ended) != 1 {
		t.Errorf("ended: %v, want api alone (at 2 s)", s.ended)
	}
}

// Found by the long run (seed 740 273 313): a reload's roll took over at
// its first batch; an instance of the old release fails its health check
// (a put-back is called for once the roll is over); the roll then fails:
// the put-back waits for Caddy to let the failed config go, instead of
// starting the failing release again. (The same seed then found a health
// replacement that started beside two old instances: an unhealthy
// instance is replaced at once only while at most roll_batch old
// instances are left; that schedule replays with its seed.)
func TestSimTraceUnhealthyOldInstanceDuringAFailingRoll(t *testing.T) {
	v2 := 0
	var hung *instance
	runScript(t, simScript{
		fate: func(s *sim, in *instance) simFate {
			if in.def.Env["RELEASE"] == "v2" {
				if v2++; in.slot == 1 {
					return simFate{boot: -1, crash: 3 * time.Second, code: 3}
				}
			}
			return simFate{boot: time.Second}
		},
		actions: []simAction{
			{0, func(s *sim) { s.loadDefs(false, healthyPool("v1")) }},
			{5 * time.Second, func(s *sim) { s.loadDefs(false, healthyPool("v2")) }},
			{6500 * time.Millisecond, func(s *sim) {
				hung = s.serving(1)
				s.hangProc(s.procs[hung])
			}},
		},
		checkAt: 60 * time.Second,
		check: func(t *testing.T, s *sim) {
			if v2 != 2 {
				t.Errorf("v2 started %d times, want 2 (its roll's first two instances)", v2)
			}
			for i, in := range s.svcs["web"].slots {
				if in == nil || in.def.Env["RELEASE"] != "v1" || in.state != stateReady {
					t.Errorf("slot %d does not serve v1 again: %v", i, in)
				}
			}
			if !s.procs[hung].exited {
				t.Errorf("the hung instance still runs")
			}
		},
	})
}

// quickHealth is a health check that catches a hang in about 2 s.
func quickHealth() *HealthCheck {
	return &HealthCheck{Interval: Duration(time.Second), Timeout: Duration(500 * time.Millisecond), Fails: 2}
}

// healthyPool is web, a pool of 3 with a health check, of a release.
func healthyPool(release string) *Process {
	return scriptWeb(release, func(p *Process) {
		p.Instances = 3
		p.Health = quickHealth()
	})
}
