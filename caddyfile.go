package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("supervise", parseCaddyfile)
}

// parseCaddyfile parses one `supervise` global option; the option may be
// repeated, one process each:
//
//	supervise <command> [<args...>] {
//		name           <name>
//		literal_args
//		dir            <path>
//		env            <key> <value>
//		env_file       <path> [optional]
//		unset_env      <name...>
//		user           <name|uid>
//		group          <name|gid>
//		stop_signal    <signal>
//		drain_timeout  <duration>
//		stream_drain_timeout <duration>
//		stop_timeout   <duration>
//		output         log|inherit|discard
//		restart        never|on_failure|always
//		max_restarts   <count>
//		restart_window <duration>
//		on_end         stop_caddy|keep_running
//		port           auto|<number>
//		ready          tcp [<host:port>] | http [<url>] | off
//		ready_timeout  <duration>
//		instances      <count>|auto
//		roll_batch     <count>
//		max_memory     <size>
//		max_lifetime   <duration>
//		max_lifetime_requests <count>
//		health         [tcp [<host:port>] | http [<url>]] [interval <duration>] [timeout <duration>] [fails <count>]
//		canary         [<share>%] [<window>]
//	}
//
// The block is optional. Values are checked here, so that `caddy adapt`
// reports a bad one with its file and line; Provision checks them again,
// with the rules that need the whole process (and for JSON configs).
func parseCaddyfile(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, err
		}
	}

	d.Next() // the option's name
	p := &Process{Command: d.RemainingArgs()}
	if len(p.Command) == 0 {
		return nil, d.Err("supervise: a command is required, as in: supervise bundle exec puma -p 3000")
	}
	seen := make(map[string]bool)
	for n := d.Nesting(); d.NextBlock(n); {
		name := d.Val()
		opt, known := subdirectives[name]
		if !known {
			return nil, d.Errf("supervise: unknown subdirective %q (known: %s)", name, strings.Join(subdirectiveNames(), ", "))
		}
		if seen[name] && !opt.repeatable {
			return nil, d.Errf("supervise: %s: set twice", name)
		}
		seen[name] = true
		args := d.RemainingArgs()
		if opt.args >= 0 && len(args) != opt.args {
			return nil, d.Errf("supervise: %s: takes %d value(s), got %d: %q", name, opt.args, len(args), args)
		}
		if err := opt.set(p, args); err != nil {
			return nil, d.Errf("supervise: %s %v", name, err)
		}
	}
	if p.Port == "" && slices.ContainsFunc(p.Command, func(a string) bool { return strings.Contains(a, "{supervise.port}") }) {
		return nil, d.Errf("supervise: {supervise.port} in the command needs port (auto or a number)")
	}
	if p.Socket != "" && p.Port != "" {
		return nil, d.Errf("supervise: socket %q: socket and port %q are exclusive: the process gets its socket, not a port", p.Socket, p.Port)
	}
	if p.Socket == "" && slices.ContainsFunc(p.Command, func(a string) bool { return strings.Contains(a, "{supervise.fd}") }) {
		return nil, d.Errf("supervise: {supervise.fd} in the command needs socket")
	}
	app.Processes = append(app.Processes, p)
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSON(app, &warnings)
	if len(warnings) > 0 {
		return nil, fmt.Errorf("supervise: encoding: %s", warnings[0].Message)
	}
	return httpcaddyfile.App{Name: "supervise", Value: raw}, nil
}

// subdirective is one option of the `supervise` block: how many values it
// takes (-1: set checks), and how it sets them. An error from set is reported after the
// option's name, so it starts with the bad value.
type subdirective struct {
	args       int
	repeatable bool
	set        func(p *Process, args []string) error
}

