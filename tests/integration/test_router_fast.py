"""The router's fast path through a real daemon, its worker processes and a real web dyno: a
dyno flooding a client that does not read is held back, not buffered by the router."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support import DaemonProc, running_daemon

pytestmark = pytest.mark.root

APP = "flood"
SIZE = 64 << 20


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    with running_daemon() as daemon:
        daemon.run_app(APP, script="flood_app.py")
        yield daemon


def router_workers(daemon: DaemonProc) -> list[psutil.Process]:
    assert daemon.proc is not None
    children = psutil.Process(daemon.proc.pid).children(recursive=True)
    return [p for p in children if "dynod.router.worker" in " ".join(p.cmdline())]


def rss(processes: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in processes)


def read_response(conn: socket.socket) -> int:
    """Read one response (head and Content-Length body); the body's length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    got = len(body)
    while got < length:
        chunk = conn.recv(1 << 20)
        assert chunk, got
        got += len(chunk)
    return got


def test_a_dyno_flooding_a_client_that_does_not_read_is_not_buffered(daemon: DaemonProc) -> None:
    request = b"GET / HTTP/1.1\r\nHost: flood.localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", daemon.router_port), timeout=30) as conn:
        conn.sendall(request)  # a first whole response: the workers' steady state
        assert read_response(conn) == SIZE
        workers = router_workers(daemon)
        assert workers, "no router worker processes"
        before = rss(workers)
        conn.sendall(request)
        time.sleep(2.0)  # not reading: the dyno goes on writing as long as anyone buffers
        during = rss(workers)
        assert during - before < 16 << 20, (before, during)
        assert read_response(conn) == SIZE  # then all of it arrives, intact in length
    daemon.wait_for(lambda: daemon.log().count("host=flood.localhost") >= 2, "two log lines")
    lines = [line for line in daemon.log().splitlines() if "host=flood.localhost" in line]
    assert all(f"status=200 bytes={SIZE} " in line for line in lines), lines
