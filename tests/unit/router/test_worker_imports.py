"""A router worker imports everything it runs before it changes to its own user (worker.py
main: preload, then drop_root): after that it may read no file, the checkout, the venv and
the standard library included, when they are root's alone. Here, in a fresh interpreter, the
worker's module and preload() are imported first; then a Router (what a worker serves with)
answers every kind of request on uvloop, and no module may be imported meanwhile. No root
needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import asyncio, json, socket, sys
from dynod.router import worker
worker.preload()
import uvloop
from dynod.router.routes import Backend
from dynod.router.server import Router

before = set(sys.modules)


async def backend(reader, writer):
    # a dyno answering 200 to each request, its body (Content-Length or chunked) read first
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                await reader.readuntil(b"0\r\n\r\n")
            elif b"content-length: " in lower:
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def ask(port, raw):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line.decode("latin-1").strip()


async def main():
    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    apps = {
        "a": [Backend("web.1", "127.0.0.1", port)],
        "gone": [Backend("web.1", "127.0.0.1", closed_port)],
        "idle": [],
    }
    lines = []
    router = Router(lambda app, ip: apps.get(app), lambda line, app: lines.append(line))
    await router.start("127.0.0.1", 0)
    answers = [await ask(router.port, raw.encode("latin-1")) for raw in json.loads(sys.argv[1])]
    await router.close()
    server.close()
    print(json.dumps({"new": sorted(set(sys.modules) - before), "answers": answers,
                      "lines": len(lines)}))


uvloop.run(main())
"""

HOST = "Host: {}.localhost\r\n"
REQUESTS = {
    "GET / HTTP/1.1\r\n" + HOST.format("a") + "\r\n": "HTTP/1.1 200 OK",  # the fast path
    "GET / HTTP/1.0\r\n" + HOST.format("a") + "\r\n": "HTTP/1.1 200 OK",  # h11's
    "POST / HTTP/1.1\r\n" + HOST.format("a") + "Transfer-Encoding: chunked\r\n\r\n"
    "5\r\nhello\r\n0\r\n\r\n": "HTTP/1.1 200 OK",
    "PUT / HTTP/1.1\r\n" + HOST.format("a") + "Content-Length: 3\r\n\r\nabc": "HTTP/1.1 200 OK",
    "GET / HTTP/1.1\r\n" + HOST.format("a") + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n": (
        "HTTP/1.1 200 OK"
    ),
    "GET / HTTP/1.1\r\n" + HOST.format("nobody") + "\r\n": "HTTP/1.1 404 Not Found",
    "GET / HTTP/1.1\r\n" + HOST.format("gone") + "\r\n": "HTTP/1.1 503 Service Unavailable",
    "GET / HTTP/1.1\r\n" + HOST.format("idle") + "\r\n": "HTTP/1.1 503 Service Unavailable",
    "GET / HTTP/1.1\r\n" + HOST.format("a") + "Content-Length: 1\r\n"
    "Transfer-Encoding: chunked\r\n\r\n": "HTTP/1.1 400 Bad Request",
    "GET / HTTP/1.1\r\n" + HOST.format("a") + "X: " + "a" * 70000 + "\r\n\r\n": (
        "HTTP/1.1 431 Request Header Fields Too Large"
    ),
    "NONSENSE\r\n\r\n": "HTTP/1.1 400 Bad Request",
}


def test_serving_every_kind_of_request_imports_nothing_after_preload() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(list(REQUESTS))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["answers"] == list(REQUESTS.values())
    assert found["lines"] >= 8  # a log line per routed request
    assert found["new"] == []
