package supervise

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

// Defaults for the optional fields of a [Process].
const (
	DefaultStopSignal   = "SIGTERM"
	DefaultDrainTimeout = 30 * time.Second
	// DefaultStreamDrainTimeout: see Process.StreamDrainTimeout.
	DefaultStreamDrainTimeout = 5 * time.Minute
	DefaultStopTimeout        = 10 * time.Second

	DefaultRestart       = RestartNever
	DefaultRestartWindow = time.Minute
	DefaultOnEnd         = OnEndStopCaddy

	// Restart back-off: the first restart waits restartFirstDelay, each
	// further one twice as long as the one before, up to restartMaxDelay; a
	// process that stayed up for restartResetAfter starts over at the first
	// delay.
	restartFirstDelay = 250 * time.Millisecond
	restartMaxDelay   = 30 * time.Second
	restartResetAfter = 10 * time.Second
)

// Values of Process.Restart and Process.OnEnd.
const (
	RestartNever     = "never"
	RestartOnFailure = "on_failure"
	RestartAlways    = "always"

	OnEndStopCaddy   = "stop_caddy"
	OnEndKeepRunning = "keep_running"
)

// Process describes one supervised child process: what to run, and how to
// stop it when Caddy exits.
type Process struct {
	// Name identifies the process: in logs (logger `supervise.<name>`),
	// across config reloads, in the admin API and metrics, and for the
	// dynamic upstream. Unique within the app; no white space or '/'.
	// Default: the base name of the program (`bundle` for
	// `["bundle", "exec", "puma"]`).
	Name string `json:"name,omitempty"`

	// Command is the program and its arguments. Required. The program is
	// looked up in the PATH of the child's environment (Caddy's PATH unless
	// `env` sets PATH) unless it contains a slash; a relative path with a
	// slash is relative to `dir`. No shell is involved: use
	// `["sh", "-c", "..."]` for shell syntax. `{env.NAME}` in the command,
	// its arguments, `dir`, `env_file` and `env` values is replaced with
	// Caddy's environment variable NAME when the config loads; it is an error
	// if NAME is unset, except in `env` values, where it becomes empty.
	Command []string `json:"command,omitempty"`

	// LiteralArgs passes the command and its arguments to the program as
	// written: `{env.NAME}` in them is not replaced (`{supervise.port}` and
	// `{supervise.fd}` still are). `caddy supervise` sets it: its
	// arguments come from a shell, which already expanded what it meant
	// to. In a Caddyfile, Caddy still substitutes `{$NAME}` when it adapts
	// the file. Default: false.
	LiteralArgs bool `json:"literal_args,omitempty"`

	// Dir is the working directory of the child. Default: Caddy's working
	// directory. It must exist when the config is loaded.
	Dir string `json:"dir,omitempty"`

	// Env holds variables added to the child's environment, which is
	// otherwise Caddy's own environment, without the variables a service
	// manager gives Caddy alone (NOTIFY_SOCKET, LISTEN_FDS, LISTEN_PID,
	// LISTEN_FDNAMES, LISTEN_PIDFDID, WATCHDOG_USEC, WATCHDOG_PID: they
	// describe Caddy's sockets and Caddy's readiness, and a child that used
	// them would speak for Caddy) and without those in `unset_env`. A
	// variable set here replaces Caddy's variable of the same name. Caddy's
	// own environment is never changed. `{supervise.port}` in a value is
	// the instance's port (with `port`): Rails' `PIDFILE
	// tmp/pids/server.{supervise.port}.pid` lets a new instance start
	// beside the old one. Default: none added.
	Env map[string]string `json:"env,omitempty"`

	// UnsetEnv names variables of Caddy's environment that the child does
	// not inherit. A name that `env` or `env_file` sets is an error.
	// Default: none (besides the service manager's variables above).
	UnsetEnv []string `json:"unset_env,omitempty"`

	// EnvFile is a dotenv file (KEY=VALUE lines; the README gives the exact
	// rules) whose variables are added to the child's environment. It is
	// read when the config loads, so a reload reads it again (and a changed
	// value restarts the process). Variables in `env` win over the file's.
	// Default: none.
	EnvFile string `json:"env_file,omitempty"`

	// EnvFileOptional lets `env_file` be missing: a file that does not
	// exist adds no variables (and says so in the log at load); any other
	// error reading it (a directory, no permission, a link to nothing)
	// still fails the load. As
	// systemd's `EnvironmentFile=-PATH`: one config for a machine that
	// keeps secrets in the file and a container that gets them from its
	// environment. Caddyfile: `env_file PATH optional`. Default: false.
	EnvFileOptional bool `json:"env_file_optional,omitempty"`

	// User runs the child as this user, by name or numeric UID: its UID, its
	// primary group (unless `group` is set) and its supplementary groups, with
	// HOME, USER and LOGNAME set to the user's (unless `env` or `env_file`
	// set them). A UID without an entry in the user database needs `group`.
	// Caddy must be able to switch users (run as root, or with CAP_SETUID
	// and CAP_SETGID), or starting fails. Default: Caddy's user.
	User string `json:"user,omitempty"`

	// Group runs the child with this primary group, by name or numeric GID;
	// it needs `user` (with group alone a root Caddy would run the child
	// as root: an error at validate). Default: the primary group of `user`.
	Group string `json:"group,omitempty"`

	// Port is the TCP port the process serves on: a number, or `auto` for a
	// free loopback port picked when the process is first started (kept
	// across restarts and reloads). The process gets it as the environment
	// variable PORT and as the placeholder `{supervise.port}` in its command;
	// the dynamic upstream `supervise` points at 127.0.0.1:<port>. Default:
	// none (the dynamic upstream then uses the readiness probe's address).
	Port string `json:"port,omitempty"`

	// Socket is a listening socket that Caddy opens for the process and
	// holds: a Caddy network address, `127.0.0.1:3000`, `[::1]:3000`,
	// `:3000` (every interface) or `unix//run/app.sock`. Caddy opens it when
	// the config starts (not at `caddy validate`) and keeps it open across
	// restarts, crashes and reloads that keep the address, so connections
	// that arrive while no instance accepts wait in the kernel's queue
	// instead of being refused. Each instance gets it as descriptor 3 with
	// the systemd socket-activation variables LISTEN_FDS=1, LISTEN_PID (its
	// own PID) and LISTEN_FDNAMES (the process's name), and
	// `{supervise.fd}` in its command is `3`. The dynamic upstream
	// `supervise` points at it (`unix//…` for a unix socket). It is closed,
	// and a unix socket's file removed, once no config has the process, or
	// when Caddy exits after the process. A unix socket file that nothing
	// listens on (left by a killed Caddy) is replaced. Exclusive with `port`.
	// Not on Windows. Default: none.
	Socket string `json:"socket,omitempty"`

	// Ready is the readiness probe: `{"tcp": "HOST:PORT"}` (a connection
	// succeeds) or `{"http": "URL"}` (a GET answers 2xx or 3xx); with `port`,
	// the address or URL may be empty and means the process's port. Until it
	// succeeds the process is "starting" and the dynamic upstream offers no
	// address. Default: none; the process counts as ready once started.
	Ready *ReadyProbe `json:"ready,omitempty"`

	// ReadyTimeout is how long the probe may fail after a start: then the
	// process is stopped as failed (stop signal, stop_timeout, SIGKILL) and
	// its restart policy applies, as to a crash. Only with `ready`.
	// Default: `60s`.
	ReadyTimeout Duration `json:"ready_timeout,omitempty"`

	// StopSignal is sent to the child's process group once Caddy's HTTP
	// servers have drained (or `drain_timeout` has passed). Names with or
	// without the SIG prefix, in any case, are accepted: `SIGTERM`, `TERM`,
	// `sigint`, `QUIT`, `USR1`... Default: `SIGTERM`.
	StopSignal string `json:"stop_signal,omitempty"`

	// DrainTimeout bounds how long the child is kept running, after Caddy
	// began to exit, while Caddy's HTTP servers finish their in-flight
	// requests. The stop signal is sent as soon as the http app has stopped,
	// or when this much time has passed since the exit began, whichever
	// comes first. It is a duration string with a unit (`30s`, `1m`).
	// Default: `30s`.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`

	// StreamDrainTimeout bounds how long an instance that a restart or a
	// reload replaced beside itself keeps serving its open streams
	// (WebSockets, server-sent events) while the new instance takes the new
	// ones. Its ordinary requests finish first, within `drain_timeout`;
	// once its last stream has ended, or this much time has passed since it
	// left service, it gets its stop signal; streams still open then are
	// ended cleanly first (a WebSocket close frame 1001, the end of an SSE
	// response), spread over a tenth of this (at most 30 s), so that clients
	// reconnect to the new instance, not all at once. A newer
	// replacement ends the streams of an older retiring instance the same
	// way: at most one old instance keeps its streams. Streams are seen by the
	// `supervise_streams` handler in front of `reverse_proxy`; without it
	// they count as ordinary requests. At Caddy's exit streams end when the
	// drain begins, whatever this says. Default: `5m`.
	StreamDrainTimeout Duration `json:"stream_drain_timeout,omitempty"`

	// StopTimeout is how long the child may take to exit after the stop
	// signal before its whole process group is killed with SIGKILL. It is a
	// duration string with a unit. Default: `10s`.
	StopTimeout Duration `json:"stop_timeout,omitempty"`

	// Output says where the child's stdout and stderr go. `log`: each line
	// becomes one entry, at INFO level, of Caddy's logger `supervise.<name>`
	// with the field `stream` (`stdout` or `stderr`), so Caddy's logging
	// configuration (writers, formats, include/exclude) applies to it; a line
	// longer than 64 KiB is split into entries of 64 KiB, all but the last
	// with the field `partial: true`. `inherit`: written as they are to
	// Caddy's own stdout and stderr (`caddy supervise`'s default, as
	// Thruster does). `discard`: thrown away. With `log` and `inherit`, the
	// last lines and the first lines that look like an error go into the
	// error of a new instance that fails. Default: `log`.
	Output string `json:"output,omitempty"`

	// Restart says whether the process is started again when it exits on
	// its own: `never`; `on_failure`, when it exits with a non-zero status or
	// is killed by a signal; or `always`. Restarts back off: 250ms before
	// the first, doubling each time up to 30s, back to 250ms once the process
	// has stayed up for 10s. A stop that Caddy asks for (reload, shutdown)
	// never causes a restart. Default: `never`.
	Restart string `json:"restart,omitempty"`

	// MaxRestarts, if set, limits how many restarts may happen within
	// `restart_window`: when the process exits and that many restarts have
	// already happened in the window, it has ended for good. Needs `restart`
	// `on_failure` or `always`. Default: 0, no limit.
	MaxRestarts int `json:"max_restarts,omitempty"`

	// RestartWindow is the window of `max_restarts`; it may only be set with
	// `max_restarts`. Default: `1m`.
	RestartWindow Duration `json:"restart_window,omitempty"`

	// OnEnd says what Caddy does when the process has ended for good (it
	// exited and will not be restarted): `stop_caddy` shuts Caddy down
	// gracefully (the other processes are stopped after the drain, as on
	// SIGTERM) and Caddy's process exits with the process's exit status (its
	// exit code, or 128+N if signal N killed it), which is what a container
	// runtime expects from its main process; `keep_running` logs the end
	// and Caddy keeps running (a one-shot task, an optional worker).
	// Default: `stop_caddy`.
	OnEnd string `json:"on_end,omitempty"`

	// Instances is how many instances of the process run side by side: a
	// number, or `auto` for the CPUs Caddy's process may use (its CPU
	// affinity and its cgroup's CPU quota, rounded up). Each instance gets a
	// port of its own, so more than one needs `port auto` and a readiness
	// probe; `{supervise.instance}` (0, 1, …) in the command and in `env`
	// values is its index, which a replacement takes over (the old and the
	// new instance share it while both run: a pidfile needs
	// `{supervise.port}`). A `ready` or `health` target of its own would
	// check the same place for every instance: with more than one, an
	// error. The dynamic
	// upstream `supervise` sends each request to the ready instance with
	// the fewest requests in flight. A reload that changes only this adds
	// or removes instances and leaves the others alone. Not with `socket`
	// (one socket has one queue, which all instances would share: the
	// app's own workers, `puma -w`, `gunicorn -w`, do that better).
	// Default: 1.
	Instances Instances `json:"instances,omitempty"`

	// RollBatch is how many instances a rolling restart (a reload that
	// changes the definition, an admin restart) replaces at once, each
	// beside its predecessor; the next batch starts once the previous
	// one's old instances are gone, so a roll never runs more than
	// `instances` + `roll_batch` instances. A new instance that fails stops
	// the roll: the instances it has not reached never leave the old
	// release, and a reload that fails puts back the ones it replaced.
	// Default: 1.
	RollBatch int `json:"roll_batch,omitempty"`

	// MaxMemory recycles an instance whose process group uses more memory
	// than this (resident set size, the sum over the group, sampled every
	// second; Linux only): it is replaced beside itself, as by an admin
	// restart, never killed. An integer (bytes) or a string such as
	// `512MiB` or `1.5GB`. A recycle whose new instance fails is tried
	// again after 1 s, doubling up to 30 s. Default: no limit.
	MaxMemory Size `json:"max_memory,omitempty"`

	// MaxLifetime recycles an instance this long after its start, the way
	// `max_memory` does. Default: no limit.
	MaxLifetime Duration `json:"max_lifetime,omitempty"`

	// MaxLifetimeRequests recycles an instance once the dynamic upstream
	// has sent it this many requests, the way `max_memory` does (the name
	// is not `max_requests`: reverse_proxy uses that for requests in flight).
	// Default: no limit.
	MaxLifetimeRequests int64 `json:"max_lifetime_requests,omitempty"`

	// Health is the liveness check: it keeps checking each instance while
	// it serves. An instance that fails it `fails` times in a row leaves
	// the dynamic upstream at once, is replaced beside itself, and is
	// killed with SIGKILL once the new instance serves (a hung process
	// cannot drain). Requests it held may fail; none are sent to it once
	// it failed the check. Default: none.
	Health *HealthCheck `json:"health,omitempty"`

	// Canary makes each deploy of the process — a reload that changes its
	// definition, an admin restart, a pool's roll (its first batch) — send
	// a share of new requests to the new release for a window, beside the
	// old one, and decide from how their requests ended whether it takes
	// over: promoted, the switch goes on; rejected, the new release
	// retires, the old one serves on, and the reload (or restart) fails
	// with the figures. Safe requests (GET, HEAD, OPTIONS without a body)
	// that fail on the new release during the window are sent again to the
	// old one. Needs `port auto`, a readiness probe, and a `reverse_proxy`
	// with `dynamic supervise NAME` in the same config (the canary's share
	// is chosen there); `supervise_streams` in front keeps each client on
	// one release (a cookie) and counts the responses the verdict needs.
	// See canary.go for the verdict's rule. Default: none (a deploy
	// switches once the new release is ready).
	Canary *Canary `json:"canary,omitempty"`

	// resolved at provision time
	args           []string          // Command with {env.*} expanded
	dir            string            // Dir with {env.*} expanded
	vars           map[string]string // env_file and env, expanded: what the child gets on top of Caddy's
	envFileMissing bool              // env_file is optional and does not exist
	id             *identity         // user and group, if set
	path           string            // absolute path of args[0]
	env            []string          // the child's complete environment
	envHasPort     bool              // {supervise.port} is in an env or env_file value
	readyDefault   bool              // Ready is the default probe of a process with a port
	signal         syscall.Signal
	sockAddr       caddy.NetworkAddress // Socket, parsed
	sockMode       fs.FileMode          // a unix socket's mode
	count          int                  // Instances, resolved
	envHasIndex    bool                 // {supervise.instance} is in an env or env_file value
}

