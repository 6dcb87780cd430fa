package supervise

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
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

	TLSDomains                    []string
	TargetPort, HTTPPort          int
	HTTPSPort                     int
	XSendfile, Gzip, GzipNoAuth   bool
	MaxRequestBody                int64
	Idle, Read, Write             time.Duration
	BadGatewayPage, StoragePath   string
	ACMEDirectory, EABKID, EABMAC string
	ForwardHeaders, LogRequests   bool
	H2C, Debug                    bool
	Page                          string // BadGatewayPage's absolute path, if the file exists

	// flags
	AdminAddr    string // admin endpoint address, or "off"
	Ready        string // HTTP readiness path; "" probes the port with TCP
	BlueGreen    bool   // port auto: restarts start the new instance beside the old one
	Socket       string // a socket Caddy holds for the app, instead of a port
	DrainTimeout time.Duration
	StopTimeout  time.Duration
	Wait         time.Duration // how long a request waits for the app
	PublicDir    string        // files served straight from disk
	Name         string        // the supervised process's name

	warnings []string // variables accepted that change nothing here
}

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
		case v.name == "CACHE_SIZE" || v.name == "MAX_CACHE_ITEM_SIZE":
			c.warnings = append(c.warnings, from+": Caddy keeps no response cache; files under the public directory are served from disk instead")
		case v.name == "GZIP_COMPRESSION_JITTER" && val != "0":
			c.warnings = append(c.warnings, from+": Caddy adds no jitter to compressed responses; use GZIP_COMPRESSION_DISABLE_ON_AUTH against BREACH")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	atoi := func(k string) int { n, _ := strconv.Atoi(vals[k]); return n }
	flag := func(k string) bool { b, _ := strconv.ParseBool(vals[k]); return b }
	seconds := func(k string) time.Duration { return time.Duration(atoi(k)) * time.Second }
	for _, d := range strings.Split(vals["TLS_DOMAIN"], ",") {
		if d = strings.TrimSpace(d); d != "" {
			c.TLSDomains = append(c.TLSDomains, d)
		}
	}
	c.TargetPort, c.HTTPPort, c.HTTPSPort = atoi("TARGET_PORT"), atoi("HTTP_PORT"), atoi("HTTPS_PORT")
	c.XSendfile, c.Gzip, c.GzipNoAuth = flag("X_SENDFILE_ENABLED"), flag("GZIP_COMPRESSION_ENABLED"), flag("GZIP_COMPRESSION_DISABLE_ON_AUTH")
	c.MaxRequestBody, _ = strconv.ParseInt(vals["MAX_REQUEST_BODY"], 10, 64)
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

// caddyfile writes the configuration as a Caddyfile.
func (c *thrusterConfig) caddyfile() string {
	c.Page = ""
	if c.BadGatewayPage != "" {
		if abs, err := filepath.Abs(c.BadGatewayPage); err == nil {
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
	"args": func(args []string) string {
		q := make([]string, len(args))
		for i, a := range args {
			q[i] = quoteToken(a)
		}
		return strings.Join(q, " ")
	},
	"dir":  filepath.Dir,
	"base": func(p string) string { return "/" + filepath.Base(p) },
}).Parse(`# Generated by ` + "`caddy supervise`" + ` from Thruster's environment variables and its flags.
{
	admin {{.AdminAddr}}
{{- if .Debug}}
	debug
{{- end}}
	http_port {{.HTTPPort}}
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
	servers {
		timeouts {
{{- if .Read}}
			read_body {{.Read}}
{{- end}}
{{- if .Write}}
			write {{.Write}}
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
	supervise {{args .Command}} {
		name {{.Name}}
{{- if .Socket}}
		socket {{q .Socket}}
{{- else if .BlueGreen}}
		port auto
{{- else}}
		port {{.TargetPort}}
{{- end}}
{{- if .Ready}}
		ready http {{q .Ready}}
{{- else if not .Socket}}
		ready tcp
{{- end}}
		drain_timeout {{.DrainTimeout}}
		stop_timeout {{.StopTimeout}}
	}
}

{{if .TLSDomains}}{{join .TLSDomains ", "}}{{else}}http://:{{.HTTPPort}}{{end}} {
{{- if .LogRequests}}
	log
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
	@public {
		file {
			root {{q .PublicDir}}
			try_files {path}
		}
		not path */
	}
	handle @public {
		root * {{q .PublicDir}}
		header /assets/* Cache-Control "public, max-age=31536000, immutable"
		file_server {
			precompressed br gzip
		}
	}
{{- end}}
	handle {
		reverse_proxy {
			dynamic supervise {{.Name}} {
				wait {{.Wait}}
			}
			lb_try_duration {{.Wait}}
{{- if .XSendfile}}
			header_up X-Sendfile-Type X-Sendfile
			@sendfile header X-Sendfile *
			handle_response @sendfile {
				copy_response_headers {
					exclude X-Sendfile Content-Length
				}
				root * /
				rewrite * {rp.header.X-Sendfile}
				file_server
			}
{{- else}}
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
`))

// quoteToken writes s as one Caddyfile token.
func quoteToken(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\r\n\"'`{}#\\") {
		return s
	}
	if !strings.Contains(s, "`") {
		return "`" + s + "`"
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
