package supervise

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// validate loads and provisions a config with the given supervise app JSON,
// as `caddy validate` does, and returns the app.
func validate(t *testing.T, app string) (*App, error) {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"apps":{"supervise":`+app+`}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		return nil, err
	}
	var a App
	if err := json.Unmarshal(cfg.AppsRaw["supervise"], &a); err != nil {
		t.Fatal(err)
	}
	return &a, nil
}

func TestJSONErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, app, want string }{
		{"unknown app field", `{"procs":[]}`, `unknown field "procs"`},
		{"unknown process field", `{"processes":[{"command":["sleep"],"user":"nobody"}]}`, `unknown field "user"`},
		{"null process", `{"processes":[null]}`, "process 0: null"},
		{"empty command", `{"processes":[{"name":"web","command":[]}]}`, `process "web": command: must name a program`},
		{"empty program", `{"processes":[{"command":[""]}]}`, `process 0: command: must name a program`},
		{"not on PATH", `{"processes":[{"command":["no-such-program-xyz"]}]}`, `command "no-such-program-xyz": executable file not found in PATH`},
		{"not on the child's PATH", `{"processes":[{"command":["sleep"],"env":{"PATH":"` + dir + `"}}]}`, `command "sleep": executable file not found in PATH "` + dir + `"`},
		{"not executable", `{"processes":[{"command":["` + file + `"]}]}`, "is not executable"},
		{"relative to dir", `{"processes":[{"command":["./file"],"dir":"` + dir + `"}]}`, "is not executable"},
		{"missing dir", `{"processes":[{"command":["sleep"],"dir":"/no/such/dir"}]}`, `dir "/no/such/dir": stat /no/such/dir: no such file or directory`},
		{"dir is a file", `{"processes":[{"command":["sleep"],"dir":"` + file + `"}]}`, "not a directory"},
		{"bad signal", `{"processes":[{"command":["sleep"],"stop_signal":"SIGNOPE"}]}`, `stop_signal "SIGNOPE": unknown signal`},
		{"bad signal number", `{"processes":[{"command":["sleep"],"stop_signal":"999"}]}`, `stop_signal "999": no such signal number`},
		{"bare number duration", `{"processes":[{"command":["sleep"],"drain_timeout":30}]}`, `drain_timeout 30: must be a string with a unit`},
		{"unitless duration", `{"processes":[{"command":["sleep"],"stop_timeout":"30"}]}`, `stop_timeout "30": `},
		{"zero duration", `{"processes":[{"command":["sleep"],"stop_timeout":"0s"}]}`, `stop_timeout "0s": must be positive`},
		{"negative duration", `{"processes":[{"command":["sleep"],"drain_timeout":"-5s"}]}`, `drain_timeout "-5s": must be positive`},
		{"duplicate names", `{"processes":[{"command":["sleep"]},{"command":["/bin/sleep"]}]}`, `process 1: name "sleep": already used by process 0`},
		{"bad name", `{"processes":[{"name":"a b","command":["sleep"]}]}`, `name "a b": must not contain`},
		{"bad restart", `{"processes":[{"command":["sleep"],"restart":"sometimes"}]}`, `restart "sometimes": must be never, on_failure or always`},
		{"max_restarts without restart", `{"processes":[{"command":["sleep"],"max_restarts":3}]}`, `max_restarts 3: needs restart on_failure or always`},
		{"negative max_restarts", `{"processes":[{"command":["sleep"],"restart":"always","max_restarts":-1}]}`, `max_restarts -1: must be positive`},
		{"restart_window alone", `{"processes":[{"command":["sleep"],"restart":"always","restart_window":"1m"}]}`, `restart_window "1m0s": only means something with max_restarts`},
		{"bad restart_window", `{"processes":[{"command":["sleep"],"restart":"always","max_restarts":3,"restart_window":"1"}]}`, `restart_window "1": `},
		{"bad on_end", `{"processes":[{"command":["sleep"],"on_end":"exit"}]}`, `on_end "exit": must be stop_caddy or keep_running`},
		{"bad env name", `{"processes":[{"command":["sleep"],"env":{"A=B":"x"}}]}`, `env "A=B": not a valid variable name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validate(t, tc.app)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	var a App
	if err := json.Unmarshal([]byte(`{"processes":[{"command":["sleep","1"]}]}`), &a); err != nil {
		t.Fatal(err)
	}
	p := a.Processes[0]
	if err := p.provision(0); err != nil {
		t.Fatal(err)
	}
	if p.Name != "sleep" || p.StopSignal != "SIGTERM" || p.DrainTimeout.String() != "30s" || p.StopTimeout.String() != "10s" ||
		p.Restart != "never" || p.MaxRestarts != 0 || p.RestartWindow != 0 || p.OnEnd != "stop_caddy" {
		t.Errorf("defaults: %+v", p)
	}
	for _, sig := range []string{"SIGTERM", "TERM", "term", "sigint", "QUIT", "USR1", "HUP", "WINCH", "15"} {
		if _, err := parseSignal(sig); err != nil {
			t.Errorf("signal %q: %v", sig, err)
		}
	}
}
