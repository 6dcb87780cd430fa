package supervise

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// thrusterFor reads Thruster's variables from env, with the flags'
// defaults.
func thrusterFor(t *testing.T, env map[string]string) (*thrusterConfig, error) {
	t.Helper()
	c := &thrusterConfig{Command: []string{"bin/rails", "server"}, AdminAddr: "localhost:2019", Name: "app",
		DrainTimeout: 30 * time.Second, StopTimeout: 10 * time.Second, Wait: 30 * time.Second, ReadyTimeout: 60 * time.Second, Output: OutputInherit}
	err := c.readThrusterEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return c, err
}

// Thruster's defaults, the THRUSTER_ prefix, and what each variable becomes
// in the Caddyfile, which Caddy's adapter accepts.
func TestThrusterCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    []string
		notWant []string
	}{
		{"defaults", nil, []string{
			"http://:80 {", "port 3000", "ready tcp", "encode zstd gzip", "\t\tsupervise_sendfile\n", "read_body 30s", "write 30s", "write_idle -1s", "idle 1m0s",
			"trusted_proxies static", `request_header @no_request_start X-Request-Start "t={time.now.unix_ms}"`,
			// (issue 30: a short access log line; Caddy's own log without the
			// warnings this config makes on purpose)
			"\tlog {\n\t\t# a short line a request", "request>headers delete", "resp_headers delete",
			"output supervise_quiet {", "drop `HTTP/2 skipped because it requires TLS`",
		}, []string{"request_body", "storage", "debug", "h2c", "rewrite", "X-Sendfile-Type X-Sendfile", "handle_response",
			"admin endpoint on open interface"}}, // (the admin is on TCP here: its warning stays)
		{"TLS", map[string]string{"TLS_DOMAIN": "example.com, www.example.com", "ACME_DIRECTORY": "https://acme.test/dir",
			"EAB_KID": "kid", "EAB_HMAC_KEY": "mac", "STORAGE_PATH": "/data/certs", "H2C_ENABLED": "1"}, []string{
			"example.com, www.example.com {", "storage file_system /data/certs", "acme_ca https://acme.test/dir",
			"key_id kid", "mac_key mac", "protocols h1 h2 h2c h3",
		}, []string{"trusted_proxies", "http://:", "HTTP/2 skipped"}},
		{"prefix wins", map[string]string{"HTTP_PORT": "8080", "THRUSTER_HTTP_PORT": "9090", "TARGET_PORT": "4000"},
			[]string{"http://:9090 {", "http_port 9090", "port 4000"}, nil},
		{"switches", map[string]string{"X_SENDFILE_ENABLED": "false", "GZIP_COMPRESSION_ENABLED": "0",
			"LOG_REQUESTS": "f", "DEBUG": "true", "MAX_REQUEST_BODY": "1048576", "FORWARD_HEADERS": "false",
			"HTTP_IDLE_TIMEOUT": "5"}, []string{
			"header_up -X-Sendfile-Type", "max_size 1048576", "debug", "idle 5s",
		}, []string{"encode", "supervise_sendfile", "\tlog {", "trusted_proxies", "supervise_quiet"}},
		// with TLS, HTTP/3 needs write_idle for a write timeout at all
		{"TLS keeps write_idle", map[string]string{"TLS_DOMAIN": "example.com"}, []string{"write 30s"}, []string{"write_idle"}},
		// no hard write timeout: Caddy's write_idle stays, against stalled clients
		{"no write timeout", map[string]string{"HTTP_WRITE_TIMEOUT": "0"}, []string{"read_body 30s"}, []string{"\t\t\twrite ", "write_idle"}},
		{"gzip not on auth", map[string]string{"GZIP_COMPRESSION_DISABLE_ON_AUTH": "true"},
			[]string{"not header Cookie *", "not header Authorization *", "encode @compress zstd gzip"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := thrusterFor(t, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			src := c.caddyfile()
			for _, w := range tc.want {
				if !strings.Contains(src, w) {
					t.Errorf("no %q in\n%s", w, src)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(src, w) {
					t.Errorf("%q in\n%s", w, src)
				}
			}
			if _, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(src), nil); err != nil {
				t.Errorf("adapting:\n%s\n%v", src, err)
			}
		})
	}
}

func TestThrusterEnvErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TARGET_PORT": "0"}, `TARGET_PORT "0": must be a port number`},
		{map[string]string{"THRUSTER_HTTPS_PORT": "99999"}, `THRUSTER_HTTPS_PORT "99999": must be a port number`},
		{map[string]string{"GZIP_COMPRESSION_ENABLED": "on"}, `GZIP_COMPRESSION_ENABLED "on": must be true or false`},
		{map[string]string{"HTTP_READ_TIMEOUT": "30s"}, `HTTP_READ_TIMEOUT "30s": must be a whole number of seconds`},
		{map[string]string{"CACHE_SIZE": "big"}, `CACHE_SIZE "big": must be a whole number of bytes`},
		{map[string]string{"EAB_HMAC_KEY": "k"}, `EAB_KID and EAB_HMAC_KEY: set both or neither`},
	} {
		if _, err := thrusterFor(t, tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.env, err, tc.want)
		}
	}
	c, err := thrusterFor(t, map[string]string{"GZIP_COMPRESSION_JITTER": "16"})
	if err != nil || len(c.warnings) != 1 {
		t.Errorf("an accepted variable that changes nothing: %v, warnings %q", err, c.warnings)
	}
	// TARGET_PORT with --blue-green (issue 30: it was silently ignored)
	c = &thrusterConfig{BlueGreen: true}
	if err := c.readThrusterEnv(func(k string) (string, bool) { return "4000", k == "TARGET_PORT" }); err != nil ||
		len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "TARGET_PORT: not used with --blue-green") {
		t.Errorf("TARGET_PORT with --blue-green: %v, warnings %q", err, c.warnings)
	}
	// Thruster's cache sizes are supervise_public's
	c, err = thrusterFor(t, map[string]string{"CACHE_SIZE": "1000", "MAX_CACHE_ITEM_SIZE": "10"})
	c.PublicDir = "public"
	if err != nil || len(c.warnings) != 0 || !strings.Contains(c.caddyfile(), "cache_size 1000\n\t\tmax_item_size 10\n") {
		t.Errorf("CACHE_SIZE, MAX_CACHE_ITEM_SIZE: %v, warnings %q", err, c.warnings)
	}
	c, _ = thrusterFor(t, map[string]string{"MAX_CACHE_ITEM_SIZE": "0"})
	if c.PublicDir = "public"; !strings.Contains(c.caddyfile(), "cache_size 0\n") {
		t.Errorf("MAX_CACHE_ITEM_SIZE=0 keeps a cache")
	}
}

// Arguments become single Caddyfile tokens whatever they hold.
func TestQuoteToken(t *testing.T) {
	for _, arg := range []string{"plain", "two words", `a "quote"`, "{braces}", "back`tick \"and\" quote", "", "#hash", `back\slash`} {
		src := "{\n\tsupervise prog " + quoteToken(arg) + "\n}\n"
		out, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(src), nil)
		if err != nil {
			t.Errorf("%q: %v", arg, err)
			continue
		}
		want, _ := json.Marshal([]string{"prog", arg})
		if !strings.Contains(string(out), `"command":`+string(want)) {
			t.Errorf("%q: %s", arg, out)
		}
	}
}

