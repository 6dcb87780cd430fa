package supervise

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkOneLine measures, side by side in one run, what a Rails user
// of `caddy supervise` gets on Thruster's own ground (issue 20): the one
// line in front of Debian's Puma running the test Rails app, against
// hand-written Caddy configs in front of the same app instance, with wrk
// (scripts/deps.sh bench installs it). Each figure is the median of
// rounds of 5 s (3, SUPERVISE_BENCH_ROUNDS; twice as many and one more for
// the proxied request, which the app bounds), the configs taking turns
// within a round, each going first in turn:
//
//   - X-Sendfile of a 5 MB file (4 connections): the one line vs a minimal
//     Caddyfile (reverse_proxy with only the handle_response + file_server
//     part), with Caddy's defaults and "tuned" (with the one line's global
//     options, under which files go out through sendfile), and vs a tuned
//     plain file_server of the same file (the ceiling: no round trip to
//     the app); and the one line's config with a static upstream, with
//     supervise_sendfile and with the rewrite + file_server it used
//     before (issue 28);
//   - a 20 KB asset of public/ (16 connections): the one line vs a plain
//     file_server, with Caddy's defaults and tuned;
//   - a proxied dynamic request, GET / (16 connections): the one line vs
//     the same generated config with a static upstream and no supervised
//     process (the cost of the dynamic upstream), and vs a bare
//     reverse_proxy (what the generated extras cost); and a bare Caddy
//     reverse_proxy and the one line vs Go's httputil.ReverseProxy
//     (Thruster's proxy) run in the benchmark's process; and the static
//     config vs the same without supervise_streams (what seeing streams
//     costs an ordinary request);
//   - a 240 kB page with Accept-Encoding: gzip (16 connections): the one
//     line vs `encode gzip` + reverse_proxy.
//
// SUPERVISE_BENCH_FIGURES=xsendfile,proxied runs only those figures.
// Request logs are off in the one line (LOG_REQUESTS=false), as in the
// hand-written configs. Then the RSS of the one line's Caddy and of the
// Caddy of the hand-written configs with Caddy's defaults (no supervise
// app), idle and after the load.
func BenchmarkOneLine(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed (bash scripts/deps.sh bench installs it)")
	}
	dir := railsDir(b)
	blob := filepath.Join(b.TempDir(), "blob.bin")
	data := make([]byte, 5_000_000)
	rand.Read(data)
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		b.Fatal(err)
	}
	// the plain file_server's root: the blob and a copy of the asset
	asset, err := os.ReadFile(filepath.Join(dir, "public", "assets", "app-4567cdef.js"))
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(blob), "app-4567cdef.js"), asset, 0o644); err != nil {
		b.Fatal(err)
	}
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("SUPERVISE_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	for b.Loop() {
		oneLinePort, appPort := freePort(b), freePort(b)
		env := []string{"HTTP_PORT=" + strconv.Itoa(oneLinePort), "TARGET_PORT=" + strconv.Itoa(appPort),
			"RAILS_ENV=production", "BLOB_FILE=" + blob, "LOG_REQUESTS=false"}
		flags := []string{"--ready", "/up", "--admin", "off"}
		command := []string{"bin/rails", "server"}
		c := superviseCaddy(b, dir, flags, command, env...)
		c.waitLog(`"to":"ready"`, 60*time.Second)

		// the same generated config, with a static upstream and no supervise
		print := exec.Command(caddyBin, append(append(append([]string{"supervise", "--print-caddyfile"}, flags...), "--"), command...)...)
		print.Dir, print.Env = dir, append(os.Environ(), env...)
		out, err := print.Output()
		if err != nil {
			b.Fatal(err)
		}
		static, noStreams, bare, gzipped := freePort(b), freePort(b), freePort(b), freePort(b)
		minimal, minimalTuned, plain, plainTuned := freePort(b), freePort(b), freePort(b), freePort(b)
		gen := regexp.MustCompile(`(?m)^\s*#.*\n`).ReplaceAllString(string(out), "")
		gen = regexp.MustCompile(`(?s)\n\tsupervise .*?\n\t}\n`).ReplaceAllString(gen, "\n")
		gen = regexp.MustCompile(`(?s)dynamic supervise app \{.*?\}`).ReplaceAllString(gen, "to 127.0.0.1:"+strconv.Itoa(appPort))
		gen = strings.ReplaceAll(gen, "http_port "+strconv.Itoa(oneLinePort), "http_port "+strconv.Itoa(static))
		gen = strings.ReplaceAll(gen, "http://:"+strconv.Itoa(oneLinePort), "http://:"+strconv.Itoa(static))
		gen = strings.ReplaceAll(gen, "\n\tlog\n", "\n")
		if strings.Contains(gen, "dynamic supervise") || strings.Contains(gen, "\tsupervise ") {
			b.Fatalf("the static variant still names supervise:\n%s", gen)
		}
		// and the same without supervise_streams: what seeing streams costs
		plainProxy := strings.ReplaceAll(strings.ReplaceAll(gen, "\t\tsupervise_streams\n", ""), "http://:"+strconv.Itoa(static), "http://:"+strconv.Itoa(noStreams))
		if plainProxy == gen || strings.Contains(plainProxy, "supervise_streams") {
			b.Fatalf("no supervise_streams to take out of:\n%s", gen)
		}
		_, site, _ := strings.Cut(plainProxy, "\n}\n") // its site only: the global options are gen's
		// and the same with X-Sendfile answered as the one line did before
		// supervise_sendfile (rewrite + file_server: issue 28)
		previous := freePort(b)
		_, prevSite, _ := strings.Cut(strings.ReplaceAll(gen, "http://:"+strconv.Itoa(static), "http://:"+strconv.Itoa(previous)), "\n}\n")
		prevSite = strings.Replace(strings.Replace(prevSite, "\t\tsupervise_sendfile\n", "", 1), "\t\t\tlb_retries 3\n", `			lb_retries 3
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
`, 1)
		if strings.Contains(prevSite, "supervise_sendfile") || !strings.Contains(prevSite, "handle_response") {
			b.Fatalf("no supervise_sendfile to take out of:\n%s", gen)
		}
		minimalSite := func(port int) string {
			return fmt.Sprintf(`http://:%d {
	reverse_proxy 127.0.0.1:%d {
		header_up X-Sendfile-Type X-Sendfile
		@sendfile header X-Sendfile *
		handle_response @sendfile {
			root * /
			rewrite * {rp.header.X-Sendfile}
			file_server
		}
	}
}
`, port, appPort)
		}
		plainSite := func(port int) string {
			return fmt.Sprintf("http://:%d {\n\troot * %s\n\tfile_server\n}\n", port, filepath.Dir(blob))
		}
		// the hand-written configs as a user writes them: Caddy's defaults
		hand := fmt.Sprintf("{\n\tadmin off\n}\nhttp://:%d {\n\treverse_proxy 127.0.0.1:%d\n}\n", bare, appPort) +
			fmt.Sprintf("http://:%d {\n\tencode gzip\n\treverse_proxy 127.0.0.1:%d\n}\n", gzipped, appPort) +
			minimalSite(minimal) + plainSite(plain)
		// and with the one line's global options (files through sendfile)
		tuned := gen + "\n" + site + "\n" + prevSite + "\n" + minimalSite(minimalTuned) + plainSite(plainTuned)
		var caddys []*caddyProc
		for i, src := range []string{hand, tuned} {
			path := filepath.Join(b.TempDir(), fmt.Sprintf("Caddyfile%d", i))
			if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
				b.Fatal(err)
			}
			caddys = append(caddys, startCaddyFile(b, path, "caddyfile"))
		}
		plainCaddy := caddys[0]
		oneIdle, plainIdle := rssKiB(b, c.cmd.Process.Pid), rssKiB(b, plainCaddy.cmd.Process.Pid)

		// Go's httputil.ReverseProxy (Thruster's proxy), in this process
		goProxy := freePort(b)
		app, _ := neturl.Parse(fmt.Sprintf("http://127.0.0.1:%d", appPort))
		srv := &http.Server{Addr: fmt.Sprintf("127.0.0.1:%d", goProxy), Handler: httputil.NewSingleHostReverseProxy(app)}
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(ln)
		b.Cleanup(func() { srv.Close() })

		url := func(port int, p string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", port, p) }
		blobPath := "/" + filepath.Base(blob)

		// each figure: its targets, the one line first, each with the label
		// its metrics carry
		type target struct{ label, url string }
		figures := []struct {
			name    string
			conns   int
			targets []target
			size    int    // bytes a response carries: MB/s rather than req/s
			header  string // a request header, if any
		}{
			{"xsendfile", 4, []target{{"one-line", url(oneLinePort, "/blob")}, {"minimal", url(minimal, "/blob")},
				{"minimal-tuned", url(minimalTuned, "/blob")}, {"file-server-tuned", url(plainTuned, blobPath)},
				{"static", url(static, "/blob")}, {"static-previous", url(previous, "/blob")}}, len(data), ""},
			{"asset", 16, []target{{"one-line", url(oneLinePort, "/assets/app-4567cdef.js")}, {"file-server", url(plain, "/app-4567cdef.js")},
				{"file-server-tuned", url(plainTuned, "/app-4567cdef.js")}}, 0, ""},
			{"proxied", 16, []target{{"one-line", url(oneLinePort, "/")}, {"static", url(static, "/")}, {"bare", url(bare, "/")},
				{"go-httputil", url(goProxy, "/")}, {"static-no-streams", url(noStreams, "/")}}, 0, ""},
			{"gzip-page", 16, []target{{"one-line", url(oneLinePort, "/big")}, {"encode-gzip", url(gzipped, "/big")}}, 0, "Accept-Encoding: gzip"},
		}
		only := os.Getenv("SUPERVISE_BENCH_FIGURES") // comma-separated names; empty: all
		for _, f := range figures {
			if only != "" && !slices.Contains(strings.Split(only, ","), f.name) {
				continue
			}
			rates := make([][]float64, len(f.targets))
			var p99s []float64 // the one line's
			n := rounds
			if f.name == "proxied" {
				n = 2*rounds + 1 // bound by the app: noisier
			}
			for k := range n {
				for j := range f.targets {
					i := (k + j) % len(f.targets) // each config goes first in turn
					r, p99 := runWrk(b, wrk, f.targets[i].url, f.header, f.conns, 5*time.Second)
					rates[i] = append(rates[i], r)
					if i == 0 {
						p99s = append(p99s, p99)
					}
				}
			}
			unit, scale := "req/s", 1.0
			if f.size > 0 {
				unit, scale = "MB/s", float64(f.size)/1e6
			}
			one := medianOf(rates[0])
			b.ReportMetric(medianOf(p99s), "ms-p99-"+f.name+"-one-line")
			for i, t := range f.targets {
				b.ReportMetric(medianOf(rates[i])*scale, unit+"-"+f.name+"-"+t.label)
				if i > 0 {
					b.ReportMetric(one/medianOf(rates[i]), "ratio-"+f.name+"-one-line/"+t.label)
				}
			}
			if f.name == "xsendfile" {
				b.ReportMetric(medianOf(rates[4])/medianOf(rates[5]), "ratio-xsendfile-static/static-previous")
			}
			if f.name == "proxied" {
				b.ReportMetric(medianOf(rates[2])/medianOf(rates[3]), "ratio-proxied-bare-caddy/go-httputil")
				b.ReportMetric(medianOf(rates[1])/medianOf(rates[4]), "ratio-proxied-static/static-no-streams")
			}
		}
		// memory: the one line's Caddy and the hand-written configs' Caddy
		// (no supervise app; the same kinds of requests), idle and after
		b.ReportMetric(float64(oneIdle)/1024, "MiB-rss-one-line-idle")
		b.ReportMetric(float64(plainIdle)/1024, "MiB-rss-plain-idle")
		b.ReportMetric(float64(rssKiB(b, c.cmd.Process.Pid))/1024, "MiB-rss-one-line-after")
		b.ReportMetric(float64(rssKiB(b, plainCaddy.cmd.Process.Pid))/1024, "MiB-rss-plain-after")
	}
}

var (
	wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99  = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	wrkErrs = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

// runWrk loads url with conns connections for d and returns the rate of
// requests and the 99th percentile latency in ms; any error fails.
func runWrk(b *testing.B, wrk, url, header string, conns int, d time.Duration) (rate, p99 float64) {
	b.Helper()
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + d.String(), "--latency"}
	if header != "" {
		args = append(args, "-H", header)
	}
	out, err := exec.Command(wrk, append(args, url)...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	if m := wrkErrs.Find(out); m != nil {
		b.Fatalf("wrk %s: %s\n%s", url, m, out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk %s: no rate in\n%s", url, out)
	}
	rate, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := wrkP99.FindSubmatch(out); m != nil {
		p99, _ = strconv.ParseFloat(string(m[1]), 64)
		switch string(m[2]) {
		case "us":
			p99 /= 1000
		case "s":
			p99 *= 1000
		}
	}
	return rate, p99
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
