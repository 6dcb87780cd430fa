// Tests against real processes: Linux only.

//go:build linux

package supervise

// In-process tests of the lifecycle engine at the seams a real Caddy
// reaches only within microseconds: configs (Apps, as Caddy's Start and
// Stop drive them) and Caddy's exit state are played by the test; the
// processes are real.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// playCaddy makes the engine see Caddy's process state as the test sets
// it: running, with a config active.
func playCaddy(t *testing.T) {
	testCaddy.exiting.Store(false)
	testCaddy.active.Store(true)
	testCaddy.set.Store(true)
	t.Cleanup(func() { testCaddy.set.Store(false) })
}

// testApp is a config with the given processes, provisioned, as Caddy's
// Provision leaves it (without HTTP servers, unless the test says).
func testApp(t *testing.T, logger *zap.Logger, defs ...*Process) *App {
	t.Helper()
	a := &App{Processes: defs, logger: logger, started: make(chan struct{}), drained: make(chan struct{}), link: &configLink{}}
	for i, d := range defs {
		if err := d.provision(i); err != nil {
			t.Fatal(err)
		}
	}
	a.link.app = a
	return a
}

// webDef is the example upstream as a process, reporting to s.
func webDef(s *sink, name, release string, blueGreen bool) *Process {
	d := &Process{Name: name, Command: []string{upstreamBin, "-events", s.addr()}, Env: map[string]string{"RELEASE": release},
		Restart: RestartOnFailure, StopTimeout: Duration(2 * time.Second)}
	d.Port = "auto"
	if blueGreen {
		d.Ready = &ReadyProbe{HTTP: ptr("")}
	}
	return d
}

// inLoop runs f in the loop of service s, between two events.
func inLoop(s *service, f func(s *service)) {
	done := make(chan struct{})
	if s.post(func(s *service) { f(s); close(done) }) {
		<-done
	}
}

// uniqueName is a process name no other test uses.
func uniqueName(base string) string { return fmt.Sprintf("%s-%d", base, testServices.Add(1)) }

// SIGTERM as a reload that kept a process finishes: Caddy stops the old
// config (not the last: the new one is active) and then the new one. The
// process is signalled after the new config's servers drained, not when
// the old config's did (issue 18, defect 2a).
func TestExitAfterReloadDrainsTheNewConfig(t *testing.T) {
	playCaddy(t)
	s := newSink(t)
	logger, w := newLogWatch()
	name := uniqueName("web")
	a := testApp(t, logger, webDef(s, name, "v1", false))
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	up := s.next(t, 10*time.Second)
	b := testApp(t, logger, webDef(s, name, "v1", false))
	b.hasHTTP = true // its servers drain until the test says
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	w.wait(t, "process kept running across config change", 1, 5*time.Second)

	testCaddy.exiting.Store(true) // SIGTERM
	a.Stop()                      // the old config, while the new one is active
	testCaddy.active.Store(false)
	began := time.Now()
	b.Stop() // the last config: the exit sequence
	w.wait(t, "Caddy is exiting: the process serves until the drain is over", 1, 5*time.Second)
	select {
	case e := <-up.events:
		t.Fatalf("the process got %+v before the new config's servers drained", e)
	case <-time.After(300 * time.Millisecond): // it serves on: nothing to await but time
	}
	b.endDrain("the test's servers drained")
	sig := up.expect(t, "signal", 5*time.Second)
	if sig.time().Before(began) {
		t.Errorf("signalled at %v, before the exit began", sig.time())
	}
	up.dead(t, 5*time.Second)
	<-serviceDone(name)
}

// serviceDone is the done channel of the service of name, or a closed one.
func serviceDone(name string) <-chan struct{} {
	if s := serviceNamed(name); s != nil {
		return s.done
	}
	c := make(chan struct{})
	close(c)
	return c
}

