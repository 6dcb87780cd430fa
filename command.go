package supervise

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// `caddy supervise [flags] -- COMMAND [ARGS…]`: Thruster's one line, with
// Caddy. It reads Thruster's environment variables, builds a Caddyfile
// (printed by --print-caddyfile instead of running), and runs it: the
// command is supervised with PORT set, Caddy proxies to it, and Caddy exits
// with its status when it ends.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "supervise",
		Usage: "[--ready <path>] [--blue-green [--canary <share>%:<window>] | --socket <address>] [--drain-timeout <d>] [--stop-timeout <d>] [--wait <d>] [--ready-timeout <d>] [--shutdown-delay <d>] [--output inherit|log|discard] [--public-dir <dir>] [--admin <address>|off] [--metrics <address>] [--print-caddyfile] -- <command> [<args>...]",
		Short: "Runs an app server behind Caddy, configured like Thruster",
		Long: `
Starts COMMAND as a supervised process (PORT set to TARGET_PORT, default
3000), and serves it through Caddy, configured from Thruster's environment
variables (TLS_DOMAIN, HTTP_PORT, X_SENDFILE_ENABLED, …; a THRUSTER_ prefix
wins): automatic HTTPS for TLS_DOMAIN, compression, X-Sendfile, files of the
public directory served from disk, X-Request-Start, requests that wait for
the app while it boots or restarts, and on SIGTERM a drain of the requests in
flight before the app gets its signal. Caddy exits with the app's status
when the app ends.

--print-caddyfile prints the equivalent Caddyfile instead of running: what
'caddy run --adapter caddyfile --config' would run.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("ready", "", "HTTP path that answers 2xx once the app is ready, e.g. /up (default: a TCP connect to its port)")
			cmd.Flags().Bool("blue-green", false, "restarts start the new instance on a free port beside the old one (needs --ready)")
			cmd.Flags().String("canary", "", "with --blue-green: a restart's or reload's new release first takes this share of new requests for up to this window, and is rolled back if it fails more than the old one, e.g. 10%:30s (default: off)")
			cmd.Flags().String("socket", "", "a listening socket Caddy holds for the app (e.g. unix//run/app.sock), instead of TARGET_PORT")
			cmd.Flags().Duration("drain-timeout", 30*time.Second, "how long requests in flight may take after SIGTERM before the app is signalled")
			cmd.Flags().Duration("stop-timeout", 10*time.Second, "how long the app may take to exit after its signal before it is killed")
			cmd.Flags().Duration("wait", 30*time.Second, "how long a request waits for the app while it boots or restarts (then 503, or BAD_GATEWAY_PAGE)")
			cmd.Flags().Duration("ready-timeout", DefaultReadyTimeout, "how long the app may take to get ready after a start (a Docker entrypoint's migrations included) before it is stopped as failed")
			cmd.Flags().Duration("shutdown-delay", 0, "on SIGTERM, keep accepting new connections this long before the drain (while a load balancer takes this instance out)")
			cmd.Flags().String("output", OutputInherit, "the app's output: inherit (as it is, on Caddy's stdout and stderr, as Thruster passes it), log (as entries of Caddy's log) or discard")
			cmd.Flags().String("public-dir", "./public", "files served straight from disk when they exist (empty: none)")
			cmd.Flags().String("admin", "", "Caddy's admin endpoint (/supervise/ routes, /metrics), or off (default: a unix socket only Caddy's user can use: in $XDG_RUNTIME_DIR, else ./tmp/caddy-supervise/admin.sock, else in a new private directory; logged at start)")
			cmd.Flags().String("metrics", "", "also serve Prometheus metrics on this TCP address, e.g. :9090 (no admin API there)")
			cmd.Flags().String("name", "app", "the supervised process's name (logs, admin API, metrics)")
			cmd.Flags().Bool("print-caddyfile", false, "print the equivalent Caddyfile and exit")
			cmd.Args = cobra.ArbitraryArgs
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				code, err := cmdSupervise(cmd, args)
				if err != nil {
					return err
				}
				os.Exit(code)
				return nil
			}
		},
	})
}

// cmdSupervise builds the config and runs it, or prints it.
func cmdSupervise(cmd *cobra.Command, args []string) (int, error) {
	if cmd.ArgsLenAtDash() < 0 && len(args) > 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("put -- before the command: caddy supervise [flags] -- %s", strings.Join(args, " "))
	}
	c, err := thrusterFromFlags(cmd, args)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	print, _ := cmd.Flags().GetBool("print-caddyfile")
	adminDefault := c.AdminAddr == ""
	cleanup, err := c.resolveAdmin(!print)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if print {
		fmt.Print(c.caddyfile())
		return 0, nil
	}
	caddy.OnExit(func(context.Context) { cleanup() })
	cfgJSON, warnings, err := c.configJSON()
	if err != nil {
		cleanup()
		return caddy.ExitCodeFailedStartup, err
	}
	if adminDefault {
		path := strings.TrimPrefix(strings.TrimSuffix(c.AdminAddr, "|0600"), "unix/")
		caddy.Log().Info("admin endpoint (/supervise/ and /metrics) on a unix socket only Caddy's user can use",
			zap.String("address", c.AdminAddr), zap.String("try", "curl --unix-socket "+path+" http://localhost/supervise/"))
	}
	if c.AdminAddr != "off" && !strings.HasPrefix(c.AdminAddr, "unix/") {
		// (Caddy itself warns only of a non-loopback address)
		caddy.Log().Warn("the admin endpoint is on TCP: every local user (and every container sharing the network) can reach it, and it can restart and signal the app and load any config; leave --admin out for a unix socket only Caddy's user can use",
			zap.String("address", c.AdminAddr))
	}
	for _, w := range warnings {
		caddy.Log().Warn(w.String())
	}
	for _, w := range c.warnings {
		caddy.Log().Warn("variable accepted, nothing to do", zap.String("why", w))
	}
	caddy.TrapSignals()
	go func() {
		// a second Ctrl-C: Caddy exits at once ("force quit"), without its
		// exit callbacks; the admin socket's directory goes first (best
		// effort: Caddy's handler runs beside this one; a directory left
		// behind is removed by the next start, removeStaleAdminDirs)
		sigint := make(chan os.Signal, 2)
		signal.Notify(sigint, os.Interrupt)
		<-sigint
		<-sigint
		cleanup()
	}()
	if err := caddy.Load(cfgJSON, true); err != nil {
		cleanup()
		return caddy.ExitCodeFailedStartup, err
	}
	select {}
}

// thrusterFromFlags reads the environment and the flags.
func thrusterFromFlags(cmd *cobra.Command, args []string) (*thrusterConfig, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("a command is required: caddy supervise [flags] -- bin/rails server")
	}
	f := cmd.Flags()
	c := &thrusterConfig{Command: args}
	c.Ready, _ = f.GetString("ready")
	c.BlueGreen, _ = f.GetBool("blue-green")
	c.Socket, _ = f.GetString("socket")
	canary, _ := f.GetString("canary")
	if err := c.parseCanary(canary); err != nil {
		return nil, err
	}
	c.DrainTimeout, _ = f.GetDuration("drain-timeout")
	c.StopTimeout, _ = f.GetDuration("stop-timeout")
	c.Wait, _ = f.GetDuration("wait")
	c.ReadyTimeout, _ = f.GetDuration("ready-timeout")
	c.ShutdownDelay, _ = f.GetDuration("shutdown-delay")
	c.Output, _ = f.GetString("output")
	c.PublicDir, _ = f.GetString("public-dir")
	c.AdminAddr, _ = f.GetString("admin")
	c.Metrics, _ = f.GetString("metrics")
	c.Name, _ = f.GetString("name")
	if err := c.check(f.Changed("public-dir")); err != nil {
		return nil, err
	}
	return c, c.readThrusterEnv(os.LookupEnv)
}

// parseCanary reads --canary SHARE%:WINDOW.
func (c *thrusterConfig) parseCanary(v string) error {
	if v == "" {
		return nil
	}
	share, window, ok := strings.Cut(v, ":")
	pct, pctOK := strings.CutSuffix(share, "%")
	n, err := strconv.Atoi(pct)
	d, derr := time.ParseDuration(window)
	if !ok || !pctOK || err != nil || n < 1 || n > maxCanaryShare || derr != nil || d <= 0 {
		return fmt.Errorf("--canary %q: want SHARE%%:WINDOW, a share between 1%% and %d%% and a duration, as in 10%%:30s", v, maxCanaryShare)
	}
	c.CanaryShare, c.CanaryWindow = n, d
	return nil
}

// check checks the flags. The generated Caddyfile is checked again by its
// adapter and by the supervise app.
func (c *thrusterConfig) check(publicDirGiven bool) error {
	switch {
	case c.Ready != "" && !strings.HasPrefix(c.Ready, "/"):
		return fmt.Errorf("--ready %q: a path, such as /up", c.Ready)
	case c.BlueGreen && c.Socket != "":
		return fmt.Errorf("--blue-green and --socket %q: choose one", c.Socket)
	case c.BlueGreen && c.Ready == "":
		return fmt.Errorf("--blue-green: needs --ready PATH, to know when the new instance serves")
	case c.CanaryShare > 0 && !c.BlueGreen:
		return fmt.Errorf("--canary %d%%:%s: needs --blue-green (the new release runs beside the old one)", c.CanaryShare, c.CanaryWindow)
	case c.DrainTimeout <= 0:
		return fmt.Errorf("--drain-timeout %s: must be positive", c.DrainTimeout)
	case c.StopTimeout <= 0:
		return fmt.Errorf("--stop-timeout %s: must be positive", c.StopTimeout)
	case c.Wait <= 0:
		return fmt.Errorf("--wait %s: must be positive", c.Wait)
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("--ready-timeout %s: must be positive", c.ReadyTimeout)
	case c.ShutdownDelay < 0 || c.ShutdownDelay >= c.DrainTimeout:
		return fmt.Errorf("--shutdown-delay %s: 0 or more, and shorter than --drain-timeout %s (the app is stopped when the drain is over)", c.ShutdownDelay, c.DrainTimeout)
	case c.Output != OutputInherit && c.Output != OutputLog && c.Output != OutputDiscard:
		return fmt.Errorf("--output %q: inherit, log or discard", c.Output)
	case c.Name == "" || strings.Trim(c.Name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != "":
		return fmt.Errorf("--name %q: letters, digits, '.', '_' and '-' only", c.Name)
	}
	if c.Socket != "" {
		if err := checkValue("address", c.Socket); err != nil {
			return fmt.Errorf("--socket %q: %v", c.Socket, err)
		}
		if _, err := caddy.ParseNetworkAddress(c.Socket); err != nil {
			return fmt.Errorf("--socket %q: %v", c.Socket, err)
		}
	}
	if c.AdminAddr != "" && c.AdminAddr != "off" {
		if err := checkValue("address", c.AdminAddr); err != nil {
			return fmt.Errorf("--admin %q: %v", c.AdminAddr, err)
		}
		if _, err := caddy.ParseNetworkAddress(c.AdminAddr); err != nil {
			return fmt.Errorf("--admin %q: %v", c.AdminAddr, err)
		}
	}
	if c.Metrics != "" {
		addr, err := caddy.ParseNetworkAddress(c.Metrics)
		if err == nil {
			err = checkValue("address", c.Metrics)
		}
		if err == nil && (addr.IsUnixNetwork() || addr.PortRangeSize() != 1 || addr.StartPort == 0) {
			err = fmt.Errorf("a TCP address with one port, such as :9090 or 127.0.0.1:9090")
		}
		if err != nil {
			return fmt.Errorf("--metrics %q: %v", c.Metrics, err)
		}
		c.MetricsHost, c.MetricsPort = addr.Host, int(addr.StartPort)
	}
	for flag, v := range map[string]string{"--ready": c.Ready, "--public-dir": c.PublicDir} {
		if err := checkValue("path", v); err != nil {
			return fmt.Errorf("%s %q: %v", flag, v, err)
		}
	}
	if c.PublicDir != "" {
		fi, err := os.Stat(c.PublicDir)
		switch {
		case err == nil && fi.IsDir():
		case publicDirGiven:
			return fmt.Errorf("--public-dir %q: not a directory", c.PublicDir)
		default:
			c.PublicDir = "" // no ./public: everything goes to the app
		}
	}
	return nil
}

// removeStaleAdminDirs removes the private directories that `caddy
// supervise` made in the temporary directory for its admin socket and that
// a Caddy forced to exit (a second Ctrl-C, SIGKILL) left behind: each one
// of Caddy's user, mode 0700, holding at most admin.sock, on which nothing
// listens any more, and that no running `caddy supervise` holds locked
// (one that has yet to listen there). (Only between a new directory's
// creation and its lock, two system calls apart, could a sweep take it.)
func removeStaleAdminDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "caddy-supervise-*"))
	for _, dir := range dirs {
		if !isPrivateDir(dir) {
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) > 1 || len(entries) == 1 && entries[0].Name() != "admin.sock" {
			continue
		}
		lock, err := lockDir(dir)
		if err != nil {
			continue // a running `caddy supervise` holds it (see resolveAdmin)
		}
		if len(entries) == 0 || refusesConnections(filepath.Join(dir, "admin.sock")) {
			os.RemoveAll(dir)
		}
		lock.Close()
	}
}

