package supervise

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// FuzzCaddyfile: any global options block adapts or fails cleanly, and a
// supervise app that adapts decodes back to the same JSON.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"supervise bundle exec puma -p 3000 {\n\tname web\n\tdir /app\n\tenv RAILS_ENV production\n\tstop_signal SIGTERM\n\tdrain_timeout 30s\n\tstop_timeout 10s\n}",
		"supervise node server.js",
		"supervise sh -c \"exec bin/worker\" {\n\trestart on_failure\n\tmax_restarts 5\n\trestart_window 1m\n\ton_end keep_running\n\toutput inherit\n}",
		"supervise app {\n\tenv_file .env\n\tuser nobody\n\tgroup nogroup\n}",
		"supervise a\nsupervise b {\n\tname b\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, block string) {
		out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte("{\n"+block+"\n}\n"), nil)
		if err != nil {
			return
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapter output is not JSON: %v", err)
		}
		raw, ok := cfg.Apps["supervise"]
		if !ok {
			return
		}
		var app App
		if err := json.Unmarshal(raw, &app); err != nil {
			t.Fatalf("adapted supervise JSON does not decode: %v\n%s", err, raw)
		}
		again, err := json.Marshal(&app)
		if err != nil {
			t.Fatal(err)
		}
		if !jsonEqual(t, raw, again) {
			t.Fatalf("round trip changed the config:\n%s\n%s", raw, again)
		}
	})
}

// FuzzProcessJSON: any JSON decodes or fails cleanly, a decoded process
// encodes back to JSON that decodes to the same, and checking it never
// panics.
func FuzzProcessJSON(f *testing.F) {
	for _, seed := range []string{
		`{"name":"web","command":["bundle","exec","puma"],"dir":"/","env":{"A":"1"},"stop_signal":"TERM","drain_timeout":"30s","stop_timeout":"10s"}`,
		`{"command":["sleep","1"],"restart":"always","max_restarts":3,"restart_window":"1m","on_end":"keep_running","output":"discard"}`,
		`{"command":["sleep"],"drain_timeout":30}`,
		`{"command":["{env.HOME}/bin"],"user":"nobody","group":"0"}`,
		`{"command":[]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Process
		if err := json.Unmarshal(data, &p); err != nil {
			return
		}
		enc, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		var q Process
		if err := json.Unmarshal(enc, &q); err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		enc2, _ := json.Marshal(&q)
		if string(enc) != string(enc2) {
			t.Fatalf("round trip changed the process:\n%s\n%s", enc, enc2)
		}
		q.EnvFile = "" // never read a file the fuzzer names (/dev/zero...)
		_ = q.provision(0)
	})
}

// FuzzEnvFile: any file parses or fails cleanly, and what it parses to,
// written back double-quoted, parses to the same.
func FuzzEnvFile(f *testing.F) {
	for _, seed := range []string{
		"A=1\nB = two words # c\n",
		"export K='a b'\nM=\"x\\ny\"\n# comment\n\nZ=",
		"KEY=\"-----BEGIN\nabc\n-----END\"\n",
		"A=\"unclosed\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		env, err := parseEnvFile(src)
		if err != nil {
			return
		}
		var sb strings.Builder
		for _, k := range slices.Sorted(maps.Keys(env)) {
			v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`).Replace(env[k])
			sb.WriteString(k + `="` + v + "\"\n")
		}
		again, err := parseEnvFile(sb.String())
		if err != nil {
			t.Fatalf("written back as\n%s\nit does not parse: %v", sb.String(), err)
		}
		if !maps.Equal(env, again) {
			t.Fatalf("round trip: %s != %s", strconv.Quote(sb.String()), strconv.Quote(src))
		}
	})
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return string(ja) == string(jb)
}
