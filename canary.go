package supervise

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The canary's verdict (issue 31): during a deploy's window, the new
// release takes a share of the requests beside the old one, and the
// verdict compares how their requests ended (see outcome; a request that
// has gone canaryOverdue without an answer counts as failed: see
// sampleOverdue). The rule is
// Wald's sequential probability ratio test on the new release's failure
// rate, a failure being a 5xx or no answer:
//
//   - the acceptable rate p0 is the old release's own over the same
//     window (so that a site whose requests fail now and then for reasons
//     of their own does not fail every deploy), counted with one failure
//     more — a cautious estimate while the old release has served few
//     requests, which keeps the noise of a good release's first requests
//     from rejecting it — at least 1% and at most 30% (an old release
//     without requests, or failing more, still leaves a bad one rejected
//     after five failures);
//   - the rejected rate p1 is max(p0 + 15 points, 3 × p0), at most 99%:
//     a release that fails 50% of its requests, or every one, is far
//     above it;
//   - each request on the new release adds log(p1/p0) when it failed and
//     log((1−p1)/(1−p0)) when it did not; the verdict is "reject" once the
//     sum reaches log((1−β)/α) and "promote" once it falls to
//     log(β/(1−α)), with α = β = 1% (the chances, under the two rates, of
//     promoting a bad release and rejecting a good one). A release that
//     fails every request is rejected after about four of them, not at
//     the end of the window; a good one is promoted after a few dozen (28
//     without a failure, against an old release without one), and no
//     sooner than minCanaryRequests.
//   - the window's end, when neither came: with at least
//     minCanaryRequests on the new release, a sum past half the rejecting
//     bound rejects and any other promotes; with fewer, the window goes on
//     up to three windows (at least the window and canaryOverdue: a
//     release that hangs has time to show it), then the same half bound
//     rejects, and so does
//     a release that failed every request it got (one of one, against an
//     old release that fails often), and anything else is promoted with
//     "not enough traffic to judge" (a site nobody visits is not hurt by
//     its canary).
//
// Replayed with releases of known failure rates (TestCanaryVerdictRates,
// a share of 20%): every request failing or half of them, always
// rejected, after 4 failed requests (median); a fifth failing against an
// old release without failures, 99.8% rejected; a good release as noisy as
// the old (1%, 5%), rejected 0.1% and 1.6% of the time.
//
// The rule is a function of the counts alone, so that the engine's
// simulation and its tests can replay it.

// canaryCounts are the requests that ended on one release during the
// window, and how many of them failed (5xx, or no answer).
type canaryCounts struct {
	Requests int64 `json:"requests"`
	Failed   int64 `json:"failed"`
}

// verdict is the canary's decision so far.
type verdict uint8

const (
	judging      verdict = iota // not clear yet: the window goes on
	promote                     // the new release is good
	reject                      // the new release fails more than the old
	promoteQuiet                // too little traffic to judge, for too long: promoted
)

const (
	minCanaryRequests = 20   // at the window's end, fewer than this on the new release is too few to judge
	canaryAlpha       = 0.01 // the chance of promoting a release that fails at p1
	canaryBeta        = 0.01 // the chance of rejecting a release that fails at p0
	canaryExtend      = 3    // a quiet window goes on up to this many windows
)

func (v verdict) String() string {
	switch v {
	case promote:
		return "promoted"
	case reject:
		return "rejected"
	case promoteQuiet:
		return "promoted (not enough traffic to judge)"
	}
	return "judging"
}

// canaryRates are the acceptable and rejected failure rates, given the old
// release's counts.
func canaryRates(old canaryCounts) (p0, p1 float64) {
	p0 = (float64(old.Failed) + 1) / (float64(old.Requests) + 1)
	p0 = min(max(p0, 0.01), 0.3)
	p1 = min(max(p0+0.15, 3*p0), 0.99)
	return p0, p1
}

// canaryScore is the log-likelihood ratio of "the new release fails at p1"
// against "at p0", over its counts.
func canaryScore(canary, old canaryCounts) float64 {
	p0, p1 := canaryRates(old)
	ok := canary.Requests - canary.Failed
	return float64(canary.Failed)*math.Log(p1/p0) + float64(ok)*math.Log((1-p1)/(1-p0))
}

