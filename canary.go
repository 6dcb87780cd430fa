package supervise

import (
	"fmt"
	"math"
	"time"
)

// The canary's verdict (issue 31): during a deploy's window, the new
// release takes a share of the requests beside the old one, and the
// verdict compares how their requests ended (see outcome). The rule is
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
//     up to three windows, then the same half bound rejects, and anything
//     else is promoted with "not enough traffic to judge" (a site nobody
//     visits is not hurt by its canary).
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
	case elapsed < window, canary.Requests < minCanaryRequests && elapsed < canaryExtend*window:
		return judging
	case score >= math.Log((1-canaryBeta)/canaryAlpha)/2:
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