var subdirectives = map[string]subdirective{
	"name": {args: 1, set: stringSetter(func(p *Process) *string { return &p.Name })},
	"literal_args": {args: 0, set: func(p *Process, a []string) error {
		p.LiteralArgs = true
		return nil
	}},
	"dir": {args: 1, set: stringSetter(func(p *Process) *string { return &p.Dir })},
	"env_file": {args: -1, set: func(p *Process, a []string) error {
		if len(a) == 0 || len(a) > 2 || (len(a) == 2 && a[1] != "optional") {
			return fmt.Errorf("%q: want PATH [optional]", a)
		}
		p.EnvFile, p.EnvFileOptional = a[0], len(a) == 2
		return nil
	}},
	"user":  {args: 1, set: stringSetter(func(p *Process) *string { return &p.User })},
	"group": {args: 1, set: stringSetter(func(p *Process) *string { return &p.Group })},
	"env": {args: 2, repeatable: true, set: func(p *Process, a []string) error {
		if _, dup := p.Env[a[0]]; dup {
			return fmt.Errorf("%s: set twice", a[0])
		}
		if p.Env == nil {
			p.Env = make(map[string]string)
		}
		p.Env[a[0]] = a[1]
		return nil
	}},
	"unset_env": {args: -1, repeatable: true, set: func(p *Process, a []string) error {
		if len(a) == 0 {
			return errors.New("takes one or more variable names, got none")
		}
		for _, k := range a {
			if !possibleEnvName(k) || slices.Contains(p.UnsetEnv, k) {
				return fmt.Errorf("%q: not a valid variable name, or named twice", k)
			}
			p.UnsetEnv = append(p.UnsetEnv, k)
		}
		return nil
	}},
	"stop_signal": {args: 1, set: func(p *Process, a []string) error {
		if _, err := parseSignal(a[0]); err != nil {
			return fmt.Errorf("%q: %v", a[0], err)
		}
		p.StopSignal = a[0]
		return nil
	}},
	"drain_timeout":        {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.DrainTimeout })},
	"stop_timeout":         {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.StopTimeout })},
	"stream_drain_timeout": {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.StreamDrainTimeout })},
	"restart_window":       {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.RestartWindow })},
	"restart":              {args: 1, set: oneOf(func(p *Process) *string { return &p.Restart }, RestartNever, RestartOnFailure, RestartAlways)},
	"output":               {args: 1, set: oneOf(func(p *Process) *string { return &p.Output }, OutputLog, OutputInherit, OutputDiscard)},
	"on_end":               {args: 1, set: oneOf(func(p *Process) *string { return &p.OnEnd }, OnEndStopCaddy, OnEndKeepRunning)},
	"port":                 {args: 1, set: stringSetter(func(p *Process) *string { return &p.Port })},
	"socket": {args: 1, set: func(p *Process, a []string) error {
		address, _, err := splitSocketMode(a[0])
		if err != nil {
			return fmt.Errorf("%q: %v", a[0], err)
		}
		if _, err := caddy.ParseNetworkAddress(address); err != nil {
			return fmt.Errorf("%q: %v", a[0], err)
		}
		p.Socket = a[0]
		return nil
	}},
	"ready_timeout": {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.ReadyTimeout })},
	"ready": {args: -1, set: func(p *Process, a []string) error {
		if len(a) == 1 && a[0] == "off" {
			p.Ready = &ReadyProbe{Off: true}
			return nil
		}
		if len(a) < 1 || len(a) > 2 || (a[0] != "tcp" && a[0] != "http") {
			return fmt.Errorf("%q: want tcp [HOST:PORT] or http [URL], or off", a)
		}
		addr := ""
		if len(a) == 2 {
			addr = a[1]
		}
		if a[0] == "tcp" {
			p.Ready = &ReadyProbe{TCP: &addr}
		} else {
			p.Ready = &ReadyProbe{HTTP: &addr}
		}
		return nil
	}},
	"max_restarts": {args: 1, set: countSetter(func(p *Process) *int { return &p.MaxRestarts })},
	"roll_batch":   {args: 1, set: countSetter(func(p *Process) *int { return &p.RollBatch })},
	"instances": {args: 1, set: func(p *Process, a []string) error {
		n, err := parseInstances(a[0])
		if err != nil {
			return fmt.Errorf("%q: must be a whole number above 0, or auto", a[0])
		}
		p.Instances = n
		return nil
	}},
	"max_memory": {args: 1, set: func(p *Process, a []string) error {
		v, err := parseSize(a[0])
		p.MaxMemory = v
		return err
	}},
	"max_lifetime": {args: 1, set: durationSetter(func(p *Process) *Duration { return &p.MaxLifetime })},
	"max_lifetime_requests": {args: 1, set: func(p *Process, a []string) error {
		n, err := strconv.ParseInt(a[0], 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("%q: must be a whole number above 0", a[0])
		}
		p.MaxLifetimeRequests = n
		return nil
	}},
	"health": {args: -1, set: parseHealth},
	"canary": {args: -1, set: parseCanary},
}