// judge returns the verdict after elapsed of a window: a clear verdict as
// soon as the evidence is, the window's end's otherwise.
func judge(canary, old canaryCounts, elapsed, window time.Duration) verdict {
	score := canaryScore(canary, old)
	switch {
	case score >= math.Log((1-canaryBeta)/canaryAlpha):
		return reject
	case score <= math.Log(canaryBeta/(1-canaryAlpha)) && canary.Requests >= minCanaryRequests:
		return promote
	case elapsed < window, canary.Requests < minCanaryRequests && elapsed < canaryBound(window):
		return judging
	case score >= math.Log((1-canaryBeta)/canaryAlpha)/2, canary.Failed > 0 && canary.Failed == canary.Requests:
		return reject
	case canary.Requests >= minCanaryRequests:
		return promote
	}
	return promoteQuiet
}

// canaryReason says why, with the figures, as the log and a rejected
// deploy's error give it.
func canaryReason(v verdict, canary, old canaryCounts) string {
	return fmt.Sprintf("%s: %d of %d requests failed (5xx or no answer) on the new release vs %d of %d on the old",
		v, canary.Failed, canary.Requests, old.Failed, old.Requests)
}

// Canary is a process's canary for its deploys (Process.Canary).
type Canary struct {
	// Share is the percentage of new requests that go to the new release
	// during the window, between 1 and 50 (the old release keeps the rest,
	// which the verdict compares it with). Default: 10.
	Share int `json:"share,omitempty"`

	// Window is how long the new release takes its share before the
	// verdict, which comes sooner when the evidence is clear. A window
	// with fewer than 20 requests on the new release goes on, up to three
	// windows, then promotes it ("not enough traffic to judge"). A reload
	// waits for the verdict (Caddy loads one config at a time). Default:
	// `30s`.
	Window Duration `json:"window,omitempty"`
}

// Canary defaults.
const (
	DefaultCanaryShare  = 10
	DefaultCanaryWindow = 30 * time.Second
	maxCanaryShare      = 50
)

// provisionCanary checks the canary's options; that a dynamic upstream
// names the process is checked with the config (checkCanaries).
func (p *Process) provisionCanary() error {
	c := p.Canary
	if c == nil {
		return nil
	}
	switch {
	case c.Share < 0 || c.Share > maxCanaryShare:
		return fmt.Errorf("canary share %d%%: must be between 1%% and %d%% (the old release keeps the rest, and the verdict compares the two)", c.Share, maxCanaryShare)
	case c.Window < 0:
		return fmt.Errorf("canary window %q: must be positive", c.Window)
	case p.Socket != "":
		return fmt.Errorf("canary: not with socket %q: one socket has one queue, which cannot be split between two releases; use port auto", p.Socket)
	case !p.blueGreen():
		return fmt.Errorf("canary: needs port auto and a readiness probe (port %q): the new release runs beside the old one, once ready", p.Port)
	}
	if c.Share == 0 {
		c.Share = DefaultCanaryShare
	}
	if c.Window == 0 {
		c.Window = Duration(DefaultCanaryWindow)
	}
	return nil
}

// checkCanaries checks, once the config's http app is provisioned, that a
// dynamic upstream sends requests to each process with a canary: the
// canary's share is chosen there, and nothing else would send it any.
func (a *App) checkCanaries(named map[string]bool) error {
	for _, p := range a.Processes {
		if p.Canary != nil && !named[p.Name] {
			return fmt.Errorf("process %q: canary: needs a reverse_proxy with `dynamic supervise %s` in this config: the new release's share of requests is chosen there (a fixed upstream address would send it nothing)", p.Name, p.Name)
		}
	}
	return nil
}

