"""Request heads a dyno could read differently from the router (both Content-Length and
Transfer-Encoding, duplicate Content-Length, obs-fold, bare LF, oversized heads...) are refused
by the router itself: nothing of them, nor of what is pipelined behind them, reaches a dyno."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest

from dynod.router.headers import strict_head_problem
from dynod.router.routes import Backend
from tests.unit.router.test_proxy import router_for, run, serve, wait_for_logs

# --------------------------------------------------------------------------- refused heads
# Each of these is a head a dyno could read differently from the router. The router must answer
# 400 (431 for an oversized head) itself and close, and the dyno must receive nothing at all: not
# the request, and not whatever a lenient reader would take for a second request behind it.

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n"
REFUSED_HEADS = {
    "duplicate Content-Length": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 0\r\n"
        b"Content-Length: 50\r\n\r\n" + SMUGGLED,
        400,
    ),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 50\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "Transfer-Encoding and Content-Length": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "Content-Length list": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 0, 50\r\n\r\n" + SMUGGLED,
        400,
    ),
    "obs-fold": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nX-Note: a\r\n Content-Length: 50\r\n\r\n"
        + SMUGGLED,
        400,
    ),
    "obs-fold with a tab": (
        b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nX-Note: a\r\n\tb\r\n\r\n" + SMUGGLED,
        400,
    ),
    "bare LF line end": (
        b"GET / HTTP/1.1\r\nHost: sushi.localhost\nX-Note: a\r\n\r\n" + SMUGGLED,
        400,
    ),
    "bare LF head": (b"GET / HTTP/1.1\nHost: sushi.localhost\n\n" + SMUGGLED, 400),
    "space before the colon": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nTransfer-Encoding : chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "Transfer-Encoding not chunked": (
        b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLED,
        501,
    ),
    "oversized head": (
        b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        431,
    ),
}


def recording_backend(received: list[bytes]) -> Any:
    """A dyno that records every byte it receives and answers each request it parses."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                data = await reader.read(65536)
                received.append(data)
                if not data:
                    return
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA or event is h11.PAUSED:
                        break
                    if isinstance(event, h11.EndOfMessage):
                        writer.write(
                            conn.send(
                                h11.Response(status_code=200, headers=[(b"Content-Length", b"2")])
                            )
                            + conn.send(h11.Data(data=b"ok"))
                            + conn.send(h11.EndOfMessage())
                        )
                        conn.start_next_cycle()
                await writer.drain()
        except h11.ProtocolError:
            return
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize("name", sorted(REFUSED_HEADS))
def test_ambiguous_heads_are_refused_and_never_reach_a_dyno(name: str) -> None:
    raw, status = REFUSED_HEADS[name]

    async def main() -> None:
        received: list[bytes] = []
        async with serve(recording_backend(received)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(raw)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 5)  # until the router closes
                writer.close()
                assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
                assert answer.count(b"HTTP/1.1 ") == 1, answer
                await wait_for_logs(lines, 1)
                assert f"status={status} " in lines[0]
        assert b"".join(received) == b"", received

    run(main())


def test_strict_head_problem() -> None:
    assert strict_head_problem(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\nwith LF") is None
    assert strict_head_problem(b"GET / HTTP/1.1\r\nHost: a\r\n") is None  # not whole yet
    assert strict_head_problem(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert strict_head_problem(b"GET / HTTP/1.1\nHost") == "a line ends with a bare LF"
    assert strict_head_problem(b"GET / HTTP/1.1\r\nA: 1\r\n 2\r\n\r\n") is not None


@pytest.mark.parametrize("name", sorted(REFUSED_HEADS))
def test_ambiguous_heads_behind_a_fast_path_request_never_reach_a_dyno(name: str) -> None:
    """The same heads pipelined behind a request the fast path takes: that one is answered
    and reaches the dyno, exactly once; the ambiguous one is refused and nothing of it (or of
    what follows it) reaches the dyno."""
    raw, status = REFUSED_HEADS[name]
    first = b"GET /first HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n"

    async def main() -> None:
        received: list[bytes] = []
        async with serve(recording_backend(received)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(first + raw)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 5)  # until the router closes
                writer.close()
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
                assert f"HTTP/1.1 {status} ".encode() in answer, answer[:400]
                assert answer.count(b"HTTP/1.1 ") == 2, answer
                await wait_for_logs(lines, 2)
                assert "status=200 " in lines[0] and f"status={status} " in lines[1]
        sent = b"".join(received)
        assert sent.count(b" HTTP/1.1\r\n") == 1 and sent.startswith(b"GET /first "), sent

    run(main())


@pytest.mark.parametrize(
    ("start", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nX-Big: ", 431),  # h11's refusal
        (b"GET / HTTP/1.1\nHost: sushi.localhost\r\nX-Big: ", 400),  # the router's own
    ],
)
def test_the_rest_of_a_refused_head_is_swallowed_so_the_client_reads_the_answer(
    start: bytes, status: int
) -> None:
    """A head refused while the client is still sending it (431 for its size, 400 for a bare
    LF seen early): closing with its rest unread would make the kernel send RST, and the client
    lose the answer to `Connection reset by peer`. The router half-closes and swallows what
    comes (as after an unread body), so the client reads the answer and then the end."""
    head = start + b"a" * (512 << 10) + b"\r\n\r\n"

    async def main() -> None:
        received: list[bytes] = []
        async with serve(recording_backend(received)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                for _ in range(5):  # a reset is a race: five tries make it all but certain
                    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                    writer.write(head)  # still going out while the answer comes back
                    try:
                        answer = await asyncio.wait_for(reader.read(), 5)
                    finally:
                        writer.transport.abort()
                    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
                await wait_for_logs(lines, 5)
        assert b"".join(received) == b"", received

    run(main())
