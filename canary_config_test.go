package supervise

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// `canary [SHARE%] [WINDOW]` in the Caddyfile, its defaults, and the
// errors of `caddy adapt`, each naming the option and the value.
func TestCanaryCaddyfile(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"canary 20% 10s", `"canary":{"share":20,"window":"10s"}`},
		{"canary 10s 5%", `"canary":{"share":5,"window":"10s"}`},
		{"canary", `"canary":{}`},
	} {
		out, err := adapt(t, "{\n\tsupervise app {\n\t\tport auto\n\t\t"+tc.src+"\n\t}\n}\n")
		if err != nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %s %v, want %s", tc.src, out, err, tc.want)
		}
	}
	for _, tc := range []struct{ src, want string }{
		{"canary 60%", `canary share "60%": want one percentage between 1% and 50%`},
		{"canary 0% 10s", `canary share "0%": want one percentage`},
		{"canary 10% 20%", `canary share "20%": want one percentage`},
		{"canary ten", `canary "ten": want [SHARE%] [WINDOW]`},
		{"canary 10% 0s", `canary "0s": want [SHARE%] [WINDOW]`},
		{"canary 10% 10s 5s", `canary ["10%" "10s" "5s"]: want [SHARE%] [WINDOW]`},
	} {
		_, err := adapt(t, "{\n\tsupervise app {\n\t\tport auto\n\t\t"+tc.src+"\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%s: error %v, want one containing %q and where", tc.src, err, tc.want)
		}
	}
	p := &Process{Command: []string{"sleep"}, Port: "auto", Canary: &Canary{}}
	if err := p.provision(0); err != nil {
		t.Fatal(err)
	}
	if p.Canary.Share != DefaultCanaryShare || time.Duration(p.Canary.Window) != DefaultCanaryWindow {
		t.Errorf("defaults: %+v", p.Canary)
	}
}

// A canary needs what a window needs: the new release beside the old one
// (port auto and a probe), a dynamic upstream that sends it its share, and
// supervise_streams before it (which counts what the verdict reads).
// `caddy validate` says so, whichever app Caddy provisions first, and
// starts nothing.
func TestCanaryValidate(t *testing.T) {
	for _, tc := range []struct{ name, proc, want string }{
		{"fixed port", `"port":"3000","canary":{}`, `process "app": canary: needs port auto and a readiness probe (port "3000")`},
		{"no probe", `"port":"auto","ready":{"off":true},"canary":{}`, `canary: needs port auto and a readiness probe`},
		{"socket", `"socket":"127.0.0.1:3000","canary":{}`, `canary: not with socket "127.0.0.1:3000"`},
		{"share", `"port":"auto","canary":{"share":80}`, `canary share 80%: must be between 1% and 50%`},
		{"window", `"port":"auto","canary":{"window":"-1s"}`, `"-1s": must be positive`},
	} {
		_, err := validate(t, `{"processes":[{"name":"app","command":["sleep"],`+tc.proc+`}]}`)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}

	site := func(proxy string) string {
		return "{\n\tadmin off\n\tsupervise sleep 1000 {\n\t\tname web\n\t\tport auto\n\t\tcanary 10% 5s\n\t}\n}\n:0 {\n\t" + proxy + "\n}\n"
	}
	for i := range 12 { // (Caddy provisions its apps in a map's order)
		for _, tc := range []struct{ proxy, want string }{
			{"reverse_proxy 127.0.0.1:3000", "process \"web\": canary: needs a reverse_proxy with `dynamic supervise web` in this config"},
			{"reverse_proxy {\n\t\tdynamic supervise web\n\t}", "process \"web\": canary: needs supervise_streams before the reverse_proxy with `dynamic supervise web`"},
			{"supervise_streams\n\treverse_proxy {\n\t\tdynamic supervise web\n\t}", ""},
			// supervise_streams for some requests only: not for the proxy's
			{"@ws header Upgrade websocket\n\tsupervise_streams @ws\n\treverse_proxy {\n\t\tdynamic supervise web\n\t}", "canary: needs supervise_streams before the reverse_proxy"},
			// the same matcher on both: one route, covered
			{"@app path /*\n\tsupervise_streams @app\n\treverse_proxy @app {\n\t\tdynamic supervise web\n\t}", ""},
			// inside a handle (a subroute)
			{"handle {\n\t\tsupervise_streams\n\t\treverse_proxy {\n\t\t\tdynamic supervise web\n\t\t}\n\t}", ""},
		} {
			out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(site(tc.proxy)), nil)
			if err != nil {
				t.Fatal(err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("run %d: %v", i, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("run %d: error %v, want %q", i, err, tc.want)
			}
		}
	}
}

// --canary SHARE%:WINDOW in the one line.
func TestThrusterCanaryFlag(t *testing.T) {
	c, _ := thrusterFor(t, nil)
	c.BlueGreen, c.Ready = true, "/up"
	if err := c.parseCanary("20%:45s"); err != nil {
		t.Fatal(err)
	}
	if err := c.check(false); err != nil {
		t.Fatal(err)
	}
	src := c.caddyfile()
	if !strings.Contains(src, "canary 20% 45s") {
		t.Errorf("no canary in\n%s", src)
	}
	if _, _, err := (caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}).Adapt([]byte(src), nil); err != nil {
		t.Errorf("adapting:\n%s\n%v", src, err)
	}
	for _, v := range []string{"20%", "20:30s", "20%:", "60%:30s", "0%:30s", "20%:0s", "20%:-1s", "x%:1s", "20%:30s\n\trespond pwned"} {
		if err := c.parseCanary(v); err == nil || !strings.Contains(err.Error(), "--canary "+strings.TrimPrefix(jsonQuote(v), "")) {
			t.Errorf("--canary %q: %v", v, err)
		}
	}
	c, _ = thrusterFor(t, nil)
	if err := c.parseCanary("10%:30s"); err != nil {
		t.Fatal(err)
	}
	if err := c.check(false); err == nil || !strings.Contains(err.Error(), "--canary 10%:30s: needs --blue-green") {
		t.Errorf("--canary without --blue-green: %v", err)
	}
}

// jsonQuote is v as %q prints it.
func jsonQuote(v string) string {
	b, _ := json.Marshal(v)
	return strings.ReplaceAll(string(b), `\u003c`, "<")
}

// The canary's cookie name is a token whatever the process's name, and
// two names that differ only where they are not get two cookies.
func TestCanaryCookieName(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"web", "supervise_canary_web"},
		{"my-app.v2", "supervise_canary_my-app.v2"},
	} {
		if got := canaryCookieName(tc.name); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.name, got, tc.want)
		}
	}
	a, b := canaryCookieName("a:b"), canaryCookieName("a;b")
	for _, n := range []string{a, b} {
		if strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789_-.") != "" {
			t.Errorf("%q is not a cookie name token", n)
		}
	}
	if a == b {
		t.Errorf("a:b and a;b share the cookie %q", a)
	}
}
