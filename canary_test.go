package supervise

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The verdict's rule on counts: a release that fails its first requests
// is rejected at once, a good one promoted after a few dozen, a quiet one
// judged at the window's end or, with too little traffic, promoted after
// three windows.
func TestCanaryVerdict(t *testing.T) {
	w := 10 * time.Second
	for _, tc := range []struct {
		name        string
		canary, old canaryCounts
		elapsed     time.Duration
		want        verdict
	}{
		{"fails its first four", canaryCounts{4, 4}, canaryCounts{16, 0}, time.Second, reject},
		{"fails its first three", canaryCounts{3, 3}, canaryCounts{12, 0}, time.Second, judging},
		{"23 of 24 fail", canaryCounts{24, 23}, canaryCounts{96, 0}, time.Second, reject},
		{"28 without a failure", canaryCounts{28, 0}, canaryCounts{112, 0}, time.Second, promote},
		{"27 without a failure", canaryCounts{27, 0}, canaryCounts{108, 0}, time.Second, judging},
		{"as noisy as the old one", canaryCounts{200, 10}, canaryCounts{800, 40}, time.Second, promote},
		// (within the rule's tolerance of 15 points or 3×)
		{"twice as noisy as the old one, at the end", canaryCounts{100, 10}, canaryCounts{400, 20}, w, promote},
		{"four times as noisy as the old one", canaryCounts{100, 20}, canaryCounts{400, 20}, time.Second, reject},
		{"one failure in 40, at the end", canaryCounts{40, 1}, canaryCounts{160, 0}, w, promote},
		{"quiet, at the end", canaryCounts{5, 0}, canaryCounts{20, 0}, w, judging},
		{"quiet, after three windows", canaryCounts{5, 0}, canaryCounts{20, 0}, 3 * w, promoteQuiet},
		{"quiet but failing", canaryCounts{4, 3}, canaryCounts{16, 0}, 3 * w, reject},
		{"quiet, one failure in three", canaryCounts{3, 1}, canaryCounts{12, 0}, 3 * w, promoteQuiet},
		{"nothing at all", canaryCounts{}, canaryCounts{}, 3 * w, promoteQuiet},
		// the old release has served nothing (down, or the canary took all)
		{"fails five, the old has no requests", canaryCounts{5, 5}, canaryCounts{}, time.Second, reject},
		{"fails 20 of 20 at the end, the old has none", canaryCounts{20, 20}, canaryCounts{}, w, reject},
		{"quiet and failing, the old has none", canaryCounts{5, 5}, canaryCounts{}, 3 * w, reject},
	} {
		if got := judge(tc.canary, tc.old, tc.elapsed, w); got != tc.want {
			t.Errorf("%s: %s (score %.2f), want %s", tc.name, got, canaryScore(tc.canary, tc.old), tc.want)
		}
	}
	if got := canaryReason(reject, canaryCounts{24, 23}, canaryCounts{96, 0}); got != "rejected: 23 of 24 requests failed (5xx or no answer) on the new release vs 0 of 96 on the old" {
		t.Errorf("reason: %q", got)
	}
}

// The rule's error rates, by replaying releases of known failure rates
// (seeded): a share of 20% on the new release, the old one failing at its
// own rate, a verdict checked after every request as the engine does.
// Bad releases are rejected, almost always within a handful of requests;
// good ones, as noisy as the old, are almost never rejected.
func TestCanaryVerdictRates(t *testing.T) {
	const runs = 20000
	w := 10 * time.Second
	for _, tc := range []struct {
		name          string
		newRate, old  float64
		maxRejected   float64 // share of runs
		minRejected   float64
		maxCostMedian int64 // failed requests on the new release before a rejection, median
	}{
		{"every request fails", 1, 0, 1, 1, 4},
		{"half fail", 0.5, 0, 1, 0.999, 4},
		{"a fifth fail, the old none", 0.2, 0, 1, 0.95, 4},
		{"good, no noise", 0, 0, 0, 0, 0},
		{"good, as noisy as the old (1%)", 0.01, 0.01, 0.01, 0, 0},
		{"good, as noisy as the old (5%)", 0.05, 0.05, 0.02, 0, 0},
	} {
		rng := rand.New(rand.NewPCG(1, uint64(tc.newRate*1000)))
		rejected := 0
		var costs []int64
		for range runs {
			var canary, old canaryCounts
			var v verdict
			// 50 requests a second in all: a request every 20 ms
			for i := 0; v == judging; i++ {
				elapsed := time.Duration(i) * 20 * time.Millisecond
				if rng.Float64() < 0.2 {
					canary.Requests++
					if rng.Float64() < tc.newRate {
						canary.Failed++
					}
				} else {
					old.Requests++
					if rng.Float64() < tc.old {
						old.Failed++
					}
				}
				v = judge(canary, old, elapsed, w)
			}
			if v == reject {
				rejected++
				costs = append(costs, canary.Failed)
			}
		}
		share := float64(rejected) / runs
		if share > tc.maxRejected || share < tc.minRejected {
			t.Errorf("%s: %.4f of the runs rejected, want within [%.4f, %.4f]", tc.name, share, tc.minRejected, tc.maxRejected)
		}
		if len(costs) > 0 && tc.maxCostMedian > 0 {
			slices.Sort(costs)
			if m := costs[len(costs)/2]; m > tc.maxCostMedian {
				t.Errorf("%s: a rejection cost %d failed requests (median), want at most %d", tc.name, m, tc.maxCostMedian)
			}
		}
		t.Logf("%s: %.4f rejected", tc.name, share)
	}
}
