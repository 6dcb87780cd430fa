package supervise

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Thruster's configuration for `caddy supervise`: Thruster's environment
// variables, with Thruster's defaults (a THRUSTER_ prefix wins over the
// plain name), and the command's flags, turned into a Caddyfile. The
// Caddyfile is what runs, and what --print-caddyfile prints.

// thrusterEnv is one of Thruster's variables: its name (without the
// THRUSTER_ prefix) and its default.
type thrusterEnv struct {
	name, def string
}

// thrusterVars are the variables `caddy supervise` reads.
var thrusterVars = []thrusterEnv{
	{"TLS_DOMAIN", ""},
	{"TARGET_PORT", "3000"},
	{"HTTP_PORT", "80"},
	{"HTTPS_PORT", "443"},
	{"X_SENDFILE_ENABLED", "true"},
	{"GZIP_COMPRESSION_ENABLED", "true"},
	{"GZIP_COMPRESSION_DISABLE_ON_AUTH", "false"},
	{"GZIP_COMPRESSION_JITTER", "32"},
	{"MAX_REQUEST_BODY", "0"},
	{"HTTP_IDLE_TIMEOUT", "60"},
	{"HTTP_READ_TIMEOUT", "30"},
	{"HTTP_WRITE_TIMEOUT", "30"},
	{"BAD_GATEWAY_PAGE", "./public/502.html"},
	{"STORAGE_PATH", "./storage/thruster"},
	{"ACME_DIRECTORY", ""},
	{"EAB_KID", ""},
	{"EAB_HMAC_KEY", ""},
	{"FORWARD_HEADERS", ""}, // off with TLS, on without
	{"LOG_REQUESTS", "true"},
	{"H2C_ENABLED", "false"},
	{"DEBUG", "false"},
	{"CACHE_SIZE", "67108864"},
	{"MAX_CACHE_ITEM_SIZE", "1048576"},
}

// thrusterConfig is what `caddy supervise` runs.
type thrusterConfig struct {
	Command []string
	Args    string   // the command as Caddyfile tokens, each after a space
	Notes   []string // what the printed Caddyfile cannot carry

	TLSDomains                    []string
	TargetPort, HTTPPort          int
	HTTPSPort                     int
	XSendfile, Gzip, GzipNoAuth   bool
	MaxRequestBody                int64
	CacheSize, MaxCacheItemSize   int64 // of supervise_public's memory cache
	Idle, Read, Write             time.Duration
	BadGatewayPage, StoragePath   string
	ACMEDirectory, EABKID, EABMAC string
	ForwardHeaders, LogRequests   bool
	H2C, Debug                    bool
	Page                          string // BadGatewayPage's absolute path, if the file exists

	// flags
	AdminAddr     string // admin endpoint address, or "off"
	Metrics       string // --metrics: an address that serves /metrics, or ""
	MetricsHost   string // its host ("": every interface)
	MetricsPort   int
	Ready         string        // HTTP readiness path; "" probes the port with TCP
	BlueGreen     bool          // port auto: restarts start the new instance beside the old one
	CanaryShare   int           // --canary: the new release's share of requests (0: no canary)
	CanaryWindow  time.Duration // and its window
	Socket        string        // a socket Caddy holds for the app, instead of a port
	DrainTimeout  time.Duration
	StopTimeout   time.Duration
	Wait          time.Duration // how long a request waits for the app
	ReadyTimeout  time.Duration // how long the app may take to get ready
	ShutdownDelay time.Duration // how long Caddy keeps accepting after SIGTERM
	Output        string        // the app's output mode
	PublicDir     string        // files served straight from disk
	Name          string        // the supervised process's name

	warnings []string // variables accepted that change nothing here
}

// Quiet lists Caddy's own warnings that this config makes on purpose and
// that its user cannot act on, which its log leaves out (QuietStderr);
// nothing with --debug. A warning about something the user chose stays:
// an admin endpoint on TCP, or on a unix socket without a mode that keeps
// other users out, gets Caddy's "open interface" warning.
func (c *thrusterConfig) Quiet() []string {
	if c.Debug {
		return nil
	}
	var drop []string
	if addr, mode, err := splitSocketMode(c.AdminAddr); err == nil && strings.HasPrefix(addr, "unix/") && mode != 0 && mode&0o022 == 0 {
		// a socket that no other user may write to (the default's |0600);
		// one without a mode, or that others may use, keeps the warning
		drop = append(drop, "admin endpoint on open interface; host checking disabled")
	}
	if len(c.TLSDomains) == 0 {
		drop = append(drop, "server is listening only on the HTTP port, so no automatic HTTPS will be applied to this server",
			"HTTP/2 skipped because it requires TLS", "HTTP/3 skipped because it requires TLS")
	}
	return drop
}