// stillAt reports whether f is still what path names.
func stillAt(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(path)
	return err == nil && os.SameFile(a, b)
}

// refusesConnections reports whether nothing listens on a unix socket
// (a Caddy that serves there accepts).
func refusesConnections(path string) bool {
	conn, err := net.Dial("unix", path)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// resolveAdmin picks the admin endpoint when --admin was not given: a unix
// socket with mode 0600 in a directory only Caddy's user can enter, so
// that only that user (not a sidecar, not another user of the host, not
// the app if it runs as another user) can reach an API that can start
// programs: $XDG_RUNTIME_DIR (a private directory of the user) if set,
// named after the process and the working directory; else
// tmp/caddy-supervise/ (0700) in a Rails app's tmp, if tmp and the
// directories above it are Caddy's user's or root's and no one else may
// write them; else, when create is set, a new private directory that
// cleanup removes; when it is not (--print-caddyfile, which changes
// nothing), the endpoint is off. A socket another Caddy serves there is an
// error: it would be taken from it.
func (c *thrusterConfig) resolveAdmin(create bool) (cleanup func(), err error) {
	cleanup = func() {}
	if c.AdminAddr != "" {
		return cleanup, nil
	}
	var path string
	cwd, _ := os.Getwd()
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" && isPrivateDir(dir) {
		sum := sha256.Sum256([]byte(cwd))
		path = filepath.Join(dir, fmt.Sprintf("caddy-supervise-%s-%x.sock", c.Name, sum[:3]))
	} else if tmp := filepath.Join(cwd, "tmp"); ownedPath(tmp) {
		dir := filepath.Join(tmp, "caddy-supervise")
		if !create {
			path = filepath.Join(dir, "admin.sock")
		} else {
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return cleanup, fmt.Errorf("the admin endpoint's directory %s: %v; set --admin", dir, err)
			}
			if !isPrivateDir(dir) {
				return cleanup, fmt.Errorf("the admin endpoint's directory %s: not a directory of Caddy's user with mode 0700; set --admin", dir)
			}
			path = filepath.Join(dir, "admin.sock")
		}
	} else if create {
		removeStaleAdminDirs()
		dir, err := os.MkdirTemp("", "caddy-supervise-")
		if err != nil {
			return cleanup, fmt.Errorf("a private directory for the admin endpoint's socket: %v", err)
		}
		lock, err := lockDir(dir) // held until the exit, whatever ends it
		if err == nil && !stillAt(lock, dir) {
			// another start's sweep took it between MkdirTemp and the lock
			lock.Close()
			err = errors.New("removed as it was made")
		}
		if err != nil {
			os.RemoveAll(dir)
			return cleanup, fmt.Errorf("a private directory for the admin endpoint's socket: %s: %v", dir, err)
		}
		cleanup = func() { os.RemoveAll(dir); lock.Close() }
		path = filepath.Join(dir, "admin.sock")
	} else {
		c.AdminAddr = "off"
		return cleanup, nil
	}
	if err := checkValue("path", path); err != nil {
		cleanup()
		return func() {}, fmt.Errorf("the admin endpoint's socket %q: %v; set --admin", path, err)
	}
	if conn, err := net.Dial("unix", path); create && err == nil {
		conn.Close()
		cleanup()
		return func() {}, fmt.Errorf("the admin endpoint's socket %s: another Caddy serves its admin endpoint there; set --admin", path)
	}
	c.AdminAddr = "unix/" + path + "|0600"
	return cleanup, nil
}