// ---- the canary's window in a deploy (see replace.go) ----
//
// The rules, in one place:
//
//   - Which deploys: a reload that changes the definition, an admin
//     restart, and a pool's roll, of a definition with a canary, replaced
//     beside the old one, while an old instance serves (there is something
//     to compare with, and to fall back to). The window opens once the
//     first batch's new instances are all ready; later batches of the roll
//     follow without one. A recycle, a health failure's replacement, a
//     put-back, and a reload that adds the process have none.
//   - During the window the new instances are ready but outside the
//     serving set: the dynamic upstream sends them `share` of the new
//     requests (a client that carries the window's cookie stays on its
//     release), the old ones serve the rest. Nothing else changes: the
//     old instances' crash restarts, health checks and limits apply; a
//     second reload or an admin restart waits for the job, as for any
//     deploy.
//   - The verdict (judge) is taken every canaryCheckEvery, and at once by
//     the admin API's promote or abort. Promoted: the batch switches as
//     without a canary, and the roll goes on. Rejected: the new instances
//     retire — their requests in flight finish, their streams end at once
//     (clients reconnect to the old release) — the old ones serve on, and
//     the deploy fails with the verdict's figures. A new instance that
//     exits during the window rejects its release.
//   - Caddy's exit during the window calls it off: the deploy fails at
//     once, the new instances retire, the old ones serve the drain (they
//     served most requests, and are the release in force).

// canaryCheckEvery is how often the verdict is taken during a window.
const canaryCheckEvery = 50 * time.Millisecond

// calledOff is the verdict of a window that ended without one: Caddy's
// exit, the process leaving the config.
const calledOff verdict = 100

// canaryWindow is a deploy's canary in progress. Set when it opens, then
// read only (by the loop, the admin API and the metrics): the counts are
// the instances' own atomics.
type canaryWindow struct {
	def      *Canary
	id       string // the window's cookie value prefix: a cookie of another window means nothing
	cookie   string // the cookie's name
	began    time.Time
	cands    []*instance
	olds     []*instance // the old release's instances that served when it opened
	base     [][numOutcomes]int64
	checking timer

	// requests that have no answer after canaryOverdue(window), counted as
	// failed (a release that hangs answers nothing): the loop's figures
	samples    []canarySample
	overdueNew atomic.Int64
	overdueOld atomic.Int64
}

// canarySample is how many requests had begun to wait for each release's
// status at a check.
type canarySample struct {
	at            time.Time
	sentNew, sent int64 // new release, old release
}

// canaryOverdue is how long a request of the window may go without an
// answer before it counts as failed.
const canaryOverdue = 10 * time.Second

// canaryBound is how long a window may last at most: three windows, and
// at least one and canaryOverdue (a release that hangs has time to show it).
func canaryBound(window time.Duration) time.Duration {
	return max(canaryExtend*window, window+canaryOverdue)
}

// canaryView is what the dynamic upstream needs of an open window.
type canaryView struct {
	w       *canaryWindow
	targets []*instance // its new instances that serve
}

// counts are the window's figures so far: the new release's requests,
// and the old one's since the window opened.
func (w *canaryWindow) counts() (canary, old canaryCounts) {
	add := func(c *canaryCounts, in *instance, base [numOutcomes]int64) {
		ok := in.outcomes[answered].Load() - base[answered]
		failed := in.outcomes[serverError].Load() - base[serverError] + in.outcomes[noAnswer].Load() - base[noAnswer]
		c.Requests += ok + failed
		c.Failed += failed
	}
	for _, in := range w.cands {
		add(&canary, in, [numOutcomes]int64{})
	}
	for i, in := range w.olds {
		add(&old, in, w.base[i])
	}
	n, o := w.overdueNew.Load(), w.overdueOld.Load()
	canary.Requests, canary.Failed = canary.Requests+n, canary.Failed+n
	old.Requests, old.Failed = old.Requests+o, old.Failed+o
	return canary, old
}

