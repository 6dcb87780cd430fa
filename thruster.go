package supervise

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	command []string

	tlsDomains                    []string
	targetPort, httpPort          int
	httpsPort                     int
	xSendfile, gzip, gzipNoAuth   bool
	maxRequestBody                int64
	idle, read, write             time.Duration
	badGatewayPage, storagePath   string
	acmeDirectory, eabKID, eabMAC string
	forwardHeaders, logRequests   bool
	h2c, debug                    bool

	// flags
	admin        string // admin endpoint address, or "off"
	ready        string // HTTP readiness path; "" probes the port with TCP
	blueGreen    bool   // port auto: restarts start the new instance beside the old one
	socket       string // a socket Caddy holds for the app, instead of a port
	drainTimeout time.Duration
	stopTimeout  time.Duration
	wait         time.Duration // how long a request waits for the app
	publicDir    string        // files served straight from disk
	name         string        // the supervised process's name

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
			c.tlsDomains = append(c.tlsDomains, d)
		}
	}
	c.targetPort, c.httpPort, c.httpsPort = atoi("TARGET_PORT"), atoi("HTTP_PORT"), atoi("HTTPS_PORT")
	c.xSendfile, c.gzip, c.gzipNoAuth = flag("X_SENDFILE_ENABLED"), flag("GZIP_COMPRESSION_ENABLED"), flag("GZIP_COMPRESSION_DISABLE_ON_AUTH")
	c.maxRequestBody, _ = strconv.ParseInt(vals["MAX_REQUEST_BODY"], 10, 64)
	c.idle, c.read, c.write = seconds("HTTP_IDLE_TIMEOUT"), seconds("HTTP_READ_TIMEOUT"), seconds("HTTP_WRITE_TIMEOUT")
	c.badGatewayPage, c.storagePath = vals["BAD_GATEWAY_PAGE"], vals["STORAGE_PATH"]
	c.acmeDirectory, c.eabKID, c.eabMAC = vals["ACME_DIRECTORY"], vals["EAB_KID"], vals["EAB_HMAC_KEY"]
	if (c.eabKID == "") != (c.eabMAC == "") {
		return fmt.Errorf("EAB_KID and EAB_HMAC_KEY: set both or neither")
	}
	c.forwardHeaders = len(c.tlsDomains) == 0
	if set["FORWARD_HEADERS"] && vals["FORWARD_HEADERS"] != "" {
		c.forwardHeaders = flag("FORWARD_HEADERS")
	}
	c.logRequests, c.h2c, c.debug = flag("LOG_REQUESTS"), flag("H2C_ENABLED"), flag("DEBUG")
	return nil
}

