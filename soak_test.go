// Tests against a real Caddy binary and real processes: Linux only.

//go:build linux

package supervise

// The randomized transition soak (issue 18): a real Caddy serving a real
// app under load, through random sequences of every transition and fault,
// with the engine's invariants checked after every step. The go test run
// takes a short one (SUPERVISE_SOAK_STEPS steps per variant, default 10);
// scripts/bench.sh a long one. SUPERVISE_SOAK_SEED repeats a run.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// soakVariants are the ways a process can be replaced, each with
// `restart on_failure` so that the soak's kills restart it and Caddy
// stays: blue/green (`port auto` + `ready http`: new instances start
// beside the old one), a fixed port (`ready tcp`: the old instance stops
// first) and a socket Caddy holds (`ready http` through it: the old
// instance stops first, connections wait in the socket's queue), and a
// pool of three blue/green instances (`instances 3`: every replacement is
// a roll).
var soakVariants = []string{"blue-green", "fixed-port", "socket", "pool"}

// soakPool is the pool variant's `instances`.
const soakPool = 3

func TestSoak(t *testing.T) {
	steps := envInt(t, "SUPERVISE_SOAK_STEPS", 10)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SUPERVISE_SOAK_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SUPERVISE_SOAK_SEED %q: %v", v, err)
		}
		seed = n
	}
	app := os.Getenv("SUPERVISE_SOAK_APP") // "puma" for Debian's Puma
	for i, variant := range soakVariants {
		t.Run(variant, func(t *testing.T) {
			st := newSoak(t, variant, app, seed+uint64(i))
			st.run(steps)
		})
	}
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s %q: %v", name, v, err)
	}
	return n
}

// soak is one soak run.
type soak struct {
	t        *testing.T
	variant  string
	app      string
	seed     uint64
	rng      *rand.Rand
	c        *caddyProc
	cfg      map[string]any
	httpPort int
	appPort  int
	release  string // the release the config runs
	pool     int    // the pool variant's instances in the config
	n        int    // releases made
	loads    []*load
	busy     net.Listener
	log      []string // the steps so far
	killed   int      // failed requests that were inside an instance the soak killed or stopped
	errLines int      // Caddy's failed-request log lines counted as killed
}

func newSoak(t *testing.T, variant, app string, seed uint64) *soak {
	st := &soak{t: t, variant: variant, app: app, seed: seed, rng: rand.New(rand.NewPCG(seed, seed>>1)),
		httpPort: freePort(t), appPort: freePort(t), pool: soakPool}
	t.Logf("seed %d (SUPERVISE_SOAK_SEED=%d repeats this variant's run)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("soak %s failed with seed %d after the steps:\n%s", variant, seed, strings.Join(st.log, "\n"))
		}
	})
	if app == "puma" {
		needPuma(t)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	st.busy = busy
	st.release = st.nextRelease()
	st.cfg = st.config(st.release, false)
	st.c = startCaddy(t, st.cfg)
	st.c.waitLog(`"to":"ready"`, 30*time.Second)
	url := fmt.Sprintf("http://127.0.0.1:%d/sleep?d=20ms", st.httpPort)
	slowURL := fmt.Sprintf("http://127.0.0.1:%d/sleep?d=800ms", st.httpPort)
	if app == "puma" {
		url, slowURL = fmt.Sprintf("http://127.0.0.1:%d/?ms=20", st.httpPort), fmt.Sprintf("http://127.0.0.1:%d/?ms=800", st.httpPort)
	}
	st.loads = []*load{startLoad(url, 15), startLoad(slowURL, 1)} // 16 clients; the slow one keeps old configs busy
	for _, l := range st.loads {
		l.waitOK(t, 1, 30*time.Second)
		l.churn.Store(true) // reloads swap Caddy's listener (see serveUnderLoad)
	}
	return st
}

func (st *soak) nextRelease() string {
	st.n++
	return "v" + strconv.Itoa(st.n)
}