// sampleOverdue counts, at a check, the requests of each release that
// have waited canaryOverdue or longer for their response's status: at
// least those that had begun to wait by then (awaited, at the latest
// sample that old), less all that got a status or ended since (answered,
// now). A response that streams for long, or a stream, has its status: it
// is not waiting.
func (w *canaryWindow) sampleOverdue(now time.Time) {
	total := func(ins []*instance) (awaited, answered int64) {
		for _, in := range ins {
			awaited += in.awaited.Load()
			answered += in.answered.Load()
		}
		return awaited, answered
	}
	awaitedNew, answeredNew := total(w.cands)
	awaited, answered := total(w.olds)
	w.samples = append(w.samples, canarySample{now, awaitedNew, awaited})
	due := now.Add(-canaryOverdue)
	i := 0
	for i+1 < len(w.samples) && !w.samples[i+1].at.After(due) {
		i++
	}
	w.samples = w.samples[i:] // (the first is the latest at or before due, if any)
	if then := w.samples[0]; !then.at.After(due) {
		w.overdueNew.Store(max(0, then.sentNew-answeredNew))
		w.overdueOld.Store(max(0, then.sent-answered))
	}
}

// canaryDue reports whether the job's batch, all ready, opens a window
// rather than switching.
func (s *service) canaryDue() bool {
	j := s.job
	return j.def.Canary != nil && j.canary == nil && !j.canaryDone && j.done == 0 && j.beside && !j.adds && !j.exitMode &&
		(j.kind == reloadJob || j.kind == restartJob) && slices.ContainsFunc(s.slots, func(in *instance) bool { return in != nil && in.serves() })
}

// openCanary opens the window: the batch's new instances take their share.
func (s *service) openCanary() {
	j := s.job
	w := &canaryWindow{def: j.def.Canary, began: s.w.now(), cookie: canaryCookieName(s.name)}
	w.id = strconv.FormatInt(w.began.UnixNano(), 36)
	for _, st := range j.steps {
		st.cand.canary, st.cand.servedCanary = true, true
		w.cands = append(w.cands, st.cand)
	}
	for _, in := range s.slots {
		if in != nil && in.serves() {
			w.olds = append(w.olds, in)
			var b [numOutcomes]int64
			for o := range numOutcomes {
				b[o] = in.outcomes[o].Load()
			}
			w.base = append(w.base, b)
		}
	}
	j.canary = w
	s.canaryLast = nil
	openWindows.Add(1)
	s.log().Info("canary window opens: the new release takes a share of new requests before the verdict",
		zap.String("why", j.why), zap.Ints("new_pids", pidsOf(w.cands)), zap.Ints("old_pids", pidsOf(w.olds)),
		zap.Int("share_percent", w.def.Share), zap.Duration("window", time.Duration(w.def.Window)))
	w.checking = s.w.after(s, canaryCheckEvery, canaryCheck{w})
}

func pidsOf(ins []*instance) []int {
	pids := make([]int, len(ins))
	for i, in := range ins {
		pids[i] = in.getPID()
	}
	return pids
}

// canaryCheck: time to take the window's verdict.
type canaryCheck struct{ w *canaryWindow }

// canaryEv: the admin API ends the window by hand.
type canaryEv struct {
	promote bool
	reply   chan error
}

// checkCanary takes the verdict of the window that runs, if ev is its.
func (s *service) checkCanary(ev canaryCheck) {
	j := s.job
	if j == nil || j.canary != ev.w {
		return
	}
	w := ev.w
	w.sampleOverdue(s.w.now())
	canary, old := w.counts()
	v := judge(canary, old, s.w.now().Sub(w.began), time.Duration(w.def.Window))
	if v == judging {
		w.checking = s.w.after(s, canaryCheckEvery, canaryCheck{w})
		return
	}
	s.endCanary(v, "rule", canaryReason(v, canary, old))
}

// adminCanary ends the window by hand.
func (s *service) adminCanary(ev canaryEv) {
	j := s.job
	if j == nil || j.canary == nil {
		ev.reply <- fmt.Errorf("process %q: no canary window is open: %w", s.name, errNotRunning)
		return
	}
	canary, old := j.canary.counts()
	v, what := reject, "aborted through the admin API"
	if ev.promote {
		v, what = promote, "promoted through the admin API"
	}
	s.log().Info("canary window ended through the admin API", zap.Bool("promote", ev.promote))
	s.endCanary(v, "admin", fmt.Sprintf("%s: %d of %d requests failed (5xx or no answer) on the new release vs %d of %d on the old",
		what, canary.Failed, canary.Requests, old.Failed, old.Requests))
	ev.reply <- nil
}

