"""Strict HTTP/1.1 framing through the real router to a real web dyno that records every byte
it receives (tests/apps/recorder_app.py): heads a dyno could read as two requests are refused by
the router and never reach the dyno; requests that pass reach it once each, on a connection the
router keeps alive between requests."""

from __future__ import annotations

import ast
import socket
from collections.abc import Iterator

import pytest

from tests.support import DaemonProc, running_daemon
from tests.unit.router.test_smuggling import REFUSED_HEADS

pytestmark = pytest.mark.root

APP = "frame"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProc]:
    with running_daemon() as daemon:
        daemon.run_app(APP, script="recorder_app.py")
        yield daemon


def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` on a new connection and read until the router closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def received(daemon: DaemonProc) -> bytes:
    """Everything the dyno printed it received, concatenated."""
    out = b""
    for line in daemon.output(APP, "web.1").splitlines():
        if line.startswith("recv "):
            out += ast.literal_eval(line.removeprefix("recv "))
    return out


@pytest.mark.parametrize("name", sorted(REFUSED_HEADS))
def test_ambiguous_heads_never_reach_the_dyno(daemon: DaemonProc, name: str) -> None:
    raw, status = REFUSED_HEADS[name]
    before = received(daemon)
    logged = len(daemon.log())
    answer = exchange(daemon.router_port, raw)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1
    # the router's workers send log lines in batches: an earlier case's line may come later
    daemon.wait_for(lambda: f"status={status} " in daemon.log()[logged:], "log line")
    assert received(daemon) == before  # not one byte reached the dyno


def test_requests_reach_the_dyno_once_each_on_a_kept_connection(daemon: DaemonProc) -> None:
    request = b"GET /kept-%d HTTP/1.1\r\nHost: frame.localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", daemon.router_port), timeout=TIMEOUT) as conn:
        for i in range(3):
            conn.sendall(request % i)
            answer = b""
            while not answer.endswith(b"ok"):
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
    daemon.wait_for(lambda: received(daemon).count(b"GET /kept-2 ") == 1, "the third request")
    seen = received(daemon)
    for i in range(3):
        assert seen.count(b"GET /kept-%d HTTP/1.1\r\n" % i) == 1, seen
    assert b"/smuggled" not in seen and b"X-Note" not in seen and b"X-Big" not in seen
    # One dyno connection served all three: the dyno saw no close in between.
    assert "recv b''" not in daemon.output(APP, "web.1").split("GET /kept-0")[-1]
    assert b"Connection: close" not in seen[seen.index(b"GET /kept-0 ") :]


@pytest.mark.parametrize("name", sorted(REFUSED_HEADS))
def test_ambiguous_heads_behind_a_fast_request_never_reach_the_dyno(
    daemon: DaemonProc, name: str
) -> None:
    """Pipelined behind a request the router's fast path takes: that one reaches the dyno once,
    the ambiguous head is refused and nothing of it reaches the dyno."""
    raw, status = REFUSED_HEADS[name]
    marker = b"/first-" + name.replace(" ", "-").encode()
    answer = exchange(
        daemon.router_port, b"GET %s HTTP/1.1\r\nHost: frame.localhost\r\n\r\n" % marker + raw
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert f"HTTP/1.1 {status} ".encode() in answer and answer.count(b"HTTP/1.1 ") == 2, answer
    daemon.wait_for(lambda: marker in received(daemon), "the first request")
    seen = received(daemon)
    assert seen.count(b"GET %s HTTP/1.1\r\n" % marker) == 1
    assert b"/smuggled" not in seen and b"X-Note" not in seen and b"X-Big" not in seen


def test_fast_and_handed_over_requests_pipelined_on_one_connection(daemon: DaemonProc) -> None:
    """A bodyless GET (fast path), a chunked POST (handed over to the h11 path) and a GET, in
    one packet: three answers in order, each request once at the dyno, one log line each."""
    answer = exchange(
        daemon.router_port,
        b"GET /pipe-1 HTTP/1.1\r\nHost: frame.localhost\r\nX-Request-Id: pipe-request-id-00001\r\n"
        b"\r\nPOST /pipe-2 HTTP/1.1\r\nHost: frame.localhost\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /pipe-3 HTTP/1.1\r\nHost: frame.localhost\r\nConnection: close\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3, answer
    daemon.wait_for(lambda: b"GET /pipe-3 " in received(daemon), "the third request")
    seen = received(daemon)
    for head in (b"GET /pipe-1 HTTP/1.1\r\n", b"POST /pipe-2 HTTP/1.1\r\n", b"GET /pipe-3 "):
        assert seen.count(head) == 1, seen
    first = seen[seen.index(b"GET /pipe-1 ") :].split(b"\r\n\r\n", 1)[0]
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in first and first.endswith(b"\r\nVia: 1.1 dynod")
    assert b"X-Request-Id: pipe-request-id-00001\r\n" in first
    daemon.wait_for(lambda: 'path="/pipe-3"' in daemon.log(), "the log lines")
    lines = [line for line in daemon.log().splitlines() if 'path="/pipe-' in line]
    assert len(lines) == 3, lines
    for line, path in zip(lines, ("/pipe-1", "/pipe-2", "/pipe-3"), strict=True):
        assert f'path="{path}"' in line and "status=200" in line and "dyno=web.1" in line
        assert "host=frame.localhost" in line and 'fwd="127.0.0.1"' in line
    assert "request_id=pipe-request-id-00001" in lines[0] and "bytes=2" in lines[0]
