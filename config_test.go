package supervise

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
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
	goodEnv := filepath.Join(dir, "good.env")
	if err := os.WriteFile(goodEnv, []byte("A=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nulEnv := filepath.Join(dir, "nul.env")
	if err := os.WriteFile(nulEnv, []byte("A=1\nB=\"x\x00y\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling.env")
	if err := os.Symlink(filepath.Join(dir, "not-mounted", ".env"), dangling); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SUPERVISE_EMPTY_X", "")
	badEnv := filepath.Join(dir, "bad.env")
	if err := os.WriteFile(badEnv, []byte("A=1\noops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, app, want string }{
		{"unknown app field", `{"procs":[]}`, `unknown field "procs"`},
		{"unknown process field", `{"processes":[{"command":["sleep"],"usr":"nobody"}]}`, `unknown field "usr"`},
		{"unset variable in command", `{"processes":[{"command":["sleep","{env.SUPERVISE_UNSET_X}"]}]}`, `command "{env.SUPERVISE_UNSET_X}": {env.SUPERVISE_UNSET_X}: environment variable SUPERVISE_UNSET_X is not set`},
		{"unset variable in dir", `{"processes":[{"command":["sleep"],"dir":"{env.SUPERVISE_UNSET_X}/x"}]}`, `dir "{env.SUPERVISE_UNSET_X}/x": {env.SUPERVISE_UNSET_X}: environment variable SUPERVISE_UNSET_X is not set`},
		{"missing env_file", `{"processes":[{"command":["sleep"],"env_file":"/no/such.env"}]}`, `env_file "/no/such.env": open /no/such.env: no such file or directory`},
		{"bad env_file", `{"processes":[{"command":["sleep"],"env_file":"` + badEnv + `"}]}`, `env_file "` + badEnv + `": line 2: not KEY=VALUE (no =)`},
		{"optional env_file, a directory", `{"processes":[{"command":["sleep"],"env_file":"` + dir + `","env_file_optional":true}]}`, `env_file "` + dir + `": not a regular file`},
		{"optional env_file, a bad one", `{"processes":[{"command":["sleep"],"env_file":"` + badEnv + `","env_file_optional":true}]}`, `env_file "` + badEnv + `": line 2: not KEY=VALUE (no =)`},
		{"optional env_file, a dangling link", `{"processes":[{"command":["sleep"],"env_file":"` + dangling + `","env_file_optional":true}]}`, `env_file "` + dangling + `": a symbolic link to a file that does not exist`},
		{"optional env_file, an empty path", `{"processes":[{"command":["sleep"],"env_file":"{env.SUPERVISE_EMPTY_X}","env_file_optional":true}]}`, `env_file "{env.SUPERVISE_EMPTY_X}": the path is empty`},
		{"env_file_optional alone", `{"processes":[{"command":["sleep"],"env_file_optional":true}]}`, `env_file_optional: needs env_file`},
		{"unknown user", `{"processes":[{"command":["sleep"],"user":"no-such-user-xyz"}]}`, `user "no-such-user-xyz": user: unknown user no-such-user-xyz`},
		{"bare uid without group", `{"processes":[{"command":["sleep"],"user":"54321"}]}`, `user "54321": no such user in the user database; with a bare UID, set group too`},
		{"unknown group", `{"processes":[{"command":["sleep"],"user":"nobody","group":"no-such-group-xyz"}]}`, `group "no-such-group-xyz": group: unknown group no-such-group-xyz`},
		{"group without user", `{"processes":[{"command":["sleep"],"group":"nogroup"}]}`, "group \"nogroup\": needs user too: with group alone the process keeps Caddy's user (root, with every capability"},
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
		{"bare number stream_drain_timeout", `{"processes":[{"command":["sleep"],"stream_drain_timeout":5}]}`, `stream_drain_timeout 5: must be a string with a unit`},
		{"negative stream_drain_timeout", `{"processes":[{"command":["sleep"],"stream_drain_timeout":"-5s"}]}`, `stream_drain_timeout "-5s": must be positive`},
		{"same port twice", `{"processes":[{"name":"a","command":["sleep"],"port":"3000"},{"name":"b","command":["sleep"],"socket":":3000"}]}`, `process "b": socket ":3000": process "a" binds it too`},
		{"duplicate names", `{"processes":[{"command":["sleep"]},{"command":["/bin/sleep"]}]}`, `process 1: name "sleep": already used by process 0`},
		{"bad name", `{"processes":[{"name":"a b","command":["sleep"]}]}`, `name "a b": must not contain`},
		{"bad restart", `{"processes":[{"command":["sleep"],"restart":"sometimes"}]}`, `restart "sometimes": must be one of never, on_failure, always`},
		{"max_restarts without restart", `{"processes":[{"command":["sleep"],"max_restarts":3}]}`, `max_restarts 3: needs restart on_failure or always`},
		{"negative max_restarts", `{"processes":[{"command":["sleep"],"restart":"always","max_restarts":-1}]}`, `max_restarts -1: must be positive`},
		{"restart_window alone", `{"processes":[{"command":["sleep"],"restart":"always","restart_window":"1m"}]}`, `restart_window "1m0s": only means something with max_restarts`},
		{"bad restart_window", `{"processes":[{"command":["sleep"],"restart":"always","max_restarts":3,"restart_window":"1"}]}`, `restart_window "1": `},
		{"bad on_end", `{"processes":[{"command":["sleep"],"on_end":"exit"}]}`, `on_end "exit": must be one of stop_caddy, keep_running`},
		{"bad port", `{"processes":[{"command":["sleep"],"port":"http"}]}`, `port "http": must be auto or a port number`},
		{"port and PORT", `{"processes":[{"command":["sleep"],"port":"auto","env":{"PORT":"1"}}]}`, `PORT is also set by env or env_file`},
		{"ready both", `{"processes":[{"command":["sleep"],"ready":{"tcp":"a:1","http":"http://a/"}}]}`, `ready: set exactly one of tcp and http`},
		{"ready neither", `{"processes":[{"command":["sleep"],"ready":{}}]}`, `ready: set exactly one of tcp and http`},
		{"ready without address", `{"processes":[{"command":["sleep"],"ready":{"tcp":""}}]}`, `ready: an address is needed without port`},
		{"ready bad url", `{"processes":[{"command":["sleep"],"ready":{"http":"localhost:3000/up"}}]}`, `ready http "localhost:3000/up": must be an http:// or https:// URL`},
		{"ready_timeout alone", `{"processes":[{"command":["sleep"],"ready_timeout":"5s"}]}`, `ready_timeout "5s": only means something with ready`},
		{"bad env name", `{"processes":[{"command":["sleep"],"env":{"A=B":"x"}}]}`, `env "A=B": not a valid variable name`},
		{"{supervise.port} without port", `{"processes":[{"command":["sleep","{supervise.port}"]}]}`, `command "{supervise.port}": {supervise.port} needs port`},
		{"ready path without port", `{"processes":[{"command":["sleep"],"ready":{"http":"/up"}}]}`, `ready http "/up": a path alone is probed on the process's port`},
		{"bad socket", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:port"}]}`, `socket "127.0.0.1:port": invalid start port`},
		{"socket range", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:3000-3001"}]}`, `socket "127.0.0.1:3000-3001": one port, not a range`},
		{"socket without port", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1"}]}`, `socket "127.0.0.1": `},
		{"socket path without unix/", `{"processes":[{"command":["sleep"],"socket":"/run/app.sock"}]}`, `socket "/run/app.sock": a unix socket's path is written unix/PATH: unix//run/app.sock`},
		{"socket bad mode", `{"processes":[{"command":["sleep"],"socket":"unix//run/app.sock|rw"}]}`, `socket "unix//run/app.sock|rw": mode "rw": octal permission bits`},
		{"socket mode without write", `{"processes":[{"command":["sleep"],"socket":"unix//run/app.sock|0444"}]}`, `mode "0444": the owner needs write permission`},
		{"socket mode on TCP", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:3000|0600"}]}`, `a mode (|600) is for unix sockets only`},
		{"socket udp", `{"processes":[{"command":["sleep"],"socket":"udp/127.0.0.1:3000"}]}`, `socket "udp/127.0.0.1:3000": network udp: must be TCP (HOST:PORT) or unix/PATH`},
		{"socket and port", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:3000","port":"auto"}]}`, `socket "127.0.0.1:3000": socket and port "auto" are exclusive`},
		{"socket in a missing directory", `{"processes":[{"command":["sleep"],"socket":"unix//no/such/dir/app.sock"}]}`, `socket "unix//no/such/dir/app.sock": the directory /no/such/dir does not exist`},
		{"socket path not a socket", `{"processes":[{"command":["sleep"],"socket":"unix/` + file + `"}]}`, `socket "unix/` + file + `": ` + file + ` exists and is not a socket`},
		{"socket and a TCP probe", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:3000","ready":{"tcp":""}}]}`, `ready tcp: a TCP probe of the socket Caddy holds always connects`},
		{"socket and LISTEN_FDS", `{"processes":[{"command":["sleep"],"socket":"127.0.0.1:3000","env":{"LISTEN_FDS":"2"}}]}`, `socket "127.0.0.1:3000": LISTEN_FDS is also set by env`},
		{"{supervise.fd} without socket", `{"processes":[{"command":["sleep","{supervise.fd}"]}]}`, `command "{supervise.fd}": {supervise.fd} needs socket`},
		{"bad unset_env name", `{"processes":[{"command":["sleep"],"unset_env":["A=B"]}]}`, `unset_env "A=B": not a valid variable name`},
		{"unset_env twice", `{"processes":[{"command":["sleep"],"unset_env":["A","A"]}]}`, `unset_env "A": named twice`},
		{"unset_env and env", `{"processes":[{"command":["sleep"],"unset_env":["A"],"env":{"A":"1"}}]}`, `unset_env "A": env sets it`},
		{"NUL in an argument", `{"processes":[{"command":["sleep","1\u0000; rm -rf /"]}]}`, `argument 1 contains a NUL byte`},
		{"NUL in an env value", `{"processes":[{"command":["sleep"],"env":{"A":"x\u0000y"}}]}`, `env A "x\x00y": contains a NUL byte`},
		{"NUL in an env_file value", `{"processes":[{"command":["sleep"],"env_file":"` + nulEnv + `"}]}`, `env_file "` + nulEnv + `": B contains a NUL byte`},
		{"unset_env and env_file", `{"processes":[{"command":["sleep"],"unset_env":["A"],"env_file":"` + goodEnv + `"}]}`, `unset_env "A": env_file sets it`},
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

func TestEnvFile(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      map[string]string
		err       string
	}{
		{"plain", "A=1\nB = two words \n", map[string]string{"A": "1", "B": "two words"}, ""},
		{"comments and blanks", "# c\n\n  # c2\nA=1 # note\nB=x#y\n", map[string]string{"A": "1", "B": "x#y"}, ""},
		{"export", "export A=1\n", map[string]string{"A": "1"}, ""},
		{"export and a tab", "export\tA=1\nexport  \t B=2\nexportC=3\n", map[string]string{"A": "1", "B": "2", "exportC": "3"}, ""},
		{"empty", "A=\nB=''\n", map[string]string{"A": "", "B": ""}, ""},
		{"single quotes literal", `A='a \n $B # not a comment'` + "\n", map[string]string{"A": `a \n $B # not a comment`}, ""},
		{"double quote escapes", `A="x\ty\n\"q\" \\ \$ \z"` + " # c\n", map[string]string{"A": "x\ty\n\"q\" \\ $ \\z"}, ""},
		{"multi-line", "KEY=\"-----BEGIN\nabc\n-----END\"\nB=2\n", map[string]string{"KEY": "-----BEGIN\nabc\n-----END", "B": "2"}, ""},
		{"no expansion", "A=$HOME ${HOME}\n", map[string]string{"A": "$HOME ${HOME}"}, ""},
		{"later wins", "A=1\nA=2\n", map[string]string{"A": "2"}, ""},
		{"crlf", "A=1\r\nB=2\r\n", map[string]string{"A": "1", "B": "2"}, ""},
		{"no equals", "A=1\nnope\n", nil, `line 2: not KEY=VALUE (no =)`},
		{"bad key", "1A=x\n", nil, `line 1: what comes before = is not a variable name`},
		{"unclosed", "A=\"abc\nB=2\n", nil, `line 1: the " quote of A is never closed`},
		{"junk after quote", "A='x' y\n", nil, `line 1: something other than a # comment after the closing quote of A`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEnvFile(tc.src)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// An optional env_file that does not exist adds nothing; once it exists,
// its variables are read (a reload reads it again).
func TestEnvFileOptional(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".env")
	provision := func() *Process {
		t.Helper()
		var a App
		if err := json.Unmarshal([]byte(`{"processes":[{"command":["sleep"],"env_file":"`+path+`","env_file_optional":true}]}`), &a); err != nil {
			t.Fatal(err)
		}
		if err := a.Processes[0].provision(0); err != nil {
			t.Fatal(err)
		}
		return a.Processes[0]
	}
	if p := provision(); !p.envFileMissing || len(p.vars) != 0 {
		t.Errorf("missing optional env_file: missing=%v vars=%v", p.envFileMissing, p.vars)
	}
	if err := os.WriteFile(path, []byte("SECRET=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := provision(); p.envFileMissing || p.vars["SECRET"] != "1" {
		t.Errorf("optional env_file once there: missing=%v vars=%v", p.envFileMissing, p.vars)
	}
}

// {env.X} is expanded in command, dir, env_file and env; env and env_file
// add to Caddy's environment, env winning; other braces stay as written.
func TestResolveSpawn(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SUPERVISE_T_DIR", dir)
	t.Setenv("SUPERVISE_T_ARG", "hello")
	t.Setenv("SUPERVISE_T_SECRET", "s3cret")
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("LISTEN_FDS", "2")
	t.Setenv("WATCHDOG_PID", "1")
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("FROM_FILE=file\nBOTH=file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &Process{
		Command:  []string{"sh", "-c", "echo ${HOME} {env.SUPERVISE_T_ARG} {json}"},
		Dir:      "{env.SUPERVISE_T_DIR}",
		EnvFile:  "{env.SUPERVISE_T_DIR}/app.env",
		Env:      map[string]string{"BOTH": "env", "OPTIONAL": "x{env.SUPERVISE_UNSET_Y}y", "WATCHDOG_PID": "mine"},
		UnsetEnv: []string{"SUPERVISE_T_SECRET"},
	}
	if err := p.provision(0); err != nil {
		t.Fatal(err)
	}
	if want := "echo ${HOME} hello {json}"; p.args[2] != want {
		t.Errorf("args[2] %q, want %q", p.args[2], want)
	}
	if p.dir != dir {
		t.Errorf("dir %q", p.dir)
	}
	for k, want := range map[string]string{"FROM_FILE": "file", "BOTH": "env", "OPTIONAL": "xy", "PATH": os.Getenv("PATH")} {
		if got := envValue(p.env, k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	// the service manager's variables are Caddy's, unless env sets them;
	// unset_env removes what it names
	for _, k := range []string{"NOTIFY_SOCKET", "LISTEN_FDS", "SUPERVISE_T_SECRET"} {
		for _, kv := range p.env {
			if strings.HasPrefix(kv, k+"=") {
				t.Errorf("the child inherits %s", kv)
			}
		}
	}
	if got := envValue(p.env, "WATCHDOG_PID"); got != "mine" {
		t.Errorf("WATCHDOG_PID=%q, want the value env sets", got)
	}
	if p.Command[2] != "echo ${HOME} {env.SUPERVISE_T_ARG} {json}" {
		t.Error("the configured command was changed")
	}
}

// Connections can be counted unless a server may serve HTTP/3: over TLS,
// with h3 among its protocols (the default).
func TestMayServeHTTP3(t *testing.T) {
	tls := caddytls.ConnectionPolicies{{}}
	for _, tc := range []struct {
		name string
		s    *caddyhttp.Server
		want bool
	}{
		{"plain HTTP", &caddyhttp.Server{}, false},
		{"TLS, default protocols", &caddyhttp.Server{TLSConnPolicies: tls}, true},
		{"TLS, h1 h2", &caddyhttp.Server{TLSConnPolicies: tls, Protocols: []string{"h1", "h2"}}, false},
		{"TLS, h3 on one listener", &caddyhttp.Server{TLSConnPolicies: tls, Protocols: []string{"h1", "h2"}, ListenProtocols: [][]string{nil, {"h3"}}}, true},
	} {
		if got := mayServeHTTP3(tc.s); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