// provision checks the definition, fills in defaults and resolves the
// program's path. It never starts anything. Errors name the option and the
// value at fault.
func (p *Process) provision(index int) error {
	where := fmt.Sprintf("process %d", index)
	if p.Name != "" {
		where = fmt.Sprintf("process %q", p.Name)
	}
	if len(p.Command) == 0 || p.Command[0] == "" {
		return fmt.Errorf("%s: command: must name a program", where)
	}
	if err := p.resolveSpawn(); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if p.Name == "" {
		p.Name = filepath.Base(p.args[0])
	}
	if strings.ContainsAny(p.Name, " \t\r\n/") {
		return fmt.Errorf("%s: name %q: must not contain white space or '/'", where, p.Name)
	}
	if p.StopSignal == "" {
		p.StopSignal = DefaultStopSignal
	}
	sig, err := parseSignal(p.StopSignal)
	if err != nil {
		return fmt.Errorf("%s: stop_signal %q: %v", where, p.StopSignal, err)
	}
	p.signal = sig
	if p.DrainTimeout < 0 {
		return fmt.Errorf("%s: drain_timeout %q: must be positive", where, p.DrainTimeout)
	}
	if p.DrainTimeout == 0 {
		p.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if p.StreamDrainTimeout < 0 {
		return fmt.Errorf("%s: stream_drain_timeout %q: must be positive", where, p.StreamDrainTimeout)
	}
	if p.StreamDrainTimeout == 0 {
		p.StreamDrainTimeout = Duration(DefaultStreamDrainTimeout)
	}
	if p.StopTimeout < 0 {
		return fmt.Errorf("%s: stop_timeout %q: must be positive", where, p.StopTimeout)
	}
	if p.StopTimeout == 0 {
		p.StopTimeout = Duration(DefaultStopTimeout)
	}
	if err := p.provisionReady(); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if err := p.provisionSocket(); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if p.Port == "" {
		for _, a := range p.Command {
			if strings.Contains(a, "{supervise.port}") {
				return fmt.Errorf("%s: command %q: {supervise.port} needs port (auto or a number)", where, a)
			}
		}
		if p.envHasPort {
			return fmt.Errorf("%s: env: {supervise.port} needs port (auto or a number)", where)
		}
	}
	if _, set := p.vars["PORT"]; set && p.Port != "" {
		return fmt.Errorf("%s: port %q: PORT is also set by env or env_file; set one of them", where, p.Port)
	}
	if err := choose("restart", &p.Restart, DefaultRestart, RestartNever, RestartOnFailure, RestartAlways); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if p.MaxRestarts < 0 {
		return fmt.Errorf("%s: max_restarts %d: must be positive", where, p.MaxRestarts)
	}
	if p.MaxRestarts > 0 && p.Restart == RestartNever {
		return fmt.Errorf("%s: max_restarts %d: needs restart on_failure or always (restart is never)", where, p.MaxRestarts)
	}
	if p.RestartWindow != 0 && p.MaxRestarts == 0 {
		return fmt.Errorf("%s: restart_window %q: only means something with max_restarts", where, p.RestartWindow)
	}
	if p.RestartWindow < 0 {
		return fmt.Errorf("%s: restart_window %q: must be positive", where, p.RestartWindow)
	}
	if p.RestartWindow == 0 && p.MaxRestarts > 0 {
		p.RestartWindow = Duration(DefaultRestartWindow)
	}
	if err := choose("output", &p.Output, OutputLog, OutputLog, OutputInherit, OutputDiscard); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if err := choose("on_end", &p.OnEnd, DefaultOnEnd, OnEndStopCaddy, OnEndKeepRunning); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if err := p.provisionPool(); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if err := p.provisionCanary(); err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	return nil
}

// readFileInfo reads a regular file (opened only once it is known to be
// one: a FIFO would hang the load) and returns what it read with the
// file's description.
func readFileInfo(path string) ([]byte, os.FileInfo, error) {
	f, fi, err := openRegular(path)
	if errors.Is(err, errNotRegular) {
		return nil, nil, fmt.Errorf("not a regular file")
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	return data, fi, err
}

// resolveSpawn works out what the child is started from: the expanded
// command, directory and environment, the identity, the program's path.
// Errors name the option and the value.
func (p *Process) resolveSpawn() error {
	var err error
	p.args = make([]string, len(p.Command))
	for i, a := range p.Command {
		if p.LiteralArgs {
			p.args[i] = a
		} else if p.args[i], err = expandEnv(a, false); err != nil {
			return fmt.Errorf("command %q: %v", a, err)
		}
	}
	if p.args[0] == "" {
		return fmt.Errorf("command %q: the program's name is empty", p.Command[0])
	}
	for i, a := range p.args {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("command %q: argument %d contains a NUL byte, which no program can receive", p.Command[i], i)
		}
	}
	if p.dir, err = expandEnv(p.Dir, false); err != nil {
		return fmt.Errorf("dir %q: %v", p.Dir, err)
	}
	if p.dir != "" {
		fi, err := os.Stat(p.dir)
		if err != nil {
			return fmt.Errorf("dir %q: %v", p.Dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("dir %q: not a directory", p.Dir)
		}
	}

	p.vars = make(map[string]string)
	var envFile string          // the env file's path, expanded
	var envFileInfo os.FileInfo // what was read
	if p.EnvFile != "" {
		path, err := expandEnv(p.EnvFile, false)
		if err != nil {
			return fmt.Errorf("env_file %q: %v", p.EnvFile, err)
		}
		var data []byte
		data, envFileInfo, err = readFileInfo(path)
		switch {
		case err != nil && p.EnvFileOptional && errors.Is(err, fs.ErrNotExist):
			if path == "" {
				return fmt.Errorf("env_file %q: the path is empty", p.EnvFile)
			}
			if _, lerr := os.Lstat(path); lerr == nil {
				// a link to a secret that is not there (a volume not
				// mounted): not what optional means
				return fmt.Errorf("env_file %q: a symbolic link to a file that does not exist", p.EnvFile)
			}
			p.envFileMissing = true
		case err != nil:
			return fmt.Errorf("env_file %q: %v", p.EnvFile, err)
		default:
			envFile = path
			fileVars, err := parseEnvFile(string(data))
			if err != nil {
				return fmt.Errorf("env_file %q: %v", p.EnvFile, err)
			}
			maps.Copy(p.vars, fileVars)
		}
	} else if p.EnvFileOptional {
		return errors.New("env_file_optional: needs env_file")
	}
	for k, v := range p.Env {
		if !possibleEnvName(k) {
			return fmt.Errorf("env %q: not a valid variable name", k)
		}
		if p.vars[k], err = expandEnv(v, true); err != nil {
			return fmt.Errorf("env %s %q: %v", k, v, err)
		}
	}
	for k, v := range p.vars {
		if !strings.ContainsRune(v, 0) {
			continue
		}
		if _, ok := p.Env[k]; ok {
			return fmt.Errorf("env %s %q: contains a NUL byte, which no environment can hold", k, v)
		}
		return fmt.Errorf("env_file %q: %s contains a NUL byte, which no environment can hold", p.EnvFile, k)
	}

	if p.Group != "" && p.User == "" {
		// validate cannot know who runs Caddy: with root, the child would be
		// root with every capability, in another group
		return fmt.Errorf("group %q: needs user too: with group alone the process keeps Caddy's user (root, with every capability, when Caddy runs as root); write the user to run it as beside it (`user app`, with `group %s` if not the user's own)", p.Group, p.Group)
	}
	if p.User != "" || p.Group != "" {
		if p.id, err = lookupIdentity(p.User, p.Group); err != nil {
			return err
		}
	}
	if envFileInfo != nil && p.id != nil && p.id.otherUser() && !p.id.mayReach(envFile) && !heldPath(envFile) {
		// Caddy reads it with its own rights, for a program of another user:
		// fine when only Caddy's user or root decide what the path leads to
		// (a secret the admin hands the app), not when someone else can
		// put a link to any file there (the app's user, who would read it
		// in its environment)
		return fmt.Errorf("env_file %q: %s may not read it, and users other than Caddy's and root can change what the path leads to: Caddy would read for %s a file it may not read; make the file readable by %s, or keep it where only Caddy's user or root can change the directories", p.EnvFile, p.identityName(), p.identityName(), p.identityName())
	}
	unset := slices.Clone(managerVars)
	for i, k := range p.UnsetEnv {
		if !possibleEnvName(k) {
			return fmt.Errorf("unset_env %q: not a valid variable name", k)
		}
		if slices.Contains(p.UnsetEnv[:i], k) {
			return fmt.Errorf("unset_env %q: named twice", k)
		}
		if _, set := p.vars[k]; set {
			from := "env_file"
			if _, ok := p.Env[k]; ok {
				from = "env"
			}
			return fmt.Errorf("unset_env %q: %s sets it; unset_env removes only variables inherited from Caddy", k, from)
		}
		unset = append(unset, k)
	}
	base := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(unset, k)
	})
	p.env = mergeEnv(base, p.identityVars(), p.vars)
	for _, v := range p.vars {
		p.envHasPort = p.envHasPort || strings.Contains(v, "{supervise.port}")
		p.envHasIndex = p.envHasIndex || strings.Contains(v, "{supervise.instance}")
	}
	p.path, err = lookPath(p.args[0], p.dir, envValue(p.env, "PATH"))
	if err != nil {
		return fmt.Errorf("command %q: %v", p.Command[0], err)
	}
	return nil
}

