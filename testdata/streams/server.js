// A Node server with streams, for the stream tests: Node's http module and
// the `ws` package (Debian's node-ws). Listens on 127.0.0.1:$PORT.
//
// GET /up   200 "ok" (readiness)
// GET /     "pid PID"
// GET /sse  text/event-stream: "data: pid PID n N" at once, then every 200 ms
// WS  /ws   sends "pid PID" on connect, then answers each message M with "pid PID: M"
//
// Every stream that ends is reported on stderr: "stream ended: ws CODE" or
// "stream ended: sse".
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const pid = process.pid;
const server = http.createServer((req, res) => {
  if (req.url === "/sse") {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    let n = 0;
    const tick = () => res.write(`data: pid ${pid} n ${n++}\n\n`);
    tick();
    const timer = setInterval(tick, 200);
    res.on("close", () => {
      clearInterval(timer);
      console.error("stream ended: sse");
    });
    return;
  }
  const body = req.url === "/up" ? "ok\n" : `pid ${pid}\n`;
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
});
const wss = new WebSocketServer({ server, path: "/ws" });
wss.on("connection", (ws) => {
  ws.send(`pid ${pid}`);
  ws.on("message", (m) => ws.send(`pid ${pid}: ${m}`));
  ws.on("close", (code) => console.error(`stream ended: ws ${code}`));
});
server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => {
  server.close();
  for (const c of wss.clients) c.terminate();
  process.exit(0);
});