// caddyfile writes the configuration as a Caddyfile.
func (c *thrusterConfig) caddyfile() string {
	var b strings.Builder
	w := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("\t", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	w(0, "# Generated by `caddy supervise` from Thruster's environment variables and its flags.")
	w(0, "{")
	if c.admin == "off" {
		w(1, "admin off")
	} else {
		w(1, "admin %s", c.admin)
	}
	if c.debug {
		w(1, "debug")
	}
	w(1, "http_port %d", c.httpPort)
	w(1, "https_port %d", c.httpsPort)
	if len(c.tlsDomains) > 0 {
		w(1, "storage file_system %s", quoteToken(c.storagePath))
		if c.acmeDirectory != "" {
			w(1, "acme_ca %s", quoteToken(c.acmeDirectory))
		}
		if c.eabKID != "" {
			w(1, "acme_eab {")
			w(2, "key_id %s", quoteToken(c.eabKID))
			w(2, "mac_key %s", quoteToken(c.eabMAC))
			w(1, "}")
		}
	}
	w(1, "servers {")
	w(2, "timeouts {")
	if c.read > 0 {
		w(3, "read_body %s", c.read)
	}
	if c.write > 0 {
		w(3, "write %s", c.write)
	}
	if c.idle > 0 {
		w(3, "idle %s", c.idle)
	}
	w(2, "}")
	if c.forwardHeaders {
		w(2, "trusted_proxies static 0.0.0.0/0 ::/0")
	}
	if c.h2c {
		protocols := "h1 h2 h2c"
		if len(c.tlsDomains) > 0 {
			protocols += " h3"
		}
		w(2, "protocols %s", protocols)
	}
	w(1, "}")

	args := make([]string, len(c.command))
	for i, a := range c.command {
		args[i] = quoteToken(a)
	}
	w(1, "supervise %s {", strings.Join(args, " "))
	w(2, "name %s", c.name)
	switch {
	case c.socket != "":
		w(2, "socket %s", quoteToken(c.socket))
	case c.blueGreen:
		w(2, "port auto")
	default:
		w(2, "port %d", c.targetPort)
	}
	switch {
	case c.ready != "":
		w(2, "ready http %s", quoteToken(c.ready))
	case c.socket == "":
		w(2, "ready tcp")
	}
	w(2, "drain_timeout %s", c.drainTimeout)
	w(2, "stop_timeout %s", c.stopTimeout)
	w(1, "}")
	w(0, "}")
	w(0, "")

	site := fmt.Sprintf("http://:%d", c.httpPort)
	if len(c.tlsDomains) > 0 {
		site = strings.Join(c.tlsDomains, ", ")
	}
	w(0, "%s {", site)
	if c.logRequests {
		w(1, "log")
	}
	if c.maxRequestBody > 0 {
		w(1, "request_body {")
		w(2, "max_size %d", c.maxRequestBody)
		w(1, "}")
	}
	if c.gzip {
		if c.gzipNoAuth {
			w(1, "@compress {")
			w(2, "not header Cookie *")
			w(2, "not header Authorization *")
			w(2, "not header X-Csrf-Token *")
			w(1, "}")
			w(1, "encode @compress zstd gzip")
		} else {
			w(1, "encode zstd gzip")
		}
	}
	w(1, "@no_request_start not header X-Request-Start *")
	w(1, "request_header @no_request_start X-Request-Start \"t={time.now.unix_ms}\"")
	if c.publicDir != "" {
		w(1, "@public {")
		w(2, "file {")
		w(3, "root %s", quoteToken(c.publicDir))
		w(3, "try_files {path}")
		w(2, "}")
		w(2, "not path */")
		w(1, "}")
		w(1, "handle @public {")
		w(2, "root * %s", quoteToken(c.publicDir))
		w(2, "header /assets/* Cache-Control \"public, max-age=31536000, immutable\"")
		w(2, "file_server {")
		w(3, "precompressed br gzip")
		w(2, "}")
		w(1, "}")
	}
	w(1, "handle {")
	w(2, "reverse_proxy {")
	w(3, "dynamic supervise %s {", c.name)
	w(4, "wait %s", c.wait)
	w(3, "}")
	w(3, "lb_try_duration %s", c.wait)
	if c.xSendfile {
		w(3, "header_up X-Sendfile-Type X-Sendfile")
		w(3, "@sendfile header X-Sendfile *")
		w(3, "handle_response @sendfile {")
		w(4, "copy_response_headers {")
		w(5, "exclude X-Sendfile Content-Length")
		w(4, "}")
		w(4, "root * /")
		w(4, "rewrite * {rp.header.X-Sendfile}")
		w(4, "file_server")
		w(3, "}")
	} else {
		w(3, "header_up -X-Sendfile-Type")
	}
	w(2, "}")
	w(1, "}")
	if c.badGatewayPage != "" {
		if abs, err := filepath.Abs(c.badGatewayPage); err == nil {
			if fi, err := os.Stat(abs); err == nil && !fi.IsDir() {
				w(1, "handle_errors 502 503 {")
				w(2, "root * %s", quoteToken(filepath.Dir(abs)))
				w(2, "rewrite * %s", quoteToken("/"+filepath.Base(abs)))
				w(2, "file_server") // with the error's status
				w(1, "}")
			}
		}
	}
	w(0, "}")
	return b.String()
}

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
