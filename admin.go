package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin endpoint's `/supervise/` routes (module
// `admin.api.supervise`), behind the admin endpoint's own origin and host
// checks:
//
//	GET  /supervise/                 every process's status, by name
//	GET  /supervise/<name>           one process's status
//	POST /supervise/<name>/restart   a graceful restart (see restart)
//	POST /supervise/<name>/canary/promote  end the canary window: the new release takes over
//	POST /supervise/<name>/canary/abort    end it: the new release is rejected
//	POST /supervise/<name>/signal/<SIG>  send a signal to the process group
//
// Errors are JSON, {"error": "..."}, with 400 (bad signal), 404 (no such
// process or endpoint), 405 (wrong method), 409 (the process is not running:
// it is stopping, restarting, in a restart back-off or ended) or 500.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.supervise",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/supervise/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// Status is what the admin API tells about a process.
type Status struct {
	Name       string     `json:"name"`
	PID        int        `json:"pid"`
	State      state      `json:"state"`
	Ready      bool       `json:"ready"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	Restarts   int        `json:"restarts"`
	LastExit   *int       `json:"last_exit_status,omitempty"`
	Port       int        `json:"port,omitempty"`
	Socket     string     `json:"socket,omitempty"`
	Command    []string   `json:"command"`
	StopSignal string     `json:"stop_signal"`
	// Instances are every instance whose process group runs: the one that
	// serves, a new one a restart or reload brings up, old ones that retire
	// or stop.
	Instances []InstanceStatus `json:"instances"`
	// Retirements counts how instances that left service ended, by outcome:
	// `idle` (everything sent to it ended by itself), `streams_closed` (its
	// open streams were ended cleanly: stream_drain_timeout, a newer
	// retirement, or nothing served in its place), `drain_timeout`
	// (ordinary requests still ran), `exit` (Caddy exited first).
	Retirements map[string]int `json:"retirements,omitempty"`
	// Recycles counts instances replaced by a limit or a failed health
	// check, by reason: `max_memory`, `max_lifetime`,
	// `max_lifetime_requests`, `health`.
	Recycles map[string]int `json:"recycles,omitempty"`
	// Waiting is how many requests wait in the dynamic upstream for an
	// instance to be ready.
	Waiting int64 `json:"waiting"`
	// Canary is the deploy's canary window in progress, or the last one's
	// verdict (a process with `canary`).
	Canary *CanaryStatus `json:"canary,omitempty"`
}

// InstanceStatus is one running instance of a process.
type InstanceStatus struct {
	PID int `json:"pid"`
	// Instance is its index among `instances` (0, 1, …): the slot it
	// serves in, or retires from.
	Instance  int        `json:"instance"`
	State     state      `json:"state"`
	Serving   bool       `json:"serving"`
	Port      int        `json:"port,omitempty"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	// RetiredAt is when it left service, if it did.
	RetiredAt *time.Time `json:"retired_at,omitempty"`
	// Streams are its open streams (seen by `supervise_streams`).
	Streams streamCounts `json:"streams"`
	// MemoryBytes is the resident memory of its process group (Linux).
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// Requests is how many requests the dynamic upstream sent it.
	Requests int64 `json:"requests"`
	// Responses is how those requests ended, as `supervise_streams` saw
	// them: "ok" (the app answered, below 500), "5xx" (it answered 5xx),
	// "failed" (no answer: the connection was refused or cut, or timed
	// out; an attempt reverse_proxy retried elsewhere counts here). A
	// request whose client went away, or that is still in flight, is in
	// none of them.
	Responses map[string]int64 `json:"responses,omitempty"`
	// Unhealthy is why it failed its health check, if it did.
	Unhealthy string `json:"unhealthy,omitempty"`
	// Recycle is why it is being recycled, if it is.
	Recycle string `json:"recycle,omitempty"`
}

func (a *AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/supervise"), "/"), "/")
	if parts[0] == "" {
		parts = nil
	}
	method := func(m string) error {
		if r.Method != m {
			return apiError(http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use %s", r.Method, r.URL.Path, m))
		}
		return nil
	}
	if len(parts) == 0 {
		if err := method(http.MethodGet); err != nil {
			return err
		}
		list := []Status{}
		for _, s := range allServices() {
			list = append(list, s.fresh().statusNow())
		}
		return writeJSONResponse(w, list)
	}
	s := serviceNamed(parts[0])
	if s == nil {
		return apiError(http.StatusNotFound, fmt.Errorf("no supervised process named %q", parts[0]))
	}
	switch {
	case len(parts) == 1:
		if err := method(http.MethodGet); err != nil {
			return err
		}
		return writeJSONResponse(w, s.fresh().statusNow())
	case len(parts) == 2 && parts[1] == "restart":
		if err := method(http.MethodPost); err != nil {
			return err
		}
		reply := make(chan restartAnswer, 1)
		if !s.post(restartEv{reply: reply}) {
			return apiError(http.StatusConflict, fmt.Errorf("process %q: no longer in the config: %w", s.name, errNotRunning))
		}
		answer := <-reply
		if answer.err != nil {
			return apiError(statusOf(answer.err), answer.err)
		}
		return writeJSONResponse(w, answer.view.statusNow())
	case len(parts) == 3 && parts[1] == "canary" && (parts[2] == "promote" || parts[2] == "abort"):
		if err := method(http.MethodPost); err != nil {
			return err
		}
		reply := make(chan error, 1)
		if !s.post(canaryEv{promote: parts[2] == "promote", reply: reply}) {
			return apiError(http.StatusConflict, fmt.Errorf("process %q: %w", s.name, errNotRunning))
		}
		if err := <-reply; err != nil {
			return apiError(statusOf(err), err)
		}
		return writeJSONResponse(w, s.fresh().statusNow())
	case len(parts) == 3 && parts[1] == "signal":
		if err := method(http.MethodPost); err != nil {
			return err
		}
		sig, err := parseSignal(parts[2])
		if err != nil {
			return apiError(http.StatusBadRequest, fmt.Errorf("signal %q: %v", parts[2], err))
		}
		reply := make(chan error, 1)
		if !s.post(signalEv{sig: sig, name: parts[2], reply: reply}) {
			return apiError(http.StatusConflict, fmt.Errorf("process %q: %w", s.name, errNotRunning))
		}
		if err := <-reply; err != nil {
			return apiError(statusOf(err), err)
		}
		return writeJSONResponse(w, s.fresh().statusNow())
	}
	return apiError(http.StatusNotFound, fmt.Errorf("%s: not an endpoint of /supervise/", r.URL.Path))
}

// errBusy: another transition of the process runs.
var errBusy = errors.New("busy")

// statusOf is the HTTP status for an error of an action on a process: 409
// when the process is not running (the request conflicts with its state),
// 500 otherwise.
func statusOf(err error) int {
	if errors.Is(err, errNotRunning) || errors.Is(err, errBusy) || errors.Is(err, errExiting) {
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func apiError(code int, err error) error {
	return caddy.APIError{HTTPStatus: code, Err: err, Message: err.Error()}
}

func writeJSONResponse(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