// The flags' choices: blue/green and socket.
func TestThrusterFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*thrusterConfig)
		want []string
	}{
		{"blue-green", func(c *thrusterConfig) { c.BlueGreen, c.Ready = true, "/up" }, []string{"port auto", "ready http /up", "env PIDFILE tmp/pids/server.{supervise.port}.pid"}},
		{"socket", func(c *thrusterConfig) { c.Socket = "unix//run/app.sock" }, []string{"socket unix//run/app.sock"}},
		{"admin off", func(c *thrusterConfig) { c.AdminAddr = "off" }, []string{"admin off"}},
		{"a slow entrypoint, a load balancer, Caddy's log", func(c *thrusterConfig) {
			c.ReadyTimeout, c.ShutdownDelay, c.Output = 3*time.Minute, 5*time.Second, OutputLog
		}, []string{"ready_timeout 3m0s", "shutdown_delay 5s", "output log"}},
		{"defaults", func(c *thrusterConfig) {}, []string{"ready_timeout 1m0s", "output inherit", "lb_retries 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := thrusterFor(t, nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.set(c)
			if err := c.check(false); err != nil {
				t.Fatal(err)
			}
			src := c.caddyfile()
			for _, w := range tc.want {
				if !strings.Contains(src, w) {
					t.Errorf("no %q in\n%s", w, src)
				}
			}
			if _, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(src), nil); err != nil {
				t.Errorf("adapting:\n%s\n%v", src, err)
			}
		})
	}
	for _, tc := range []struct {
		set  func(*thrusterConfig)
		want string
	}{
		{func(c *thrusterConfig) { c.BlueGreen = true }, "--blue-green: needs --ready"},
		{func(c *thrusterConfig) { c.BlueGreen, c.Ready, c.Socket = true, "/up", "127.0.0.1:3000" }, "choose one"},
		{func(c *thrusterConfig) { c.Ready = "up" }, `--ready "up": a path`},
		{func(c *thrusterConfig) { c.Socket = "127.0.0.1:port" }, `--socket "127.0.0.1:port"`},
		{func(c *thrusterConfig) { c.PublicDir = "/no/such/dir" }, `--public-dir "/no/such/dir": not a directory`},
		{func(c *thrusterConfig) { c.ShutdownDelay = 40 * time.Second }, `--shutdown-delay 40s: 0 or more, and shorter than --drain-timeout 30s`},
		{func(c *thrusterConfig) { c.Output = "json" }, `--output "json": inherit, log or discard`},
		{func(c *thrusterConfig) { c.Name = "<<x" }, `--name "<<x": letters, digits`},
	} {
		c, _ := thrusterFor(t, nil)
		tc.set(c)
		if err := c.check(true); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
}

// hostileArgs are arguments a shell can hand `caddy supervise`: none may
// add, remove or change a directive, and each must reach the program byte
// for byte (but {supervise.port}, which is expanded).
var hostileArgs = []string{
	"{$HOME}", "{$SUPERVISE_T_HOSTILE}", "a{$SUPERVISE_T_HOSTILE:default}b", "{env.HOME}", "{env.SUPERVISE_T_HOSTILE}",
	"{supervise.portal}", "{http.request.uri}", "}\n\trespond pwned\n}\nhttp://x {", "{", "}", "#not a comment",
	"back`tick", "`", `"double"`, "it's", `back\slash`, `trailing\`, `\"`, "back`tick and \\\"escaped\\\"", "back`tick \\",
	"new\nline", "carriage\rreturn", "tab\there", "  spaces  ", "", "<<EOF", "<<ARG\nARG", "import x", "(snippet)", "ünïcødé ✓",
	"back`tick\r\\\"all three",
}

