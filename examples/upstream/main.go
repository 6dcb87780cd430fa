// Command upstream is a small app server that behaves like Puma, gunicorn or
// a Node server on SIGTERM: it closes its listener at once, finishes the
// requests in flight, and exits. The demo runs it under `supervise`, and the
// tests use its extra flags to observe what a supervised app sees.
//
//	GET /            200 "hello from upstream pid N"
//	GET /sleep?d=1s  200 after the given time (&report: tell the test it arrived)
//	GET /hang        never answers (until the process ends)
//	GET /events      server-sent events: "data: pid N" every 200 ms, until the client goes
//	GET /exit?code=N exits at once with status N, like a crash
//	GET /status?code=N answers with status N
//	GET /drop        closes the connection without an answer
//
// Given a listening socket by the socket-activation protocol (LISTEN_FDS=1,
// LISTEN_PID its PID, descriptor 3), it serves on that socket.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("listen", "", "address to listen on (default 127.0.0.1:$PORT, else 127.0.0.1:3000)")
	linger := flag.Duration("linger", 0, "extra time to take after the last request before exiting, as a slow app server would")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM and SIGINT (a misbehaving app)")
	events := flag.String("events", "", "test hook: TCP address to report events to, one JSON object a line")
	delay := flag.Duration("delay", 0, "wait this long before listening, like an app server that boots slowly")
	warmup := flag.Duration("warmup", 0, "answer 503 for this long after listening, like an app that accepts connections before it is ready")
	probe := flag.String("probe", "", "test hook: on a stop signal, report whether this TCP address still accepts connections")
	flag.Parse()
	if *addr == "" {
		port := os.Getenv("PORT")
		if port == "" {
			port = "3000"
		}
		*addr = "127.0.0.1:" + port
	}

	rep := newReporter(*events)
	sigs := make(chan os.Signal, 1)
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
	} else {
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	}

	time.Sleep(*delay)
	noteUserSignals(rep)
	ln, activated, err := listen(*addr)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from upstream pid %d\n", os.Getpid())
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		if d >= time.Second {
			log.Printf("upstream: %s: sleeping %s", r.URL, d)
		}
		if r.URL.Query().Has("report") {
			rep.send(map[string]any{"ev": "request", "path": r.URL.Path})
		}
		time.Sleep(d)
		fmt.Fprintf(w, "slept %s\n", d)
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		rep.send(map[string]any{"ev": "request", "path": r.URL.Path})
		select {}
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			fmt.Fprintf(w, "data: pid %d\n\n", os.Getpid())
			if err := http.NewResponseController(w).Flush(); err != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	inflight := &requests{}
	inflight.cond = sync.NewCond(&inflight.mu)
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Query().Get("code"))
		if err != nil || code < 200 || code > 599 {
			code = http.StatusBadRequest
		}
		http.Error(w, "status as asked", code)
	})
	mux.HandleFunc("/drop", func(w http.ResponseWriter, r *http.Request) {
		// test hook: the connection closes without an answer
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		log.Printf("upstream: exiting with status %d as asked", code)
		os.Exit(code) // test hook: a crash
	})
	readyAt := time.Now().Add(*warmup) // we listen from now on
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().Before(readyAt) {
			http.Error(w, "booting", http.StatusServiceUnavailable)
			return
		}
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: inflight.track(handler), ConnState: inflight.connState}
	go func() { _ = srv.Serve(ln) }()
	log.Printf("upstream pid %d listening on %s", os.Getpid(), ln.Addr())
	rep.send(map[string]any{"ev": "ready", "pid": os.Getpid(), "ppid": os.Getppid(), "addr": ln.Addr().String(), "activated": activated, "t": time.Now().UnixNano()})

	sig := <-sigs
	ev := map[string]any{"ev": "signal", "sig": sig.String(), "t": time.Now().UnixNano()}
	if *probe != "" {
		c, err := net.DialTimeout("tcp", *probe, time.Second)
		ev["probe_accepted"] = err == nil
		if c != nil {
			c.Close()
		}
	}
	rep.send(ev)
	log.Printf("upstream got %s: closing the listener, finishing requests", sig)
	// Close the listener, let the requests in flight finish, linger, exit.
	// (http.Server.Shutdown alone would also wait up to 5 s for connections
	// on which no request has arrived yet, which app servers do not do.)
	go func() { _ = srv.Shutdown(context.Background()) }()
	inflight.wait()
	time.Sleep(*linger)
	rep.send(map[string]any{"ev": "exit", "t": time.Now().UnixNano()})
}

// listen takes the listening socket it was handed (the socket-activation
// protocol: LISTEN_FDS=1 and LISTEN_PID its own PID, the socket on
// descriptor 3, as `socket` in supervise gives it), else listens on addr.
func listen(addr string) (net.Listener, bool, error) {
	if os.Getenv("LISTEN_FDS") == "1" && os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		f := os.NewFile(3, os.Getenv("LISTEN_FDNAMES"))
		ln, err := net.FileListener(f)
		f.Close() // ln has its own copy
		return ln, true, err
	}
	ln, err := net.Listen("tcp", addr)
	return ln, false, err
}

// requests counts the requests in flight: from the handler's start until
// the response was written out (the connection is idle again, or closed).
type requests struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n      int               // handlers running
	active map[net.Conn]bool // connections with a request whose response is not written yet
}

// connState follows each connection: a response is written out once its
// connection leaves StateActive.
func (rs *requests) connState(c net.Conn, st http.ConnState) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.active == nil {
		rs.active = make(map[net.Conn]bool)
	}
	if st == http.StateActive {
		rs.active[c] = true
	} else {
		delete(rs.active, c)
	}
	rs.cond.Broadcast()
}

func (rs *requests) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.mu.Lock()
		rs.n++
		rs.mu.Unlock()
		defer func() {
			rs.mu.Lock()
			rs.n--
			rs.cond.Broadcast()
			rs.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// wait returns once no request is in flight and every response was
// written out.
func (rs *requests) wait() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rs.n > 0 || len(rs.active) > 0 {
		rs.cond.Wait()
	}
}

// reporter writes events to the test that started us. When this process
// dies, the kernel closes the connection: the test sees that as EOF.
type reporter struct {
	mu sync.Mutex
	c  net.Conn
}

func newReporter(addr string) *reporter {
	r := &reporter{}
	if addr != "" {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		r.c = c
	}
	return r
}

func (r *reporter) send(v map[string]any) {
	if r.c == nil {
		return
	}
	b, _ := json.Marshal(v)
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.c.Write(append(b, '\n'))
}
