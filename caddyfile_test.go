package supervise

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// adapt runs the Caddyfile adapter, as `caddy adapt` does, and returns the
// supervise app's JSON.
func adapt(t *testing.T, src string) (string, error) {
	t.Helper()
	out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(src), nil)
	if err != nil {
		return "", err
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return string(cfg.Apps["supervise"]), nil
}

func TestCaddyfileAdapt(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{
			name: "every option",
			src: `{
	supervise bundle exec puma -p 3000 {
		name web
		dir /app
		env RAILS_ENV production
		stop_signal SIGTERM
		drain_timeout 30s
		stop_timeout 10s
	}
}`,
			want: `{"processes":[{"name":"web","command":["bundle","exec","puma","-p","3000"],"dir":"/app","env":{"RAILS_ENV":"production"},"stop_signal":"SIGTERM","drain_timeout":"30s","stop_timeout":"10s"}]}`,
		},
		{
			name: "optional env_file",
			src: `{
	supervise app {
		env_file /rails/.env optional
	}
}`,
			want: `{"processes":[{"command":["app"],"env_file":"/rails/.env","env_file_optional":true}]}`,
		},
		{
			name: "no block; repeated option; durations normalised",
			src: `{
	supervise node server.js
	supervise sh -c "bin/worker --queue default" {
		env A 1
		env B "two words"
		stop_signal int
		drain_timeout 1m30s
		stop_timeout 1500ms
	}
}`,
			want: `{"processes":[{"command":["node","server.js"]},{"command":["sh","-c","bin/worker --queue default"],"env":{"A":"1","B":"two words"},"stop_signal":"int","drain_timeout":"1m30s","stop_timeout":"1.5s"}]}`,
		},
		{
			name: "restarts",
			src: `{
	supervise bin/worker {
		restart on_failure
		max_restarts 5
		restart_window 2m
		on_end keep_running
	}
}`,
			want: `{"processes":[{"command":["bin/worker"],"restart":"on_failure","max_restarts":5,"restart_window":"2m0s","on_end":"keep_running"}]}`,
		},
		{
			name: "readiness and port",
			src: `{
	supervise bin/server --port {supervise.port} {
		name web
		port auto
		ready http
		ready_timeout 30s
	}
	supervise bin/api {
		ready tcp 127.0.0.1:4000
	}
}`,
			want: `{"processes":[{"name":"web","command":["bin/server","--port","{supervise.port}"],"port":"auto","ready":{"http":""},"ready_timeout":"30s"},{"command":["bin/api"],"ready":{"tcp":"127.0.0.1:4000"}}]}`,
		},
		{
			name: "unset_env, repeated",
			src: `{
	supervise bin/server {
		unset_env AWS_SECRET_ACCESS_KEY DATABASE_URL
		unset_env CADDY_TOKEN
	}
}`,
			want: `{"processes":[{"command":["bin/server"],"unset_env":["AWS_SECRET_ACCESS_KEY","DATABASE_URL","CADDY_TOKEN"]}]}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := adapt(t, tc.src+"\n:8080 {\n\trespond ok\n}\n")
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("adapted to\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"no command", "supervise", "a command is required"},
		{"env_file, a third word", "supervise app {\n\tenv_file .env maybe\n}", `env_file [".env" "maybe"]: want PATH [optional]`},
		{"no command, block", "supervise {\n\tname x\n}", "a command is required"},
		{"unknown subdirective", "supervise app {\n\tusr nobody\n}", `unknown subdirective "usr" (known: canary, dir, drain_timeout, env, env_file, group, health, instances, literal_args, max_lifetime, max_lifetime_requests, max_memory, max_restarts`},
		{"bad signal", "supervise app {\n\tstop_signal SIGFOO\n}", `stop_signal "SIGFOO": unknown signal`},
		{"unitless duration", "supervise app {\n\tdrain_timeout 30\n}", `drain_timeout "30": `},
		{"zero stream_drain_timeout", "supervise app {\n\tstream_drain_timeout 0s\n}", `stream_drain_timeout "0s": must be positive`},
		{"zero duration", "supervise app {\n\tstop_timeout 0s\n}", `stop_timeout "0s": must be positive`},
		{"negative duration", "supervise app {\n\tstop_timeout -1s\n}", `stop_timeout "-1s": must be positive`},
		{"missing value", "supervise app {\n\tname\n}", "name: takes 1 value(s), got 0"},
		{"extra value", "supervise app {\n\tdir /a /b\n}", "dir: takes 1 value(s), got 2"},
		{"env needs two", "supervise app {\n\tenv A\n}", "env: takes 2 value(s), got 1"},
		{"set twice", "supervise app {\n\tname a\n\tname b\n}", "name: set twice"},
		{"env key twice", "supervise app {\n\tenv A 1\n\tenv A 2\n}", "env A: set twice"},
		{"bad ready", "supervise app {\n\tready udp\n}", `ready ["udp"]: want tcp [HOST:PORT] or http [URL]`},
		{"bad restart", "supervise app {\n\trestart sometimes\n}", `restart "sometimes": must be one of never, on_failure, always`},
		{"bad on_end", "supervise app {\n\ton_end exit\n}", `on_end "exit": must be one of stop_caddy, keep_running`},
		{"bad max_restarts", "supervise app {\n\tmax_restarts 0\n}", `max_restarts "0": must be a whole number above 0`},
		{"bad restart_window", "supervise app {\n\trestart_window 5\n}", `restart_window "5": `},
		{"{supervise.port} without port", "supervise bin/server --port {supervise.port}", `{supervise.port} in the command needs port`},
		{"bad socket", "supervise app {\n\tsocket 127.0.0.1:port\n}", `socket "127.0.0.1:port": invalid start port`},
		{"socket and port", "supervise app {\n\tsocket 127.0.0.1:3000\n\tport auto\n}", `socket "127.0.0.1:3000": socket and port "auto" are exclusive`},
		{"{supervise.fd} without socket", "supervise app --fd {supervise.fd}", `{supervise.fd} in the command needs socket`},
		{"unset_env without names", "supervise app {\n\tunset_env\n}", `unset_env takes one or more variable names, got none`},
		{"unset_env twice", "supervise app {\n\tunset_env A B\n\tunset_env A\n}", `unset_env "A": not a valid variable name, or named twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adapt(t, "{\n"+tc.src+"\n}\n")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %v does not say where", err)
			}
		})
	}
}

// `dynamic supervise <name>` in a reverse_proxy block.
func TestCaddyfileDynamicUpstream(t *testing.T) {
	out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(":8080 {\n\treverse_proxy {\n\t\tdynamic supervise web\n\t\tlb_try_duration 30s\n\t}\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"dynamic_upstreams":{"name":"web","source":"supervise"}`) {
		t.Errorf("adapted to %s", out)
	}
	_, _, err = caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(":8080 {\n\treverse_proxy {\n\t\tdynamic supervise\n\t}\n}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "the name of a supervised process is required") {
		t.Errorf("error %v", err)
	}
}