// managerVars are the variables a service manager (systemd, or a socket
// activator) sets for Caddy itself; the child never inherits them, unless
// env or env_file sets them.
var managerVars = []string{"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID", "WATCHDOG_USEC", "WATCHDOG_PID"}

// possibleEnvName reports whether name can be a variable of an environment
// (env_file is stricter: it takes shell names only).
func possibleEnvName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "=\x00")
}

// identityName says whom the child runs as, for messages.
func (p *Process) identityName() string {
	var parts []string
	if p.User != "" {
		parts = append(parts, "user "+p.User)
	}
	if p.Group != "" {
		parts = append(parts, "group "+p.Group)
	}
	return strings.Join(parts, ", ")
}

// identityVars are HOME, USER and LOGNAME of the user the child runs as.
func (p *Process) identityVars() map[string]string {
	if p.id == nil || p.User == "" {
		return nil
	}
	return map[string]string{"HOME": p.id.home, "USER": p.id.name, "LOGNAME": p.id.name}
}

// choose sets an unset option to its default and checks that it is one of
// the allowed values.
func choose(option string, v *string, def string, allowed ...string) error {
	if *v == "" {
		*v = def
	}
	return checkOneOf(option, *v, allowed)
}

func checkOneOf(option, v string, allowed []string) error {
	if !slices.Contains(allowed, v) {
		return fmt.Errorf("%s %q: must be one of %s", option, v, strings.Join(allowed, ", "))
	}
	return nil
}

