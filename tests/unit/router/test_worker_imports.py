"""A router worker imports everything it runs before it changes to its own user (worker.py
main: preload(), then drop_root()): after that it may read no file, the checkout, the venv and
the standard library included, when they are root's alone. Here, in a fresh interpreter, the
whole worker (`worker.main`, as the daemon starts it) runs against a stand-in for the daemon:
the route table, a change, its listening sockets (the main one, a space's, then that space's
withdrawn), the shared counters; it answers every kind of request and sends its log lines back.
From drop_root() on, an audit hook records every import and every file opened: there must be
none. No root needed (drop_root changes nothing here; it marks the moment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import json, socket, struct, sys, threading
from dynod.router import wire, worker
from dynod.router.routes import AppChanged, AppRoute, Backend, RouteTable
from dynod.router.turns import shared_turns_file

after = []
watching = threading.Event()


def audit(event, args):
    if watching.is_set() and event in ("import", "open"):
        after.append([event, str(args[0])])


sys.addaudithook(audit)
worker.drop_root = lambda settings: watching.set()  # the moment the user would change


def serve_one(conn):
    # a dyno answering 200 to each request, its body (Content-Length or chunked) read first
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                while b"0\r\n\r\n" not in data:
                    data += conn.recv(65536)
                data = data.partition(b"0\r\n\r\n")[2]
            elif b"content-length: " in lower:
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        pass
    finally:
        conn.close()


def backend_loop(server):
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def ask(port, raw):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def read_frames(ctl, frames):
    buffer = b""
    while True:
        chunk = ctl.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
            size = struct.unpack(">I", buffer[:4])[0]
            frames.append(json.loads(buffer[4 : 4 + size]))
            buffer = buffer[4 + size :]


backend = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=backend_loop, args=(backend,), daemon=True).start()
closed = socket.create_server(("127.0.0.1", 0))
closed_port = closed.getsockname()[1]
closed.close()
dyno = Backend("web.1", "127.0.0.1", backend.getsockname()[1])

ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
chan, chan_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
settings = {
    "ctl_fd": ctl_child.fileno(),
    "listen_fd": chan_child.fileno(),
    "turns_fd": shared_turns_file(),
    "user": None,
    "socket_mark": None,
    "max_client_connections": 64,
}
thread = threading.Thread(target=worker.main, args=([json.dumps(settings)],))
thread.start()
frames = []
reader = threading.Thread(target=read_frames, args=(ctl, frames), daemon=True)
reader.start()

table = RouteTable({"a": AppRoute((dyno,)), "idle": AppRoute(()), "gone": AppRoute(
    (Backend("web.1", "127.0.0.1", closed_port),))})
ctl.sendall(wire.table_frame(table))
main = socket.create_server(("127.0.0.1", 0))
space = socket.create_server(("127.0.0.1", 0))
wire.send_listen(chan, "main", main)
wire.send_listen(chan, "127.0.0.1", space)
ctl.sendall(wire.changes_frame([AppChanged("b", AppRoute((dyno,)))]))
port = main.getsockname()[1]
while not watching.is_set() or ask(port, b"GET / HTTP/1.1\r\nHost: b.localhost\r\n\r\n") != (
    "HTTP/1.1 200 OK"
):
    pass  # until the worker serves, with the change applied
answers = [ask(port, raw.encode("latin-1")) for raw in json.loads(sys.argv[1])]
answers.append(ask(space.getsockname()[1], b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n"))
wire.send_listen(chan, "127.0.0.1", None)  # the space withdrawn
ctl.shutdown(socket.SHUT_WR)  # the daemon gone: the worker ends
thread.join(30)
reader.join(10)
lines = [line for f in frames for line, _app in f.get("logs", [])]
print(json.dumps({"after": after, "answers": answers, "lines": len(lines),
                  "alive": thread.is_alive()}))
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


def test_a_whole_worker_imports_and_opens_nothing_after_it_would_change_user() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(list(REQUESTS))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["answers"] == [*REQUESTS.values(), "HTTP/1.1 200 OK"]
    assert not found["alive"]  # it ended with the daemon's end of its socket
    assert found["lines"] >= len(REQUESTS)  # a log line per request, back to the daemon
    assert found["after"] == []
