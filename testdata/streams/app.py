"""An ASGI app with streams, for the stream tests (Debian's uvicorn 0.17 with python3-websockets 10).

GET /up      200 "ok" (readiness)
GET /        "pid PID"; /?ms=N answers after N milliseconds (from 500 on, it logs "slow request N ms" first)
GET /sse     text/event-stream: "data: pid PID n N" at once, then every 200 ms
WS  /ws      sends "pid PID" on connect, then answers each text message M with "pid PID: M"

Every stream that ends is reported on stderr: "stream ended: ws CODE" (the close
code the client sent, or "none" when the connection was cut) or "stream ended: sse".
If the file $BROKEN_FILE exists, the app exits with status 3 as it starts (a broken release).
"""
import asyncio
import os
import sys

PID = os.getpid()
if os.path.exists(os.environ.get("BROKEN_FILE", "/nonexistent")):
    print("broken release: BROKEN_FILE exists", file=sys.stderr, flush=True)
    sys.exit(3)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket(receive, send)
        return
    path = scope["path"]
    if path == "/sse":
        await sse(receive, send)
        return
    query = scope.get("query_string", b"").decode()
    if query.startswith("ms=") and query[3:].isdigit():
        if int(query[3:]) >= 500:
            log(f"slow request {query[3:]} ms")
        await asyncio.sleep(int(query[3:]) / 1000)
    body = b"ok\n" if path == "/up" else f"pid {PID}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def websocket(receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": f"pid {PID}"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            log(f"stream ended: ws {msg.get('code', 'none')}")
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": f"pid {PID}: {msg['text']}"})


async def sse(receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    while (await receive()).get("more_body"):  # the request's body
        pass
    gone = asyncio.ensure_future(receive())  # http.disconnect once the client left
    n = 0
    try:
        while not gone.done():
            await send({"type": "http.response.body", "body": f"data: pid {PID} n {n}\n\n".encode(), "more_body": True})
            n += 1
            await asyncio.wait([gone], timeout=0.2)
    finally:
        gone.cancel()
        log("stream ended: sse")
