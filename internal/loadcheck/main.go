// Command loadcheck puts HTTP load on a server and counts what failed, for
// scripts/e2e-containers.sh: CLIENTS clients GET PATH in a loop; once
// WARM requests have succeeded, one more request, SLOW, is sent (a request
// that takes seconds) and "slow request sent" is printed. When a line
// (or the end) comes on stdin, the stop has begun: "stop: N requests in
// flight" is printed, and from then on a
// connection that cannot be made (the listener is closed, the container is
// gone) ends a client quietly — no server is there to fail it — once
// ACCEPT_FOR has passed since the stop (the server's shutdown_delay, when
// it must go on accepting). Every other error, any error before the stop
// (or within ACCEPT_FOR), and any status but 200 is a failed
// request. When every client has ended and SLOW has its answer, it prints
// "N ok, M failed" with the details, and exits 1 if anything failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	base := flag.String("url", "", "the server's base URL, e.g. http://127.0.0.1:8080")
	clients := flag.Int("clients", 16, "concurrent clients")
	path := flag.String("path", "/", "what the clients GET")
	want := flag.String("want", "", "text every answer to PATH must contain")
	slow := flag.String("slow", "", "a slow request, sent once WARM requests succeeded (e.g. /slow?ms=4000)")
	warm := flag.Int64("warm", 200, "successful requests before SLOW is sent")
	limit := flag.Duration("limit", 2*time.Minute, "give up after this long")
	acceptFor := flag.Duration("accept-for", 0, "how long after the stop the server must still accept connections")
	flag.Parse()
	if *base == "" {
		fmt.Fprintln(os.Stderr, "loadcheck: -url is required")
		os.Exit(2)
	}

	var (
		stopping  atomic.Bool
		stoppedAt atomic.Int64 // unix nanoseconds
		ok, fails atomic.Int64
		inFlight  atomic.Int64
		mu        sync.Mutex
		failures  = map[string]int{}
	)
	fail := func(what string) {
		fails.Add(1)
		mu.Lock()
		failures[what]++
		mu.Unlock()
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: *clients + 1,
	}
	client := &http.Client{Transport: transport, Timeout: 40 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()

	// get sends one request; it reports whether the client should go on.
	get := func(url, wantText string) (body string, goOn bool) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			var op *net.OpError
			if stopping.Load() && errors.As(err, &op) && op.Op == "dial" {
				if since := time.Since(time.Unix(0, stoppedAt.Load())); since < *acceptFor {
					fail(fmt.Sprintf("a connection refused %s after the stop began, within -accept-for %s", since.Round(time.Millisecond), *acceptFor))
				}
				return "", false // no listener any more: the stop has begun
			}
			if ctx.Err() != nil {
				return "", false
			}
			fail(shorten(err.Error()))
			return "", !stopping.Load()
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			fail("body: " + shorten(err.Error()))
		case resp.StatusCode != 200:
			fail(fmt.Sprintf("status %d", resp.StatusCode))
		case !strings.Contains(string(b), wantText):
			fail(fmt.Sprintf("body %q", shorten(string(b))))
		default:
			ok.Add(1)
		}
		return string(b), true
	}

	var slowResult atomic.Value
	slowResult.Store("not sent")
	var slowOnce sync.Once
	var wg sync.WaitGroup
	sendSlow := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inFlight.Add(1)
			defer inFlight.Add(-1)
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, "GET", *base+*slow, nil)
			fmt.Println("slow request sent")
			resp, err := client.Do(req)
			if err != nil {
				fail("slow request: " + shorten(err.Error()))
				slowResult.Store("failed: " + shorten(err.Error()))
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				fail(fmt.Sprintf("slow request: status %d, %v", resp.StatusCode, err))
			} else {
				ok.Add(1)
			}
			slowResult.Store(fmt.Sprintf("%d after %.1fs (%s)", resp.StatusCode, time.Since(start).Seconds(), strings.TrimSpace(shorten(string(b)))))
		}()
	}
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, goOn := get(*base+*path, *want); !goOn {
					return
				}
				if *slow != "" && ok.Load() >= *warm {
					slowOnce.Do(sendSlow)
				}
			}
		}()
	}

	var atStop atomic.Int64
	go func() {
		_, _ = io.ReadAll(io.LimitReader(os.Stdin, 1)) // a line, or the end
		atStop.Store(inFlight.Load())
		stoppedAt.Store(time.Now().UnixNano())
		stopping.Store(true)
		fmt.Printf("stop: %d requests in flight\n", atStop.Load())
	}()
	wg.Wait()
	if ctx.Err() != nil {
		fail(fmt.Sprintf("still running after %s", *limit))
	}
	fmt.Printf("%d ok, %d failed (%d clients; %d requests in flight when the stop began; the slow request %s: %s)\n",
		ok.Load(), fails.Load(), *clients, atStop.Load(), *slow, slowResult.Load())
	for what, n := range failures {
		fmt.Printf("  failed %d× %s\n", n, what)
	}
	if fails.Load() > 0 || ok.Load() == 0 || !stopping.Load() {
		os.Exit(1)
	}
}

func shorten(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