// Console reports whether Caddy's log goes to a terminal: it is written
// for people then, as Caddy's default log would be.
func (c *thrusterConfig) Console() bool { return isTerminal(os.Stderr) }

// StreamCloseDelay is how long a reload lets the old config's WebSockets
// run: as long as the old instance keeps its streams.
func (c *thrusterConfig) StreamCloseDelay() time.Duration { return DefaultStreamDrainTimeout }

// lookupThruster reads one of Thruster's variables: THRUSTER_NAME, then
// NAME, then the default. It returns the name it was read from, for
// errors.
func lookupThruster(getenv func(string) (string, bool), v thrusterEnv) (value, from string, set bool) {
	if val, ok := getenv("THRUSTER_" + v.name); ok {
		return val, "THRUSTER_" + v.name, true
	}
	if val, ok := getenv(v.name); ok {
		return val, v.name, true
	}
	return v.def, v.name, false
}

// readThrusterEnv fills c from Thruster's variables. A bad value is an
// error that names the variable and the value.
func (c *thrusterConfig) readThrusterEnv(getenv func(string) (string, bool)) error {
	vals := make(map[string]string)
	set := make(map[string]bool)
	var errs []string
	for _, v := range thrusterVars {
		val, from, ok := lookupThruster(getenv, v)
		vals[v.name], set[v.name] = val, ok
		bad := func(why string) { errs = append(errs, fmt.Sprintf("%s %q: %s", from, val, why)) }
		switch v.name {
		case "TARGET_PORT", "HTTP_PORT", "HTTPS_PORT":
			if n, err := strconv.Atoi(val); err != nil || n < 1 || n > 65535 {
				bad("must be a port number")
			}
		case "X_SENDFILE_ENABLED", "GZIP_COMPRESSION_ENABLED", "GZIP_COMPRESSION_DISABLE_ON_AUTH",
			"LOG_REQUESTS", "H2C_ENABLED", "DEBUG", "FORWARD_HEADERS":
			if _, err := strconv.ParseBool(val); err != nil && !(v.name == "FORWARD_HEADERS" && val == "") {
				bad("must be true or false (1, t, true, 0, f, false)")
			}
		case "MAX_REQUEST_BODY", "CACHE_SIZE", "MAX_CACHE_ITEM_SIZE", "GZIP_COMPRESSION_JITTER":
			if n, err := strconv.ParseInt(val, 10, 64); err != nil || n < 0 {
				bad("must be a whole number of bytes, 0 or more")
			}
		case "HTTP_IDLE_TIMEOUT", "HTTP_READ_TIMEOUT", "HTTP_WRITE_TIMEOUT":
			if n, err := strconv.Atoi(val); err != nil || n < 0 {
				bad("must be a whole number of seconds, 0 or more")
			}
		}
		switch {
		case !ok:
		case v.name == "GZIP_COMPRESSION_JITTER" && val != "0":
			c.warnings = append(c.warnings, from+": Caddy adds no jitter to compressed responses; use GZIP_COMPRESSION_DISABLE_ON_AUTH against BREACH")
		case v.name == "TARGET_PORT" && (c.BlueGreen || c.Socket != ""):
			c.warnings = append(c.warnings, from+": not used with --blue-green or --socket, which give the app its own port or socket (in $PORT, {supervise.port})")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	atoi := func(k string) int { n, _ := strconv.Atoi(vals[k]); return n }
	flag := func(k string) bool { b, _ := strconv.ParseBool(vals[k]); return b }
	seconds := func(k string) time.Duration { return time.Duration(atoi(k)) * time.Second }
	for _, d := range strings.Split(vals["TLS_DOMAIN"], ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if !isHostName(d) {
			_, from, _ := lookupThruster(getenv, thrusterEnv{name: "TLS_DOMAIN"})
			return fmt.Errorf("%s %q: %q is not a host name (letters, digits, '-' and '.', optionally starting with '*.')", from, vals["TLS_DOMAIN"], d)
		}
		c.TLSDomains = append(c.TLSDomains, d)
	}
	for _, v := range []struct{ name, check string }{
		{"STORAGE_PATH", "path"}, {"BAD_GATEWAY_PAGE", "path"}, {"ACME_DIRECTORY", "url"},
		{"EAB_KID", "key"}, {"EAB_HMAC_KEY", "key"},
	} {
		_, from, _ := lookupThruster(getenv, thrusterEnv{name: v.name})
		if err := checkValue(v.check, vals[v.name]); err != nil {
			return fmt.Errorf("%s %q: %v", from, vals[v.name], err)
		}
	}
	c.TargetPort, c.HTTPPort, c.HTTPSPort = atoi("TARGET_PORT"), atoi("HTTP_PORT"), atoi("HTTPS_PORT")
	c.XSendfile, c.Gzip, c.GzipNoAuth = flag("X_SENDFILE_ENABLED"), flag("GZIP_COMPRESSION_ENABLED"), flag("GZIP_COMPRESSION_DISABLE_ON_AUTH")
	c.MaxRequestBody, _ = strconv.ParseInt(vals["MAX_REQUEST_BODY"], 10, 64)
	c.CacheSize, _ = strconv.ParseInt(vals["CACHE_SIZE"], 10, 64)
	c.MaxCacheItemSize, _ = strconv.ParseInt(vals["MAX_CACHE_ITEM_SIZE"], 10, 64)
	if c.MaxCacheItemSize == 0 {
		c.CacheSize = 0 // as Thruster: nothing fits
	}
	c.Idle, c.Read, c.Write = seconds("HTTP_IDLE_TIMEOUT"), seconds("HTTP_READ_TIMEOUT"), seconds("HTTP_WRITE_TIMEOUT")
	c.BadGatewayPage, c.StoragePath = vals["BAD_GATEWAY_PAGE"], vals["STORAGE_PATH"]
	c.ACMEDirectory, c.EABKID, c.EABMAC = vals["ACME_DIRECTORY"], vals["EAB_KID"], vals["EAB_HMAC_KEY"]
	if (c.EABKID == "") != (c.EABMAC == "") {
		return fmt.Errorf("EAB_KID and EAB_HMAC_KEY: set both or neither")
	}
	c.ForwardHeaders = len(c.TLSDomains) == 0
	if set["FORWARD_HEADERS"] && vals["FORWARD_HEADERS"] != "" {
		c.ForwardHeaders = flag("FORWARD_HEADERS")
	}
	c.LogRequests, c.H2C, c.Debug = flag("LOG_REQUESTS"), flag("H2C_ENABLED"), flag("DEBUG")
	return nil
}

// isHostName reports whether s is a DNS host name, or a wildcard one
// (`*.example.com`), as TLS_DOMAIN lists them.
func isHostName(s string) bool {
	s = strings.TrimPrefix(s, "*.")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// checkValue checks a value that `caddy supervise` writes into its
// Caddyfile, so that it stays one value: a path, a URL or a key has no
// control character, no brace (Caddy would read a placeholder, or a
// `{$VAR}` to substitute) and no backtick (the value is written between
// backticks). A URL is an http(s) URL without white space; a key is
// base64url.
func checkValue(kind, v string) error {
	if strings.ContainsAny(v, "{}`") || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("control characters, braces and backticks are not supported here")
	}
	switch kind {
	case "url":
		if v == "" {
			return nil
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(v, " \t\"'") {
			return fmt.Errorf("must be an http:// or https:// URL")
		}
	case "address":
		if strings.ContainsAny(v, " \t\"'\\") {
			return fmt.Errorf("white space, quotes and backslashes are not supported here")
		}
	case "key":
		if strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=") != "" {
			return fmt.Errorf("must be base64url (letters, digits, '-', '_', '=')")
		}
	}
	return nil
}

// caddyfile writes the configuration as a Caddyfile, for
// --print-caddyfile: with the command's arguments as they are, preceded by
// a comment for each one a Caddyfile cannot carry.
func (c *thrusterConfig) caddyfile() string {
	c.Args = ""
	c.Notes = nil
	for i, a := range c.Command {
		printed := strings.ReplaceAll(a, "{$", `{\$`)
		var why []string
		if printed != a {
			why = append(why, `it holds "{" then "$", which Caddy would substitute from its environment: printed with {\$ instead`)
		}
		token, ok := quoteArg(printed)
		if !ok {
			printed = strings.ReplaceAll(printed, "\r", "")
			token, _ = quoteArg(printed)
			why = append(why, "no Caddyfile quoting carries its mix of backticks, a backslash before a quote and carriage returns: printed without the carriage returns")
		}
		if len(why) > 0 {
			c.Notes = append(c.Notes, fmt.Sprintf("argument %d (%q) cannot be written in a Caddyfile as it is: %s; caddy supervise runs it exactly as given",
				i, printed, strings.Join(why, "; ")))
		}
		c.Args += " " + token
	}
	return c.render()
}

// configJSON is the configuration that runs: the Caddyfile with a stand-in
// for each argument of the command, adapted, and the arguments put into
// the JSON afterwards (as `literal_args`), so that they reach the program
// byte for byte, whatever they hold: no Caddyfile quoting or `{$VAR}`
// substitution touches them, and the supervise app does not expand
// `{env.*}` in them.
func (c *thrusterConfig) configJSON() ([]byte, []caddyconfig.Warning, error) {
	c.Args = ""
	standIns := make([]string, len(c.Command))
	for i := range c.Command {
		standIns[i] = fmt.Sprintf("caddy-supervise-argument-%d", i)
		c.Args += " " + standIns[i]
	}
	src := c.render()
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "caddy supervise"})
	if err != nil {
		return nil, nil, fmt.Errorf("the generated Caddyfile: %v", err)
	}
	var whole, apps map[string]json.RawMessage
	if err := json.Unmarshal(cfgJSON, &whole); err != nil {
		return nil, nil, err
	}
	if err := json.Unmarshal(whole["apps"], &apps); err != nil {
		return nil, nil, err
	}
	var app App
	if err := json.Unmarshal(apps["supervise"], &app); err != nil {
		return nil, nil, err
	}
	if len(app.Processes) != 1 || !slices.Equal(app.Processes[0].Command, standIns) {
		return nil, nil, fmt.Errorf("the generated config: the command is not where it was written")
	}
	app.Processes[0].Command = c.Command
	if apps["supervise"], err = json.Marshal(&app); err != nil {
		return nil, nil, err
	}
	if whole["apps"], err = json.Marshal(apps); err != nil {
		return nil, nil, err
	}
	out, err := json.Marshal(whole)
	return out, warnings, err
}

