// A single-threaded Node server for the pool tests (instances, rolling
// restarts, recycling, liveness). Listens on 127.0.0.1:$PORT.
//
// GET /up          200 "ok" (readiness and health)
// GET /            "pid PID instance INSTANCE release RELEASE"
// GET /?burn=MS    the same, after burning MS ms of CPU (a busy handler)
// GET /?leak=KIB   the same, after keeping KIB KiB more of memory for good
//
// INSTANCE and RELEASE come from the environment. While BROKEN_FILE names a
// file that exists, the server exits with status 3 at boot (a broken
// release); if the file holds a number, only the instance of that index
// does. On SIGTERM it stops accepting, finishes what it has and exits.
"use strict";
const http = require("http");
const fs = require("fs");

const broken = process.env.BROKEN_FILE;
if (broken && fs.existsSync(broken)) {
  const only = fs.readFileSync(broken, "utf8").trim();
  if (only === "" || only === process.env.INSTANCE) {
    console.error("release is broken: exiting");
    process.exit(3);
  }
}
const pid = process.pid;
const id = `pid ${pid} instance ${process.env.INSTANCE} release ${process.env.RELEASE}\n`;
const kept = [];
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/up") {
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": 3 });
    res.end("ok\n");
    return;
  }
  const burn = Number(url.searchParams.get("burn") || 0);
  for (const end = Date.now() + burn; Date.now() < end; ) {
    // busy: a CPU-bound handler
  }
  const leak = Number(url.searchParams.get("leak") || 0);
  if (leak > 0) {
    kept.push(Buffer.alloc(leak * 1024, 1));
  }
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(id) });
  res.end(id);
});
server.keepAliveTimeout = 65000;
server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
