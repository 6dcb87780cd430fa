package supervise

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes the supervised processes in Caddy's metrics registry
// (the admin endpoint's /metrics, and the `metrics` handler), read from
// their views at each scrape.
type collector struct{}

var (
	descUp        = prometheus.NewDesc("caddy_supervise_process_up", "1 while a child of the process runs.", []string{"name"}, nil)
	descReady     = prometheus.NewDesc("caddy_supervise_process_ready", "1 while the process is ready (its readiness probe passed).", []string{"name"}, nil)
	descRestarts  = prometheus.NewDesc("caddy_supervise_process_restarts_total", "Restarts of the process (restart policy and admin API).", []string{"name"}, nil)
	descExits     = prometheus.NewDesc("caddy_supervise_process_exits_total", "Exits of the process's children, by exit status (128+N: killed by signal N).", []string{"name", "status"}, nil)
	descStartTime = prometheus.NewDesc("caddy_supervise_process_start_time_seconds", "When the current or last child started, in seconds since the epoch.", []string{"name"}, nil)
	descStop      = prometheus.NewDesc("caddy_supervise_process_last_stop_seconds", "How long the last stop took, from the stop signal until the process group was gone.", []string{"name"}, nil)
	descDrain     = prometheus.NewDesc("caddy_supervise_process_last_drain_seconds", "At the last exit of Caddy: how long the process was kept running while Caddy's servers drained.", []string{"name"}, nil)
	descRetired   = prometheus.NewDesc("caddy_supervise_retirements_total", "Instances that left service, by how their retirement ended: idle, streams_closed, drain_timeout, exit.", []string{"name", "outcome"}, nil)
	descStreams   = prometheus.NewDesc("caddy_supervise_instance_streams", "Open streams of an instance (seen by supervise_streams), by kind: websocket, sse.", []string{"name", "pid", "state", "kind"}, nil)
	descMemory    = prometheus.NewDesc("caddy_supervise_instance_memory_bytes", "Resident memory of an instance's process group (Linux).", []string{"name", "pid", "state"}, nil)
	descServing   = prometheus.NewDesc("caddy_supervise_process_instances_serving", "Instances of the process that are ready and in the dynamic upstream.", []string{"name"}, nil)
	descRecycles  = prometheus.NewDesc("caddy_supervise_recycles_total", "Instances replaced by a recycling limit or a failed health check, by reason: max_memory, max_lifetime, max_lifetime_requests, health.", []string{"name", "reason"}, nil)
	descRequests  = prometheus.NewDesc("caddy_supervise_instance_requests_total", "Requests the dynamic upstream sent to an instance.", []string{"name", "pid", "instance"}, nil)
	descCanary    = prometheus.NewDesc("caddy_supervise_canary_verdicts_total", "Canary windows of deploys, by verdict: promoted, promoted_quiet (not enough traffic to judge), rejected, called_off.", []string{"name", "verdict"}, nil)
	descCanaryReq = prometheus.NewDesc("caddy_supervise_canary_requests", "Requests that ended on each release during the canary window in progress, or the last one: release new or old, outcome total or failed (5xx or no answer).", []string{"name", "release", "outcome"}, nil)
	descResponses = prometheus.NewDesc("caddy_supervise_instance_responses_total", "How an instance's requests ended, as supervise_streams saw them: ok (below 500), 5xx, failed (no answer).", []string{"name", "pid", "instance", "outcome"}, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descReady, descRestarts, descExits, descStartTime, descStop, descDrain, descRetired, descStreams, descMemory, descServing, descRecycles, descRequests, descResponses, descCanary, descCanaryReq} {
		ch <- d
	}
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	bit := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, s := range allServices() {
		v, name := s.fresh(), s.name
		m := v.metrics
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, bit(m.up), name)
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, bit(m.ready), name)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(m.restarts), name)
		for status, n := range m.exits {
			ch <- prometheus.MustNewConstMetric(descExits, prometheus.CounterValue, float64(n), name, strconv.Itoa(status))
		}
		if !m.startedAt.IsZero() {
			ch <- prometheus.MustNewConstMetric(descStartTime, prometheus.GaugeValue, float64(m.startedAt.UnixNano())/1e9, name)
		}
		ch <- prometheus.MustNewConstMetric(descStop, prometheus.GaugeValue, m.lastStop.Seconds(), name)
		ch <- prometheus.MustNewConstMetric(descDrain, prometheus.GaugeValue, m.lastDrain.Seconds(), name)
		for outcome, n := range m.retirements {
			ch <- prometheus.MustNewConstMetric(descRetired, prometheus.CounterValue, float64(n), name, outcome)
		}
		ch <- prometheus.MustNewConstMetric(descServing, prometheus.GaugeValue, float64(len(v.targets)), name)
		for reason, n := range m.recycles {
			ch <- prometheus.MustNewConstMetric(descRecycles, prometheus.CounterValue, float64(n), name, reason)
		}
		for verdict, n := range m.canaries {
			ch <- prometheus.MustNewConstMetric(descCanary, prometheus.CounterValue, float64(n), name, verdict)
		}
		status := v.statusNow()
		if c := status.Canary; c != nil {
			for release, n := range map[string]canaryCounts{"new": c.New, "old": c.Old} {
				ch <- prometheus.MustNewConstMetric(descCanaryReq, prometheus.GaugeValue, float64(n.Requests), name, release, "total")
				ch <- prometheus.MustNewConstMetric(descCanaryReq, prometheus.GaugeValue, float64(n.Failed), name, release, "failed")
			}
		}
		for _, in := range status.Instances {
			pid, state := strconv.Itoa(in.PID), string(in.State)
			ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(in.Streams.WebSockets), name, pid, state, "websocket")
			ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(in.Streams.SSE), name, pid, state, "sse")
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(in.Requests), name, pid, strconv.Itoa(in.Instance))
			for outcome, n := range in.Responses {
				ch <- prometheus.MustNewConstMetric(descResponses, prometheus.CounterValue, float64(n), name, pid, strconv.Itoa(in.Instance), outcome)
			}
			if in.MemoryBytes > 0 {
				ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(in.MemoryBytes), name, pid, state)
			}
		}
	}
}