// render executes the template with c.
func (c *thrusterConfig) render() string {
	c.Page = ""
	if c.BadGatewayPage != "" {
		// the absolute path holds the working directory, which no check saw
		if abs, err := filepath.Abs(c.BadGatewayPage); err == nil && checkValue("path", abs) == nil {
			if fi, err := os.Stat(abs); err == nil && !fi.IsDir() {
				c.Page = abs
			}
		}
	}
	var b strings.Builder
	if err := caddyfileTemplate.Execute(&b, c); err != nil {
		panic(err) // the template and its data are this file's
	}
	return b.String()
}

// caddyfileTemplate is the Caddyfile of `caddy supervise`.
var caddyfileTemplate = template.Must(template.New("Caddyfile").Funcs(template.FuncMap{
	"q":    quoteToken,
	"join": strings.Join,
	"dir":  filepath.Dir,
	"base": func(p string) string { return "/" + filepath.Base(p) },
}).Parse(`# Generated by ` + "`caddy supervise`" + ` from Thruster's environment variables and its flags.
{{- range .Notes}}
# Note: {{.}}
{{- end}}
{
	admin {{q .AdminAddr}}
{{- if .Debug}}
	debug
{{- end}}
{{- with .Quiet}}
	# Caddy's log, without the warnings this config makes on purpose
	log {
		output supervise_quiet {
{{- range .}}
			drop {{q .}}
{{- end}}
		}
{{- if $.Console}}
		format console
{{- end}}
	}
{{- end}}
	http_port {{.HTTPPort}}
{{- if .ShutdownDelay}}
	shutdown_delay {{.ShutdownDelay}}
{{- end}}
	https_port {{.HTTPSPort}}
{{- if .TLSDomains}}
	storage file_system {{q .StoragePath}}
{{- if .ACMEDirectory}}
	acme_ca {{q .ACMEDirectory}}
{{- end}}
{{- if .EABKID}}
	acme_eab {
		key_id {{q .EABKID}}
		mac_key {{q .EABMAC}}
	}
{{- end}}
{{- end}}
{{- if .PublicDir}}
	order supervise_public after encode
{{- end}}
	servers {
		timeouts {
{{- if .Read}}
			read_body {{.Read}}
{{- end}}
{{- if .Write}}
			write {{.Write}}
{{- if not .TLSDomains}}
			# the hard write timeout bounds a stalled client, as in Thruster;
			# Caddy's write_idle would also keep files off sendfile (with
			# TLS there is no sendfile, and HTTP/3 needs write_idle)
			write_idle -1s
{{- end}}
{{- end}}
{{- if .Idle}}
			idle {{.Idle}}
{{- end}}
		}
{{- if .ForwardHeaders}}
		trusted_proxies static 0.0.0.0/0 ::/0
{{- end}}
{{- if .H2C}}
		protocols h1 h2 h2c{{if .TLSDomains}} h3{{end}}
{{- end}}
	}
	supervise{{.Args}} {
		name {{.Name}}
		literal_args
{{- if .Socket}}
		socket {{q .Socket}}
{{- else if .BlueGreen}}
		port auto
		# two instances run side by side: Rails' server must not find the
		# other's pidfile (a Puma config may read PIDFILE too)
		env PIDFILE tmp/pids/server.{supervise.port}.pid
{{- if .CanaryShare}}
		canary {{.CanaryShare}}% {{.CanaryWindow}}
{{- end}}
{{- else}}
		port {{.TargetPort}}
{{- end}}
{{- if .Ready}}
		ready http {{q .Ready}}
{{- else if not .Socket}}
		ready tcp
{{- end}}
{{- if or .Ready (not .Socket)}}
		ready_timeout {{.ReadyTimeout}}
{{- end}}
		drain_timeout {{.DrainTimeout}}
		stop_timeout {{.StopTimeout}}
		output {{.Output}}
	}
}

{{if .TLSDomains}}{{join .TLSDomains ", "}}{{else}}http://:{{.HTTPPort}}{{end}} {
{{- if .LogRequests}}
	log {
		# a short line a request: its headers and TLS details left out
		format filter {
			wrap {{if .Console}}console{{else}}json{{end}}
			request>headers delete
			request>tls delete
			resp_headers delete
		}
	}
{{- end}}
{{- if .MaxRequestBody}}
	request_body {
		max_size {{.MaxRequestBody}}
	}
{{- end}}
{{- if and .Gzip .GzipNoAuth}}
	@compress {
		not header Cookie *
		not header Authorization *
		not header X-Csrf-Token *
	}
	encode @compress zstd gzip
{{- else if .Gzip}}
	encode zstd gzip
{{- end}}
	@no_request_start not header X-Request-Start *
	request_header @no_request_start X-Request-Start "t={time.now.unix_ms}"
{{- if .PublicDir}}
	# files of the public directory, small ones from memory; other
	# requests go on to the app
	supervise_public {
		root {{q .PublicDir}}
		cache_size {{.CacheSize}}
		max_item_size {{.MaxCacheItemSize}}
		immutable /assets/
	}
{{- end}}
	handle {
{{- if .XSendfile}}
		# the app's X-Sendfile responses: the file it names, opened as it
		# is (a file path, never a URL)
		supervise_sendfile
{{- end}}
		# WebSockets (Action Cable) and server-sent events: kept by the old
		# instance across restarts and reloads, ended cleanly at exit
		supervise_streams
		reverse_proxy {
			dynamic supervise {{.Name}} {
				wait {{.Wait}}
			}
			# the wait for the app is the upstream's (it ends when the client
			# goes away); reverse_proxy only retries a request cut by a crash
			lb_retries 3
			# a reload keeps the WebSockets open, as long as the old
			# instance keeps them (stream_drain_timeout)
			stream_close_delay {{.StreamCloseDelay}}
{{- if not .XSendfile}}
			header_up -X-Sendfile-Type
{{- end}}
		}
	}
{{- if .Page}}
	handle_errors 502 503 {
		root * {{q (dir .Page)}}
		rewrite * {{q (base .Page)}}
		file_server
	}
{{- end}}
}
{{- if .MetricsPort}}

http://:{{.MetricsPort}} {
{{- if .MetricsHost}}
	bind {{q .MetricsHost}}
{{- end}}
	metrics
}
{{- end}}
`))

// quoteToken writes s as one Caddyfile token (see quoteArg); a value it
// cannot carry was refused before (checkValue).
func quoteToken(s string) string {
	token, _ := quoteArg(s)
	return token
}

// quoteArg writes s as one Caddyfile token that Caddy's lexer reads back
// as s: bare if nothing in it is special; between backticks, which take
// everything literally, if it has no backtick; between double quotes,
// where only \" is an escape, if no backslash comes right before a quote
// or at the end; else as a heredoc, which drops carriage returns. It
// reports false when none of them fits. (Caddy's substitution of {$VAR}
// in the raw text happens before any of them: the caller looks for it.)
func quoteArg(s string) (string, bool) {
	switch {
	case s != "" && !strings.ContainsAny(s, " \t\r\n\"'`{}#\\<"):
		return s, true
	case !strings.Contains(s, "`"):
		return "`" + s + "`", true
	case !strings.Contains(s, `\"`) && !strings.HasSuffix(s, `\`):
		return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`, true
	case !strings.Contains(s, "\r"):
		marker := "ARG"
		for strings.Contains(s, marker) {
			marker += "_"
		}
		return "<<" + marker + "\n" + s + "\n" + marker, true
	}
	return "`" + s + "`", false
}