// endCanary closes the window with verdict v: the switch goes on, or the
// release retires and the deploy fails.
func (s *service) endCanary(v verdict, by, reason string) {
	j := s.job
	if v == reject && !s.oldWillServe() {
		// rejecting would leave nothing to serve (the old instances ended
		// for good during the window), and end the process
		v, by = promote, "engine"
		reason = "the old release no longer serves and will not restart, so the new one takes over despite its verdict (" + reason + ")"
	}
	s.closeCanary(v, by, reason)
	switch v {
	case promote, promoteQuiet:
		s.stepDone()
	case reject:
		j.fail(s, j.steps[0], fmt.Errorf("process %q: release rejected by its canary (%s)", s.name, reason))
	}
}

// oldWillServe reports whether an old instance serves, or will by itself
// (it starts again, or a crash restart is due).
func (s *service) oldWillServe() bool {
	return slices.ContainsFunc(s.slots, func(in *instance) bool { return in != nil && in.live() }) || len(s.backoff.due) > 0
}

// closeCanary ends the window that runs with verdict v, and keeps it for
// the admin API, the metrics and the log.
func (s *service) closeCanary(v verdict, by, reason string) {
	j := s.job
	w := j.canary
	j.canary, j.canaryDone = nil, true
	openWindows.Add(-1)
	if w.checking != nil {
		w.checking.Stop()
	}
	canary, old := w.counts()
	now := s.w.now()
	s.canaryLast = &CanaryStatus{State: v.state(), Reason: reason, By: by, Share: w.def.Share, Window: w.def.Window,
		Began: w.began, Ended: &now, PIDs: pidsOf(w.cands), New: canary, Old: old}
	if s.history.canaries == nil {
		s.history.canaries = make(map[string]int)
	}
	s.history.canaries[v.state()]++
	for _, in := range w.cands {
		in.canary = false
	}
	switch v {
	case promote, promoteQuiet:
		s.log().Info("canary verdict: the new release takes over", zap.String("verdict", reason), zap.Ints("new_pids", pidsOf(w.cands)))
	case calledOff:
		s.log().Warn("canary window called off; the old release serves on", zap.String("why", reason), zap.Ints("new_pids", pidsOf(w.cands)))
	default:
		s.log().Warn("canary verdict: the new release is rejected; the old one serves on", zap.String("verdict", reason), zap.Ints("new_pids", pidsOf(w.cands)))
	}
}

// dropCandidate ends a new instance the job will not switch to: one that
// served a canary's share retires (its requests in flight finish, its
// streams end at once: see retire), any other stops. A window still open
// is called off.
func (s *service) dropCandidate(in *instance, why string) {
	if s.job != nil && s.job.canary != nil {
		s.closeCanary(calledOff, "engine", why)
	}
	if in.state == stateRetiring {
		return // (it leaves already)
	}
	if in.servedCanary && in.state == stateReady {
		in.rejected = true
		s.retire(in, nil, why)
		return
	}
	s.stopInstance(in, why)
}

// state is the verdict's name in the admin API and the metrics.
func (v verdict) state() string {
	switch v {
	case promote:
		return "promoted"
	case promoteQuiet:
		return "promoted_quiet"
	case reject:
		return "rejected"
	case calledOff:
		return "called_off"
	}
	return "judging"
}

// CanaryStatus is a process's canary in the admin API: the window in
// progress, or the last verdict.
type CanaryStatus struct {
	// State is `judging` while the window lasts, then the verdict:
	// `promoted`, `promoted_quiet` (not enough traffic to judge, after
	// three windows), `rejected`, or `called_off` (Caddy's exit, or the
	// deploy ended otherwise).
	State string `json:"state"`
	// Reason is why, with the figures.
	Reason string `json:"reason,omitempty"`
	// By is who decided: `rule`, `admin`, or `engine` (called off).
	By string `json:"by,omitempty"`
	// Share is the new release's share of new requests, in percent.
	Share int `json:"share_percent"`
	// Window is the window's length (a quiet one lasts up to three).
	Window Duration   `json:"window"`
	Began  time.Time  `json:"began"`
	Ended  *time.Time `json:"ended,omitempty"`
	// PIDs are the new release's instances.
	PIDs []int `json:"pids"`
	// New and Old are the requests that ended on each release during the
	// window, and how many of them failed (5xx or no answer).
	New canaryCounts `json:"new"`
	Old canaryCounts `json:"old"`
}

