package supervise

import (
	"encoding/json"
	"fmt"

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
//		name          <name>
//		dir           <path>
//		env           <key> <value>
//		stop_signal   <signal>
//		drain_timeout <duration>
//		stop_timeout  <duration>
//	}
//
// The block is optional. Values are checked here, so that `caddy adapt`
// reports a bad one with its file and line.
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
		opt := d.Val()
		if seen[opt] && opt != "env" {
			return nil, d.Errf("supervise: %s: set twice", opt)
		}
		seen[opt] = true
		args := d.RemainingArgs()
		want := 1
		if opt == "env" {
			want = 2
		}
		switch opt {
		case "name", "dir", "env", "stop_signal", "drain_timeout", "stop_timeout":
		default:
			return nil, d.Errf("supervise: unknown subdirective %q (known: name, dir, env, stop_signal, drain_timeout, stop_timeout)", opt)
		}
		if len(args) != want {
			return nil, d.Errf("supervise: %s: takes %d value(s), got %d: %q", opt, want, len(args), args)
		}
		v := args[0]
		switch opt {
		case "name":
			p.Name = v
		case "dir":
			p.Dir = v
		case "env":
			if p.Env == nil {
				p.Env = make(map[string]string)
			}
			if _, dup := p.Env[v]; dup {
				return nil, d.Errf("supervise: env %s: set twice", v)
			}
			p.Env[v] = args[1]
		case "stop_signal":
			if _, err := parseSignal(v); err != nil {
				return nil, d.Errf("supervise: stop_signal %q: %v", v, err)
			}
			p.StopSignal = v
		case "drain_timeout", "stop_timeout":
			dur, err := parseDuration(v)
			if err != nil {
				return nil, d.Errf("supervise: %s %v", opt, err)
			}
			if opt == "drain_timeout" {
				p.DrainTimeout = Duration(dur)
			} else {
				p.StopTimeout = Duration(dur)
			}
		}
	}
	app.Processes = append(app.Processes, p)
	var warnings []caddyconfig.Warning
	raw := caddyconfig.JSON(app, &warnings)
	if len(warnings) > 0 {
		return nil, fmt.Errorf("supervise: encoding: %s", warnings[0].Message)
	}
	return httpcaddyfile.App{Name: "supervise", Value: raw}, nil
}