// `caddy supervise`'s config carries every argument exactly, and nothing
// else changes: the config of hostile arguments is the config of plain
// ones, but for the command; the supervise app does not expand {env.*} in
// them. The printed Caddyfile adapts to the same arguments, or says which
// one it cannot carry.
func TestThrusterHostileArguments(t *testing.T) {
	t.Setenv("SUPERVISE_T_HOSTILE", "}\n\trespond injected\n}\n")
	plain, err := thrusterFor(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain.Command = make([]string, len(hostileArgs)+1)
	for i := range plain.Command {
		plain.Command[i] = fmt.Sprintf("arg%d", i)
	}
	want, _, err := plain.configJSON()
	if err != nil {
		t.Fatal(err)
	}
	c, _ := thrusterFor(t, nil)
	c.Command = append([]string{"prog"}, hostileArgs...)
	got, _, err := c.configJSON()
	if err != nil {
		t.Fatal(err)
	}
	var wantCfg, gotCfg map[string]any
	json.Unmarshal(want, &wantCfg)
	json.Unmarshal(got, &gotCfg)
	procOf := func(cfg map[string]any) map[string]any {
		return cfg["apps"].(map[string]any)["supervise"].(map[string]any)["processes"].([]any)[0].(map[string]any)
	}
	var cmd []string
	for _, a := range procOf(gotCfg)["command"].([]any) {
		cmd = append(cmd, a.(string))
	}
	if !slices.Equal(cmd, c.Command) {
		t.Errorf("the config's command %q, want %q", cmd, c.Command)
	}
	if procOf(gotCfg)["literal_args"] != true {
		t.Error("the config's process is not literal_args")
	}
	delete(procOf(wantCfg), "command")
	delete(procOf(gotCfg), "command")
	if w, g := mustJSON(t, wantCfg), mustJSON(t, gotCfg); w != g {
		t.Errorf("hostile arguments changed the config:\n%s\nwant\n%s", g, w)
	}
	// the supervise app takes them as they are
	var whole struct{ Apps struct{ Supervise App } }
	if err := json.Unmarshal(got, &whole); err != nil {
		t.Fatal(err)
	}
	app := &whole.Apps.Supervise
	app.Processes[0].Command[0] = "true"
	if err := app.Processes[0].provision(0); err != nil {
		t.Fatal(err)
	}
	if got := app.Processes[0].argsFor(place{port: 4000})[1:]; !slices.Equal(got, hostileArgs) {
		t.Errorf("the process gets %q, want %q", got, hostileArgs)
	}

	// the printed Caddyfile
	src := c.caddyfile()
	out, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(src), nil)
	if err != nil {
		t.Fatalf("adapting the printed Caddyfile: %v\n%s", err, src)
	}
	var printed map[string]any
	json.Unmarshal(out, &printed)
	args := procOf(printed)["command"].([]any)
	if len(args) != len(c.Command) {
		t.Fatalf("the printed Caddyfile has %d arguments, want %d:\n%s", len(args), len(c.Command), src)
	}
	for i, a := range c.Command {
		if args[i] == a {
			continue
		}
		if !strings.Contains(src, fmt.Sprintf("# Note: argument %d (", i)) || strings.Contains(src, "{$") {
			t.Errorf("argument %d: the printed Caddyfile gives %q, want %q or a note that says why not", i, args[i], a)
		}
	}
	delete(procOf(printed), "command")
	delete(procOf(wantCfg), "literal_args")
	if p := procOf(printed); p["literal_args"] != true {
		t.Error("the printed Caddyfile has no literal_args")
	}
}

func mustJSON(t *testing.T, v any) string { return string(mustJSONRaw(t, v)) }

