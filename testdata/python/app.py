"""A WSGI app (gunicorn) and an ASGI app (uvicorn) for the tests.

GET /?ms=N answers after N milliseconds: "pid PID".
"""
import asyncio
import os
import time
from urllib.parse import parse_qs


def _delay(query):
    ms = parse_qs(query).get("ms", ["0"])[0]
    return int(ms) / 1000 if ms.isdigit() else 0


def wsgi_app(environ, start_response):
    time.sleep(_delay(environ.get("QUERY_STRING", "")))
    body = f"pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(_delay(scope.get("query_string", b"").decode()))
    body = f"pid {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