// checkExecutable reports why path cannot be executed, if it cannot.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	if !executableMode(fi.Mode()) {
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// mergeEnv returns base with the variables of each layer set in turn, a
// later layer replacing an earlier one's variable of the same name. base is
// not modified.
func mergeEnv(base []string, layers ...map[string]string) []string {
	extra := make(map[string]string)
	for _, l := range layers {
		maps.Copy(extra, l)
	}
	env := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, replaced := extra[k]; !replaced {
			env = append(env, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		env = append(env, k+"="+extra[k])
	}
	return env
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath finds the executable the child will run, the way a shell would
// with the child's PATH, so that a typo is a config error and not a crash at
// start. A name with a slash is taken relative to dir.
func lookPath(name, dir, pathEnv string) (string, error) {
	if strings.ContainsRune(name, '/') || strings.ContainsRune(name, filepath.Separator) {
		p := name
		if !filepath.IsAbs(p) {
			base := dir
			if base == "" {
				base, _ = os.Getwd()
			}
			p = filepath.Join(base, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if checkExecutable(p) == nil {
			if !filepath.IsAbs(p) {
				if abs, err := filepath.Abs(p); err == nil {
					p = abs
				}
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("executable file not found in PATH %q", pathEnv)
}

// Duration is a length of time written as a string with a unit: "30s",
// "1m30s", "500ms", "1d". Unlike caddy.Duration, a bare JSON number (which
// caddy.Duration reads as nanoseconds, a classic mistake) is an error, and
// it is written back as a string.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: must be a string with a unit, such as \"30s\"", bytes.TrimSpace(b))
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

func (d Duration) String() string { return time.Duration(d).String() }

// parseDuration parses a duration that needs a unit and must be positive.
func parseDuration(s string) (time.Duration, error) {
	v, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %v", s, err)
	}
	if v <= 0 {
		return 0, fmt.Errorf("%q: must be positive", s)
	}
	return v, nil
}

// Size is an amount of memory: in JSON an integer (bytes) or a string
// with a unit as Caddy writes sizes elsewhere (`512MiB`, `1.5GB`, `100kB`).
type Size int64

// UnmarshalJSON implements json.Unmarshaler.
func (z *Size) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		if n <= 0 {
			return fmt.Errorf("%d: must be positive", n)
		}
		*z = Size(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: must be a number of bytes or a string such as \"512MiB\"", bytes.TrimSpace(b))
	}
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// parseSize parses a positive size with an optional unit (`512MiB`).
func parseSize(s string) (Size, error) {
	v, err := humanize.ParseBytes(s)
	if err != nil || v == 0 || v > math.MaxInt64 {
		return 0, fmt.Errorf("%q: must be a positive size such as 512MiB or 1GB", s)
	}
	return Size(v), nil
}

func (z Size) String() string { return humanize.IBytes(uint64(z)) }

// UnmarshalJSON decodes a process strictly (unknown fields are errors, as in
// the rest of Caddy's config) and names the field of any bad value.
func (p *Process) UnmarshalJSON(b []byte) error {
	type plain Process // same fields, without this method
	var aux struct {
		*plain
		DrainTimeout  json.RawMessage `json:"drain_timeout,omitempty"`
		StreamDrain   json.RawMessage `json:"stream_drain_timeout,omitempty"`
		StopTimeout   json.RawMessage `json:"stop_timeout,omitempty"`
		RestartWindow json.RawMessage `json:"restart_window,omitempty"`
		ReadyTimeout  json.RawMessage `json:"ready_timeout,omitempty"`
		MaxLifetime   json.RawMessage `json:"max_lifetime,omitempty"`
	}
	aux.plain = (*plain)(p)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return fmt.Errorf("process: %v", err)
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *Duration
	}{
		{"drain_timeout", aux.DrainTimeout, &p.DrainTimeout},
		{"stream_drain_timeout", aux.StreamDrain, &p.StreamDrainTimeout},
		{"stop_timeout", aux.StopTimeout, &p.StopTimeout},
		{"restart_window", aux.RestartWindow, &p.RestartWindow},
		{"ready_timeout", aux.ReadyTimeout, &p.ReadyTimeout},
		{"max_lifetime", aux.MaxLifetime, &p.MaxLifetime},
	} {
		if f.raw == nil {
			continue
		}
		if err := f.dst.UnmarshalJSON(f.raw); err != nil {
			return fmt.Errorf("process: %s %v", f.name, err)
		}
	}
	return nil
}

// warnEmptiedVariables warns of an argument of the command that ends in
// ":" or "=" (`tcp://127.0.0.1:`, `--port=`): the mark of a `$PORT` that
// the shell replaced with nothing where the command was typed. The
// process gets its port in $PORT and `{supervise.port}`.
func (p *Process) warnEmptiedVariables(logger *zap.Logger) {
	if p.Port == "" || len(p.Command) == 0 {
		return
	}
	for i, arg := range p.Command[1:] {
		if strings.HasSuffix(arg, ":") || strings.HasSuffix(arg, "=") {
			logger.Warn(fmt.Sprintf("process %s: argument %d of its command (%q) ends in %q: a $PORT that the shell emptied where the command was typed? "+
				"write {supervise.port} there instead (in a shell, in single quotes)", p.Name, i+1, arg, arg[len(arg)-1:]))
		}
	}
}