func mustJSONRaw(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A variable or flag that would not stay one value in the Caddyfile is an
// error that names it.
func TestThrusterHostileValues(t *testing.T) {
	t.Setenv("SUPERVISE_T_HOSTILE", "x")
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TLS_DOMAIN": "a.com {\n respond pwned\n}\nhttp://x"}, `TLS_DOMAIN "a.com {\n respond pwned\n}\nhttp://x": "a.com {\n respond pwned\n}\nhttp://x" is not a host name`},
		{map[string]string{"THRUSTER_TLS_DOMAIN": "ok.com, {$SUPERVISE_T_HOSTILE}"}, `THRUSTER_TLS_DOMAIN "ok.com, {$SUPERVISE_T_HOSTILE}": "{$SUPERVISE_T_HOSTILE}" is not a host name`},
		{map[string]string{"TLS_DOMAIN": "a.com:443"}, `"a.com:443" is not a host name`},
		{map[string]string{"STORAGE_PATH": "/data/{$SUPERVISE_T_HOSTILE}"}, `STORAGE_PATH "/data/{$SUPERVISE_T_HOSTILE}": control characters, braces and backticks are not supported here`},
		{map[string]string{"BAD_GATEWAY_PAGE": "/p/{http.request.uri}"}, `BAD_GATEWAY_PAGE "/p/{http.request.uri}": control characters`},
		{map[string]string{"STORAGE_PATH": "a\nb"}, `STORAGE_PATH "a\nb": control characters`},
		{map[string]string{"ACME_DIRECTORY": "https://acme.test/dir\n}"}, `ACME_DIRECTORY "https://acme.test/dir\n}": control characters`},
		{map[string]string{"ACME_DIRECTORY": "ftp://acme.test/"}, `ACME_DIRECTORY "ftp://acme.test/": must be an http:// or https:// URL`},
		{map[string]string{"EAB_KID": "k id", "EAB_HMAC_KEY": "m"}, `EAB_KID "k id": must be base64url`},
	} {
		if _, err := thrusterFor(t, tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.env, err, tc.want)
		}
	}
	for _, tc := range []struct {
		set  func(*thrusterConfig)
		want string
	}{
		{func(c *thrusterConfig) { c.Ready = "/up {$SUPERVISE_T_HOSTILE}" }, `--ready "/up {$SUPERVISE_T_HOSTILE}": control characters, braces`},
		{func(c *thrusterConfig) { c.PublicDir = "pub`lic" }, "--public-dir \"pub`lic\": control characters, braces"},
		{func(c *thrusterConfig) { c.Socket = "127.0.0.1:3000\n}" }, `--socket "127.0.0.1:3000\n}": control characters`},
		{func(c *thrusterConfig) { c.AdminAddr = "localhost:2019 {" }, `--admin "localhost:2019 {": control characters`},
		{func(c *thrusterConfig) { c.Metrics = "unix//run/m.sock" }, `--metrics "unix//run/m.sock": a TCP address`},
	} {
		c, _ := thrusterFor(t, nil)
		tc.set(c)
		if err := c.check(true); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
}

// The public directory, absolute as a Dockerfile's WORKDIR makes it, is
// supervise_public's root (a first argument starting with / would be read
// by Caddy as a path matcher).
func TestThrusterPublicDirAbsolute(t *testing.T) {
	c, err := thrusterFor(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.PublicDir = "/srv/app/public"
	out, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(c.caddyfile()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"max_item_size":1048576,"root":"/srv/app/public"}`) || strings.Contains(string(out), `"path":["/srv/app/public"]`) {
		t.Errorf("the public directory is not the handler's root:\n%s", out)
	}
}

// Caddy's "open interface" warning is left out of the one line's log only
// for an admin socket that no other user may write to (the default's
// |0600): on TCP, or on a socket without such a mode, it stays.
func TestQuietKeepsAdminWarning(t *testing.T) {
	for addr, dropped := range map[string]bool{
		"unix//tmp/app/admin.sock|0600": true,
		"unix//tmp/app/admin.sock|0700": true,
		"unix//tmp/app/admin.sock":      false,
		"unix//tmp/app/admin.sock|0660": false,
		"unix//tmp/app/admin.sock|0666": false,
		"127.0.0.1:2019":                false,
	} {
		c := &thrusterConfig{AdminAddr: addr}
		if got := slices.Contains(c.Quiet(), "admin endpoint on open interface; host checking disabled"); got != dropped {
			t.Errorf("admin %s: the warning dropped %v, want %v", addr, got, dropped)
		}
	}
}