// canaryStatus is the window in progress, with its figures now.
func (w *canaryWindow) status() *CanaryStatus {
	canary, old := w.counts()
	return &CanaryStatus{State: judging.state(), Share: w.def.Share, Window: w.def.Window, Began: w.began, PIDs: pidsOf(w.cands), New: canary, Old: old}
}

// canaryCookieName is the cookie that keeps a client on one release
// during a window of the process: a cookie name is a token, so other
// characters of the process's name become '_', and a hash of the name
// follows.
func canaryCookieName(name string) string {
	b := []byte("supervise_canary_" + name)
	changed := false
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			b[i], changed = '_', true
		}
	}
	if changed { // (two names that differ there get two cookies)
		h := fnv.New32a()
		h.Write([]byte(name))
		b = fmt.Appendf(b, "_%08x", h.Sum32())
	}
	return string(b)
}

// ---- the window on a request's path (dynamic upstream, supervise_streams) ----

// choose is where a request goes during the window: to the release its
// cookie names, else to the new one with the share's chance, with the
// cookie that keeps its client there; a retry of an attempt that failed
// on the new release, and a request sent again (see resendable), to the
// old one. Without supervise_streams in front, no cookie is set: each
// request is drawn on its own.
func (c *canaryView) choose(r *http.Request, st *stream, old []*instance) ([]*instance, bool) {
	var onNew, drawn bool
	switch ck := cookieValue(r, c.w.cookie); {
	case st != nil && (st.onCanary || st.replayed):
		// a retry: the new release failed it; its client goes to the old one
		st.setCookie = strings.Replace(st.setCookie, ".n;", ".o;", 1)
	case ck == c.w.id+".n":
		onNew = true
	case ck == c.w.id+".o":
	default:
		onNew, drawn = rand.Uint32N(100) < uint32(c.w.def.Share), true
	}
	if onNew && st != nil && st.entry == nil && !st.replayed && safeMethod(r.Method) {
		// a GET that reached supervise_streams before the window opened
		// (or with a body) could not be sent again if the new release
		// failed it: the old release takes it
		onNew, drawn = false, false
	}
	if len(old) == 0 {
		onNew = true // (the old instances crashed meanwhile: what serves, serves)
	}
	if drawn && st != nil {
		side := "o"
		if onNew {
			side = "n"
		}
		secure := ""
		if r.TLS != nil {
			secure = "; Secure"
		}
		maxAge := int(canaryBound(time.Duration(c.w.def.Window))/time.Second) + 1
		st.setCookie = fmt.Sprintf("%s=%s.%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax%s", c.w.cookie, c.w.id, side, maxAge, secure)
	}
	if onNew {
		return c.targets, true
	}
	return old, false
}

// cookieValue is the value of the request's cookie name, "" if none.
func cookieValue(r *http.Request, name string) string {
	if _, has := r.Header["Cookie"]; !has {
		return ""
	}
	c, err := r.Cookie(name)
	if err != nil {
		return ""
	}
	return c.Value
}

// openWindows counts the canary windows open in this Caddy: while there
// is one, supervise_streams keeps each safe request as it came in, to send
// it again if the new release fails it (see keepForResend).
var openWindows atomic.Int64

// keepForResend keeps what a second pass of r needs — r as it reached
// supervise_streams, the response's headers, the route groups and the
// request's variables then — while a canary window is open, if r may be
// sent again: a safe method (GET, HEAD, OPTIONS) without a body (one of
// unknown length — HTTP/3 gives every request one — only if the first
// attempt read it to its end and found nothing).
func (st *stream) keepForResend(r *http.Request) {
	if openWindows.Load() == 0 || r.ContentLength > 0 || !safeMethod(r.Method) {
		return
	}
	if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		st.body = &countedBody{ReadCloser: r.Body}
		r.Body = st.body
	}
	e := &entryState{req: r, url: r.URL, urlWas: *r.URL, header: r.Header, headerWas: r.Header.Clone(),
		method: r.Method, host: r.Host, requestURI: r.RequestURI, response: st.Header().Clone()}
	if groups, ok := r.Context().Value(caddy.CtxKey("route_group")).(map[string]struct{}); ok {
		e.groups = maps.Clone(groups)
	}
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		e.vars = maps.Clone(vars)
	}
	st.entry = e
}

