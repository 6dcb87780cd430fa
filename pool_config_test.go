package supervise

import (
	"encoding/json"
	"strings"
	"testing"
)

// The options of pools, recycling and liveness: each bad value is an error
// at adapt or validate time that names the option and the value.
func TestPoolOptionErrors(t *testing.T) {
	const sleep = `"command":["sleep","1"]`
	for _, tc := range []struct{ name, app, want string }{
		{"instances zero", `{"processes":[{` + sleep + `,"instances":0,"port":"auto"}]}`, `instances 0: must be a whole number above 0, or "auto"`},
		{"instances negative", `{"processes":[{` + sleep + `,"instances":-2}]}`, `instances -2: must be a whole number above 0, or "auto"`},
		{"instances word", `{"processes":[{` + sleep + `,"instances":"many"}]}`, `instances "many": must be a whole number above 0, or auto`},
		{"instances too many", `{"processes":[{` + sleep + `,"instances":100000,"port":"auto"}]}`, `instances 100000: must be between 1 and 256`},
		{"instances with a fixed port", `{"processes":[{` + sleep + `,"instances":2,"port":"3000"}]}`, `instances 2: needs port auto (port "3000")`},
		{"instances without a port", `{"processes":[{` + sleep + `,"instances":2}]}`, `instances 2: needs port auto (port "")`},
		{"instances with a socket", `{"processes":[{` + sleep + `,"instances":2,"socket":"127.0.0.1:3999"}]}`, `instances 2: not with socket "127.0.0.1:3999": a socket has one queue`},
		{"instances with ready off", `{"processes":[{` + sleep + `,"instances":2,"port":"auto","ready":{"off":true}}]}`, `instances 2: needs a readiness probe (ready is off)`},
		{"pool with a ready address of its own", `{"processes":[{` + sleep + `,"instances":2,"port":"auto","ready":{"tcp":"127.0.0.1:5000"}}]}`, `instances 2: ready tcp 127.0.0.1:5000: an address of its own would probe the same place for every instance`},
		{"pool with a health URL of its own", `{"processes":[{` + sleep + `,"instances":2,"port":"auto","health":{"http":"http://127.0.0.1:5000/up"}}]}`, `instances 2: health http http://127.0.0.1:5000/up: an address of its own`},
		{"roll_batch negative", `{"processes":[{` + sleep + `,"roll_batch":-1}]}`, `roll_batch -1: must be a whole number above 0`},
		{"max_memory bad", `{"processes":[{` + sleep + `,"max_memory":"lots"}]}`, `"lots": must be a positive size such as 512MiB`},
		{"max_memory zero", `{"processes":[{` + sleep + `,"max_memory":0}]}`, `0: must be positive`},
		{"max_memory without port auto", `{"processes":[{` + sleep + `,"max_memory":"100MiB","port":"3000"}]}`, `max_memory 100 MiB: recycling replaces an instance beside itself: it needs port auto and a readiness probe (port "3000")`},
		{"max_lifetime unitless", `{"processes":[{` + sleep + `,"max_lifetime":60}]}`, `max_lifetime 60: must be a string with a unit`},
		{"max_lifetime_requests negative", `{"processes":[{` + sleep + `,"max_lifetime_requests":-5,"port":"auto"}]}`, `max_lifetime_requests -5: must be a whole number above 0`},
		{"health unknown field", `{"processes":[{` + sleep + `,"port":"auto","health":{"path":"/up"}}]}`, `health: json: unknown field "path"`},
		{"health unitless", `{"processes":[{` + sleep + `,"port":"auto","health":{"interval":10}}]}`, `health: interval 10: must be a string with a unit`},
		{"health timeout above interval", `{"processes":[{` + sleep + `,"port":"auto","health":{"interval":"1s","timeout":"2s"}}]}`, `health: timeout 2s: longer than interval 1s`},
		{"health bad URL", `{"processes":[{` + sleep + `,"port":"auto","health":{"http":"ftp://x/up"}}]}`, `health http "ftp://x/up": must be an http:// or https:// URL`},
		{"health with nothing to check", `{"processes":[{` + sleep + `,"port":"auto","ready":{"off":true},"health":{}}]}`, `health: with ready off, give what to check`},
		{"health fails negative", `{"processes":[{` + sleep + `,"port":"auto","health":{"fails":-1}}]}`, `health: fails -1: must be a whole number above 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validate(t, tc.app)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("error %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// Defaults, and auto: the CPUs this process may use.
func TestPoolDefaults(t *testing.T) {
	var a App
	if err := json.Unmarshal([]byte(`{"processes":[
		{"name":"one","command":["sleep","1"]},
		{"name":"auto","command":["sleep","1"],"instances":"auto","port":"auto","health":{"http":"/healthz"},"max_memory":"1.5GiB"}]}`), &a); err != nil {
		t.Fatal(err)
	}
	if err := a.Processes[0].provision(0); err != nil {
		t.Fatal(err)
	}
	if p := a.Processes[0]; p.count != 1 || p.RollBatch != 1 || p.Health != nil {
		t.Errorf("defaults: count %d, roll_batch %d, health %v", p.count, p.RollBatch, p.Health)
	}
	p := a.Processes[1]
	if err := p.provision(1); err != nil {
		t.Fatal(err)
	}
	if p.count != usableCPUs() || p.count < 1 {
		t.Errorf("instances auto: %d, usable CPUs %d", p.count, usableCPUs())
	}
	if h := p.Health; h.Interval.String() != "10s" || h.Timeout.String() != "2s" || h.Fails != 3 || *h.probe.HTTP != "/healthz" {
		t.Errorf("health defaults: %+v", h)
	}
	if p.MaxMemory != 1536<<20 {
		t.Errorf("max_memory 1.5GiB: %d", p.MaxMemory)
	}
}

func TestCPUQuota(t *testing.T) {
	for in, want := range map[string]int{"max 100000": 0, "150000 100000": 2, "100000 100000": 1, "50000 100000\n": 1, "": 0, "x y": 0, "-1 100000": 0} {
		if got := cpuQuota(in); got != want {
			t.Errorf("cpuQuota(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestPoolCaddyfile(t *testing.T) {
	got, err := adapt(t, `{
	supervise node server.js {
		port auto
		instances auto
		roll_batch 2
		max_memory 512MiB
		max_lifetime 24h
		max_lifetime_requests 10000
		health http /up interval 5s timeout 1s fails 2
	}
	supervise worker {
		port auto
		instances 3
		health
	}
}
`)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"processes":[{"command":["node","server.js"],"port":"auto","instances":"auto","roll_batch":2,"max_memory":536870912,"max_lifetime":"24h0m0s","max_lifetime_requests":10000,"health":{"http":"/up","interval":"5s","timeout":"1s","fails":2}},{"command":["worker"],"port":"auto","instances":3,"health":{}}]}`
	if got != want {
		t.Errorf("adapted to\n%s\nwant\n%s", got, want)
	}
	for _, tc := range []struct{ src, want string }{
		{"instances 0", `instances "0": must be a whole number above 0, or auto`},
		{"instances some", `instances "some": must be a whole number above 0, or auto`},
		{"roll_batch 0", `roll_batch "0": must be a whole number above 0`},
		{"max_memory 12XB", `max_memory "12XB": must be a positive size`},
		{"max_lifetime 10", `max_lifetime "10": `},
		{"max_lifetime_requests -1", `max_lifetime_requests "-1": must be a whole number above 0`},
		{"health udp", `health "udp": want [tcp [HOST:PORT] | http [URL]]`},
		{"health http /up interval", `health ["interval"]: interval needs a value`},
		{"health interval 5", `health interval "5": `},
		{"health fails none", `health fails "none": must be a whole number above 0`},
	} {
		t.Run(tc.src, func(t *testing.T) {
			_, err := adapt(t, "{\n\tsupervise app {\n\t\t"+tc.src+"\n\t}\n}\n")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