// config is the config with the process at release; busy adds a site on a
// port that is in use, so that the http app fails to start.
func (st *soak) config(release string, busy bool) map[string]any {
	script := `case "$RELEASE" in broken*) echo "boom: $RELEASE"; exit 3;; esac; exec "$UPSTREAM" -delay 200ms`
	env := map[string]string{"RELEASE": release, "UPSTREAM": upstreamBin}
	dir := ""
	if st.app == "puma" {
		script = `case "$RELEASE" in broken*) echo "boom: $RELEASE"; exit 3;; esac; exec puma -t 16:16 -e production "$@" config.ru`
		env = map[string]string{"RELEASE": release, "BOOT_DELAY": "1"}
		dir, _ = filepath.Abs("testdata/puma")
	}
	proc := map[string]any{"name": "web", "command": []string{"sh", "-c", script, "sh"}, "restart": "on_failure",
		"stop_timeout": "3s", "ready_timeout": "10s", "env": env}
	if dir != "" {
		proc["dir"] = dir
	}
	switch st.variant {
	case "blue-green":
		proc["port"], proc["ready"] = "auto", map[string]any{"http": ""}
	case "pool":
		proc["port"], proc["ready"], proc["instances"] = "auto", map[string]any{"http": ""}, st.pool
	case "fixed-port":
		proc["port"], proc["ready"] = strconv.Itoa(st.appPort), map[string]any{"tcp": ""}
	case "socket":
		proc["socket"], proc["ready"] = fmt.Sprintf("127.0.0.1:%d", st.appPort), map[string]any{"http": ""}
		if st.app == "puma" {
			proc["command"] = append(proc["command"].([]string), "--bind-to-activated-sockets", "only")
		}
	}
	if st.app == "puma" && st.variant != "socket" {
		proc["command"] = append(proc["command"].([]string), "-b", "tcp://127.0.0.1:{supervise.port}")
	}
	cfg := proxyToSupervised(st.t, st.httpPort, "web", proc)
	// with supervise_streams before the proxy, as the configs this module
	// generates have it: every request goes through it
	route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv"].(map[string]any)["routes"].([]any)[0].(map[string]any)
	route["handle"] = append([]any{map[string]any{"handler": "supervise_streams"}}, route["handle"].([]any)...)
	if st.cfg != nil {
		cfg["admin"] = st.cfg["admin"]
	}
	if busy {
		servers := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
		servers["busy"] = map[string]any{"listen": []string{st.busy.Addr().String()}}
	}
	return cfg
}

// failures are the failed requests so far: the load's, and Caddy's log of
// failed requests.
func (st *soak) failures() (load, logged int) {
	for _, l := range st.loads {
		l.count(func(s *loadStats) { load += len(s.failures) })
	}
	return load, len(st.c.logs.lines(`"http.log.error"`))
}

// step names a step and checks, after it, the invariants; a step that
// kills or stops an instance on purpose counts the requests that were
// inside it as killed.
func (st *soak) step(name string, killsInFlight bool, do func()) {
	st.t.Helper()
	st.log = append(st.log, name)
	loadBefore, loggedBefore := st.failures()
	do()
	st.settle()
	loadAfter, loggedAfter := st.failures()
	if killsInFlight {
		st.killed += loadAfter - loadBefore
		st.errLines += loggedAfter - loggedBefore
		return
	}
	if loadAfter != loadBefore || loggedAfter != loggedBefore {
		var last []string
		for _, l := range st.loads {
			l.count(func(s *loadStats) { last = append(last, s.failures[max(0, len(s.failures)-3):]...) })
		}
		st.t.Fatalf("step %q: %d requests failed (%d logged by Caddy); last: %q", name, loadAfter-loadBefore, loggedAfter-loggedBefore, last)
	}
}

// status is the admin API's status of the process.
func (st *soak) status() Status { return status(st.t, st.cfg, "web") }

// settle waits until the process serves with its instances (one, or the
// pool's) and nothing else of it runs, then checks the invariants: each
// serving instance runs the config's release; the admin API, /metrics and
// the dynamic upstream name the same PIDs; no process of Caddy's but those
// (and the keeper) runs; Caddy runs.
func (st *soak) settle() {
	t := st.t
	t.Helper()
	want := 1
	if st.variant == "pool" {
		want = st.pool
	}
	deadline := time.Now().Add(30 * time.Second)
	var s Status
	var pids []int
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		select {
		case <-st.c.done:
			t.Fatalf("Caddy exited")
		default:
		}
		s = st.status()
		pids = nil
		for _, in := range s.Instances {
			if in.Serving && in.State == stateReady {
				pids = append(pids, in.PID)
			}
		}
		if s.State == stateReady && len(s.Instances) == want && len(pids) == want && slices.Contains(pids, s.PID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process did not settle to %d ready instances: %+v", want, s)
		}
		time.Sleep(wait) // a state the admin API reports: polled, with a deadline
	}
	slices.Sort(pids)
	for _, pid := range pids {
		if env := procEnv(t, pid); env["RELEASE"] != st.release {
			t.Fatalf("the serving instance %d runs release %q, the config %q", pid, env["RELEASE"], st.release)
		}
	}
	for series, want := range map[string]float64{
		`caddy_supervise_process_up{name="web"}`:                 1,
		`caddy_supervise_process_ready{name="web"}`:              1,
		`caddy_supervise_process_start_time_seconds{name="web"}`: float64(s.StartedAt.UnixNano()) / 1e9,
	} {
		if got := metricValue(t, st.cfg, series); got != want {
			t.Fatalf("%s = %v, want %v (status %+v)", series, got, want, s)
		}
	}
	if pid := st.upstreamPID(); !slices.Contains(pids, pid) {
		t.Fatalf("the dynamic upstream reached pid %d, the admin API says %v", pid, pids)
	}
	if kids := descendants(st.c.cmd.Process.Pid); !slices.Equal(kids, pids) {
		t.Fatalf("Caddy's processes %v, want the serving instances %v alone", kids, pids)
	}
}