// entryState is a request as it reached supervise_streams. The handlers
// after it change the request in place (a rewrite changes its URL, which
// Caddy's placeholders read too), so a second pass puts it back in place.
type entryState struct {
	req                      *http.Request
	url                      *url.URL
	urlWas                   url.URL
	header, headerWas        http.Header
	method, host, requestURI string
	response                 http.Header
	groups                   map[string]struct{}
	vars                     map[string]any
}

// safeMethod reports whether a request of this method may be sent twice,
// and is not an upload: GET, HEAD, OPTIONS.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// countedBody tells whether a request's body of unknown length was read
// to its end without a byte (the transport may read it on a goroutine of
// its own).
type countedBody struct {
	io.ReadCloser
	read  atomic.Int64
	empty atomic.Bool // it ended, and nothing was read
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.read.Add(int64(n)) == 0 && err == io.EOF {
		b.empty.Store(true)
	}
	return n, err
}

// attemptOnCanary: reverse_proxy's attempt that begins goes to the new
// release of a canary window (onNew), or not. An attempt there of a request
// kept for a resend may be taken back (see WriteHeader) if it answers 5xx
// or not at all.
func (st *stream) attemptOnCanary(onNew bool) {
	st.onCanary = onNew
	st.armed = onNew && st.entry != nil && !st.replayed && st.status == 0
}

// mustResend reports whether the attempt that ended went to a canary's new
// release, which answered 5xx (the response was held back) or not at all,
// for a request that may be sent again and whose client still waits.
func (st *stream) mustResend(err error) bool {
	return st.armed && (st.heldBack || err != nil && st.status == 0) && st.ctx.Context.Err() == nil &&
		!st.ended.Load() && st.kind == notStream && (st.body == nil || st.body.empty.Load())
}

// heldBackError is what the client gets for a 5xx of the new release that
// was held back and could not be sent again (the client went away, or a
// body was read): the status, as Caddy's error, and the response's headers
// as they were before the attempt.
func (st *stream) heldBackError() error {
	h := st.Header()
	clear(h)
	maps.Copy(h, st.entry.response)
	st.heldBack = false
	return caddyhttp.Error(st.heldCode, fmt.Errorf("the new release of a canary window answered %d, and the request could not be sent again", st.heldCode))
}

// sendAgain puts the request back as it reached supervise_streams, for a
// second pass to the old release, with the response, the route groups
// and the request's variables as they were then (a copy of them: Caddy's
// variables are a plain map, which a dial of the first attempt, still
// running in the transport's background, may read while reverse_proxy
// writes it again), and the time the request waited for the app so far.
func (st *stream) sendAgain() *http.Request {
	e := st.entry
	h := st.Header()
	clear(h)
	maps.Copy(h, e.response)
	*e.url = e.urlWas
	clear(e.header)
	maps.Copy(e.header, e.headerWas)
	r := e.req
	r.URL, r.Header, r.Method, r.Host, r.RequestURI = e.url, e.header, e.method, e.host, e.requestURI
	st.armed, st.heldBack, st.status, st.replayed = false, false, 0, true
	// a client drawn for the new release goes to the old one, as this
	// request does
	st.setCookie = strings.Replace(st.setCookie, ".n;", ".o;", 1)
	ctx := context.Context(&st.ctx)
	if e.groups != nil {
		ctx = context.WithValue(ctx, caddy.CtxKey("route_group"), maps.Clone(e.groups))
	}
	if e.vars != nil {
		vars := maps.Clone(e.vars)
		if now, ok := st.ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
			for k, v := range now { // (read only: a dial may read it too)
				if strings.HasPrefix(k, "supervise.waited.") {
					vars[k] = v
				}
			}
		}
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, vars)
	}
	return r.WithContext(ctx)
}