// parseCanary reads `canary [SHARE%] [WINDOW]`.
func parseCanary(p *Process, a []string) error {
	c := new(Canary)
	if len(a) > 2 {
		return fmt.Errorf("%q: want [SHARE%%] [WINDOW], as in: canary 10%% 30s", a)
	}
	for _, v := range a {
		if pct, ok := strings.CutSuffix(v, "%"); ok {
			n, err := strconv.Atoi(pct)
			if err != nil || n < 1 || n > maxCanaryShare || c.Share != 0 {
				return fmt.Errorf("share %q: want one percentage between 1%% and %d%%, as in: canary 10%% 30s", v, maxCanaryShare)
			}
			c.Share = n
			continue
		}
		d, err := parseDuration(v)
		if err != nil || d <= 0 || c.Window != 0 {
			return fmt.Errorf("%q: want [SHARE%%] [WINDOW] (a share ends with %%, the window is a duration), as in: canary 10%% 30s", v)
		}
		c.Window = Duration(d)
	}
	p.Canary = c
	return nil
}

// parseHealth reads `health [tcp [ADDR] | http [URL]] [interval D]
// [timeout D] [fails N]`.
func parseHealth(p *Process, a []string) error {
	h := new(HealthCheck)
	if len(a) > 0 && (a[0] == "tcp" || a[0] == "http") {
		kind, target := a[0], ""
		a = a[1:]
		if len(a) > 0 && a[0] != "interval" && a[0] != "timeout" && a[0] != "fails" {
			target, a = a[0], a[1:]
		}
		if kind == "tcp" {
			h.TCP = &target
		} else {
			h.HTTP = &target
		}
	}
	for len(a) > 0 {
		if a[0] != "interval" && a[0] != "timeout" && a[0] != "fails" {
			return fmt.Errorf("%q: want [tcp [HOST:PORT] | http [URL]] [interval DURATION] [timeout DURATION] [fails COUNT]", a[0])
		}
		if len(a) < 2 {
			return fmt.Errorf("%q: %s needs a value", a, a[0])
		}
		var err error
		switch a[0] {
		case "interval", "timeout":
			var v time.Duration
			if v, err = parseDuration(a[1]); err == nil {
				if a[0] == "interval" {
					h.Interval = Duration(v)
				} else {
					h.Timeout = Duration(v)
				}
			}
		case "fails":
			if h.Fails, err = strconv.Atoi(a[1]); err != nil || h.Fails <= 0 {
				err = fmt.Errorf("%q: must be a whole number above 0", a[1])
			}
		}
		if err != nil {
			return fmt.Errorf("%s %v", a[0], err)
		}
		a = a[2:]
	}
	p.Health = h
	return nil
}

func countSetter(field func(*Process) *int) func(*Process, []string) error {
	return func(p *Process, a []string) error {
		n, err := strconv.Atoi(a[0])
		if err != nil || n <= 0 {
			return fmt.Errorf("%q: must be a whole number above 0", a[0])
		}
		*field(p) = n
		return nil
	}
}

func subdirectiveNames() []string {
	names := make([]string, 0, len(subdirectives))
	for name := range subdirectives {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func stringSetter(field func(*Process) *string) func(*Process, []string) error {
	return func(p *Process, a []string) error {
		*field(p) = a[0]
		return nil
	}
}

func durationSetter(field func(*Process) *Duration) func(*Process, []string) error {
	return func(p *Process, a []string) error {
		v, err := parseDuration(a[0])
		if err != nil {
			return err
		}
		*field(p) = Duration(v)
		return nil
	}
}

func oneOf(field func(*Process) *string, values ...string) func(*Process, []string) error {
	return func(p *Process, a []string) error {
		if err := checkOneOf("", a[0], values); err != nil {
			return errors.New(strings.TrimPrefix(err.Error(), " "))
		}
		*field(p) = a[0]
		return nil
	}
}