// SIGTERM as a reload fails elsewhere after supervise replaced a process
// beside the old one: Caddy stops the new config while the old one is
// active. The old instance serves again, for the old config's drain (issue
// 18, defect 2b).
func TestExitAfterFailedReloadPutsTheOldInstanceBack(t *testing.T) {
	playCaddy(t)
	s := newSink(t)
	logger, w := newLogWatch()
	name := uniqueName("web")
	a := testApp(t, logger, webDef(s, name, "v1", true))
	a.hasHTTP = true
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	v1 := s.next(t, 10*time.Second)
	w.wait(t, "process state", 2, 10*time.Second) // starting, ready
	b := testApp(t, logger, webDef(s, name, "v2", true))
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	v2 := s.next(t, 10*time.Second)
	if st := serviceNamed(name).view.Load().status; st.PID != v2.pid {
		t.Fatalf("after the new config's start: %+v, want the new instance %d", st, v2.pid)
	}

	testCaddy.exiting.Store(true) // SIGTERM; the http app fails to start
	b.Stop()                      // the failed config, while the old one is active
	w.wait(t, "the new config did not take over: the old instance serves on", 1, 5*time.Second)
	v2.expect(t, "signal", 5*time.Second)
	v := serviceNamed(name).view.Load()
	if v.status.PID != v1.pid || v.status.State != stateReady || len(v.addrs) != 1 || v.addrs[0] != v1.addr {
		t.Errorf("after the failed config's stop: %+v %v, want the old instance %d ready at %s", v.status, v.addrs, v1.pid, v1.addr)
	}
	testCaddy.active.Store(false)
	a.Stop()
	a.endDrain("the test's servers drained")
	v1.expect(t, "signal", 5*time.Second)
	<-serviceDone(name)
}

// A config's Stop, or Caddy's final stop of every process, that comes
// while an admin restart replaces the process, or right after the start:
// the service ends, nothing is left running, no config stays a holder
// (issue 18, defect 5).
func TestStopDuringTransitionsLeavesNothing(t *testing.T) {
	playCaddy(t)
	s := newSink(t)
	for i := range 10 {
		logger, _ := newLogWatch()
		name := uniqueName("web")
		a := testApp(t, logger, webDef(s, name, "v1", i%2 == 0))
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		svc := serviceNamed(name)
		var wg sync.WaitGroup
		wg.Go(func() {
			reply := make(chan restartAnswer, 1)
			if svc.post(restartEv{reply: reply}) {
				<-reply
			}
		})
		if i%3 == 0 {
			svc.post(stopAllEv{reason: "Caddy is exiting"}) // waitForChildren
		} else {
			a.Stop()
		}
		wg.Wait()
		select {
		case <-svc.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the service did not end: %+v", i, svc.view.Load().status)
		}
		if left := markedProcesses(strconv.Itoa(os.Getpid())); len(left) > 0 {
			t.Fatalf("round %d: processes left: %v", i, left)
		}
	}
}

// Requests that wait for a process never miss the moment it becomes
// ready: each waiting reader gets the address as soon as the instance is
// ready again, however many wait (issue 18, defect 4: a reader could read
// the state and the change channel at two moments, and then wait for the
// whole `wait` for an instance that was already ready).
func TestUpstreamNeverMissesReady(t *testing.T) {
	playCaddy(t)
	logger, _ := newLogWatch()
	name := uniqueName("sleeper")
	a := testApp(t, logger, &Process{Name: name, Command: []string{"sleep", "60"}, Port: "auto", Ready: &ReadyProbe{Off: true}, Restart: RestartAlways, StopTimeout: Duration(time.Second)})
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	svc := serviceNamed(name)
	u := &Upstreams{Name: name, Wait: Duration(20 * time.Second), ctx: caddy.Context{Context: context.Background()}, link: a.link}
	req, _ := http.NewRequest("GET", "/", nil)
	for round, backoff := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second} {
		// kill it, and wait until it is restarting: the readers wait
		inLoop(svc, func(s *service) { _ = s.slots[0].signal(syscall.SIGKILL) })
		for v := svc.view.Load(); len(v.addrs) > 0 || !v.pending; v = svc.view.Load() {
			<-v.changed
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var slowest time.Duration
		for range 50 {
			wg.Go(func() {
				began := time.Now()
				if v, _ := u.readyTargets(req); v == nil || len(v.targets) == 0 {
					t.Errorf("round %d: no address", round)
				}
				mu.Lock()
				slowest = max(slowest, time.Since(began))
				mu.Unlock()
			})
		}
		wg.Wait()
		if slowest > backoff+time.Second {
			t.Errorf("round %d: a reader waited %s through a restart back-off of %s", round, slowest, backoff)
		}
	}
}