// upstreamPID asks the app through Caddy which PID answers.
func (st *soak) upstreamPID() int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", st.httpPort))
	if err != nil {
		st.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var pid int
	if st.app == "puma" {
		fmt.Sscanf(string(body), "pid %d", &pid)
	} else {
		fmt.Sscanf(string(body), "hello from upstream pid %d", &pid)
	}
	if resp.StatusCode != 200 || pid == 0 {
		st.t.Fatalf("GET /: %s %q", resp.Status, body)
	}
	return pid
}

// descendants are the live processes under pid, but the keeper.
func descendants(pid int) []int {
	var out []int
	for _, kid := range childrenOf(pid) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid))
		if bytes.HasPrefix(cmdline, []byte("caddy-supervise-keeper\x00")) || isZombie(kid) {
			continue
		}
		out = append(out, kid)
		out = append(out, descendants(kid)...)
	}
	slices.Sort(out)
	return out
}

// reload loads cfg and reports whether it took.
func (st *soak) reload(cfg map[string]any) (bool, string) {
	code, body := st.c.tryLoad(st.t, cfg)
	return code == 200, body
}

// run makes steps random steps, then stops Caddy at a random moment.
func (st *soak) run(steps int) {
	t := st.t
	type action struct {
		weight int
		name   string
		do     func()
	}
	actions := []action{
		{3, "reload with a changed release", func() {
			next := st.nextRelease()
			if ok, body := st.reload(st.config(next, false)); !ok {
				t.Fatalf("reload to %s: %s", next, body)
			}
			st.release = next
		}},
		{1, "reload, unchanged", func() { st.c.forceLoad(t, st.config(st.release, false)) }},
		{2, "reload of a broken release", func() {
			if ok, body := st.reload(st.config("broken-"+st.nextRelease(), false)); ok || !strings.Contains(body, "boom") {
				t.Fatalf("a broken release: %v %s", ok, body)
			}
		}},
		{2, "reload that fails elsewhere (a busy port)", func() {
			if ok, body := st.reload(st.config(st.nextRelease(), true)); ok {
				t.Fatalf("a reload onto a busy port took: %s", body)
			}
		}},
		{3, "admin restart", func() {
			if code := adminDo(t, st.cfg, "POST", "/supervise/web/restart", nil); code != 200 {
				t.Fatalf("admin restart: %d", code)
			}
		}},
		{2, "SIGSTOP, then SIGCONT within stop_timeout", func() {
			pid := st.status().PID
			syscall.Kill(pid, syscall.SIGSTOP)
			time.Sleep(time.Duration(100+st.rng.IntN(400)) * time.Millisecond) // how long it hangs: the point of the step
			syscall.Kill(pid, syscall.SIGCONT)
		}},
	}
	kills := []action{
		{2, "SIGKILL of the serving instance", func() {
			restarts := len(st.c.logs.lines(`"msg":"restarting process"`)) // before the kill: its restart may be logged at once
			if err := syscall.Kill(st.status().PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			st.c.waitLogCount(`"msg":"restarting process"`, restarts+1, 10*time.Second)
		}},
		{2, "SIGKILL of a new instance while it boots (admin restart)", func() { st.killCandidate(false) }},
		{1, "SIGKILL of a new instance while it boots (reload)", func() { st.killCandidate(true) }},
	}
	if st.variant == "pool" {
		actions = append(actions, action{2, "reload that changes only instances", func() {
			st.pool = 5 - st.pool // 3 ↔ 2
			if ok, body := st.reload(st.config(st.release, false)); !ok {
				t.Fatalf("reload to %d instances: %s", st.pool, body)
			}
		}})
	}
	if st.variant == "blue-green" || st.variant == "pool" {
		kills = append(kills, action{2, "SIGKILL of a retiring instance", st.killRetiring},
			action{2, "SIGKILL of the serving instance while a new one boots beside it", st.killServingDuringRestart})
	}
	pick := func(list []action) action {
		total := 0
		for _, a := range list {
			total += a.weight
		}
		n := st.rng.IntN(total)
		for _, a := range list {
			if n -= a.weight; n < 0 {
				return a
			}
		}
		return list[0]
	}
	began := time.Now()
	for i := range steps {
		if st.rng.IntN(4) == 0 {
			a := pick(kills)
			st.step(fmt.Sprintf("%d: %s", i, a.name), true, a.do)
		} else {
			a := pick(actions)
			st.step(fmt.Sprintf("%d: %s", i, a.name), false, a.do)
		}
	}
	st.finish(began, steps)
}

// killCandidate starts an admin restart (or a reload) and SIGKILLs its new
// instance as it boots: the transition fails, and the old instance serves
// on (beside), or the old definition starts again (in place).
func (st *soak) killCandidate(reload bool) {
	t := st.t
	starts := len(st.c.logs.lines(`"msg":"process started"`))
	transitions := len(st.c.logs.lines(`"msg":"starting a new instance"`))
	next := st.nextRelease()
	answer := make(chan bool, 1)
	go func() {
		if reload {
			ok, _ := st.reload(st.config(next, false))
			answer <- ok
			return
		}
		answer <- adminDo(t, st.cfg, "POST", "/supervise/web/restart", nil) == 200
	}()
	st.c.waitLogCount(`"msg":"starting a new instance"`, transitions+1, 10*time.Second)
	line := st.c.waitLogCount(`"msg":"process started"`, starts+1, 10*time.Second)
	syscall.Kill(logPID(t, line), syscall.SIGKILL)
	if ok := <-answer; ok {
		// it was ready before the kill landed: then it served, and was killed
		// as the serving instance
		if reload {
			st.release = next
		}
		st.c.waitLogCount(`"msg":"process started"`, starts+2, 10*time.Second)
	}
}

// killServingDuringRestart starts an admin restart and, while its new
// instance boots beside the old one, SIGKILLs the old one: the new one takes
// over once ready (or the old one's restart serves), and nothing is left.
func (st *soak) killServingDuringRestart() {
	t := st.t
	serving := st.status().PID
	transitions := len(st.c.logs.lines(`"msg":"starting a new instance"`))
	answer := make(chan int, 1)
	go func() { answer <- adminDo(t, st.cfg, "POST", "/supervise/web/restart", nil) }()
	st.c.waitLogCount(`"msg":"starting a new instance"`, transitions+1, 10*time.Second)
	syscall.Kill(serving, syscall.SIGKILL)
	<-answer // either way: the new instance serves, or the restarted old one does
}

// killRetiring makes a blue/green reload and SIGKILLs the old instance
// while it finishes the old config's requests.
func (st *soak) killRetiring() {
	t := st.t
	next := st.nextRelease()
	if ok, body := st.reload(st.config(next, false)); !ok {
		t.Fatalf("reload to %s: %s", next, body)
	}
	st.release = next
	for _, in := range st.status().Instances {
		if in.State == stateRetiring {
			syscall.Kill(in.PID, syscall.SIGKILL)
		}
	}
}

// finish stops Caddy at a random moment: idle, during an admin restart, or
// during a reload; Caddy exits 0, and nothing it started is left.
func (st *soak) finish(began time.Time, steps int) {
	t := st.t
	during := []string{"idle", "an admin restart", "a reload"}[st.rng.IntN(3)]
	st.log = append(st.log, "SIGTERM, "+during)
	transitions := len(st.c.logs.lines(`"msg":"starting a new instance"`))
	switch during {
	case "an admin restart":
		go adminDo(t, st.cfg, "POST", "/supervise/web/restart", nil)
		st.c.waitLogCount(`"msg":"starting a new instance"`, transitions+1, 10*time.Second)
	case "a reload":
		cfg := st.config(st.nextRelease(), false)
		var buf bytes.Buffer
		json.NewEncoder(&buf).Encode(cfg)
		go http.Post("http://"+st.cfg["admin"].(map[string]any)["listen"].(string)+"/load", "application/json", &buf)
		st.c.waitLogCount(`"msg":"starting a new instance"`, transitions+1, 10*time.Second)
	}
	loadBefore, loggedBefore := st.failures()
	st.c.signal(syscall.SIGTERM)
	if code := st.c.wait(30 * time.Second); code != 0 {
		t.Errorf("caddy exit code %d", code)
	}
	loadAfter, loggedAfter := st.failures()
	ok := 0
	for _, l := range st.loads {
		ok += l.stop().ok
	}
	if loadAfter != loadBefore || loggedAfter != loggedBefore {
		t.Errorf("the exit (%s): %d requests failed, %d logged by Caddy", during, loadAfter-loadBefore, loggedAfter-loggedBefore)
	}
	runID := strconv.Itoa(os.Getpid())
	left := markedProcesses(runID)
	for deadline := time.Now().Add(2 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = markedProcesses(runID) {
		time.Sleep(20 * time.Millisecond) // the keeper exits a moment after Caddy
	}
	if len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	t.Logf("%s: %d steps in %s, %d requests ok, %d failed inside instances the soak killed or stopped (%d logged by Caddy), 0 others",
		st.variant, steps, time.Since(began).Round(time.Second), ok, st.killed, st.errLines)
}
