"""The fast path (`dynod.router.fast`, `upstream`) against hostile dynos and clients, on real
127.0.0.1 sockets: a dyno answering twice in one packet, endless response heads and trailers,
clients pipelining requests they never read, a slow reader, odd request lines."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest

from dynod.router.fasthead import RequestHead
from dynod.router.routes import Backend
from tests.unit.router.test_fast import GET, RID, slow_path_only
from tests.unit.router.test_proxy import (
    fields,
    router_for,
    run,
    serve,
    wait_for_logs,
)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One Content-Length response, as a client reading by its framing does."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


# --------------------------------------------------------------------------- desync


@pytest.mark.parametrize("slow", [False, True])
def test_a_second_response_in_the_same_packet_never_answers_the_next_request(slow: bool) -> None:
    """A dyno of app `evil` writes two responses for one request; the client's next request,
    for app `good` on the same connection, gets good's answer, not evil's forged one."""

    async def evil(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nSet-Cookie: s=evil\r\n\r\nforged"
        )
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()

    async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest")
                await writer.drain()
        writer.close()

    async def main() -> None:
        async with serve(evil) as evil_port, serve(good) as good_port:
            apps = {
                "evil": [Backend("web.1", "127.0.0.1", evil_port)],
                "good": [Backend("web.1", "127.0.0.1", good_port)],
            }
            async with router_for(apps) as (router, lines):
                with slow_path_only() if slow else contextlib.nullcontext():
                    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                    writer.write(b"GET / HTTP/1.1\r\nHost: evil.localhost\r\n\r\n")
                    first = await _read_response(reader)
                    await asyncio.sleep(0.2)  # the forged answer has reached the router
                    writer.write(b"GET /account HTTP/1.1\r\nHost: good.localhost\r\n\r\n")
                    second = await _read_response(reader)
                    writer.close()
                await wait_for_logs(lines, 2)
                # The dyno's connection is not pooled: its next bytes cannot be trusted.
                assert router._upstreams.idle_count(apps["evil"][0]) == 0
        assert first.endswith(b"\r\n\r\nhi"), first
        assert second.endswith(b"\r\n\r\nhonest"), second
        assert b"evil" not in second

    run(main())


# --------------------------------------------------------------------------- bounds


def _endless(start: bytes, piece: bytes, sent: list[int]) -> Any:
    """A dyno answering `start`, then `piece` over and over (bounded), then stalling."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(start)
        with contextlib.suppress(ConnectionError):
            while sent[0] < 8 << 20:
                writer.write(piece)
                await writer.drain()
                sent[0] += len(piece)
            await asyncio.sleep(5)
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("start", "piece", "code", "status_line"),
    [
        (b"HTTP/1.1 200 ", b"a" * 4096, "H17", b"HTTP/1.1 503 "),  # endless status line
        (b"HTTP/1.1 200 OK\r\nX: ", b"a" * 4096, "H17", b"HTTP/1.1 503 "),  # endless header
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: 1\r\n" * 400, "H17", b"HTTP/1.1 503 "),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n",
            b"Trailer: 1\r\n" * 400,
            "H18",
            b"HTTP/1.1 200 ",
        ),
    ],
    ids=["status-line", "header-value", "many-headers", "trailers"],
)
def test_an_endless_response_head_or_trailers_is_refused_at_16_kib(
    start: bytes, piece: bytes, code: str, status_line: bytes
) -> None:
    """Not accumulated until the response or idle timeout (5 s here): refused at h11's bound."""

    async def main() -> None:
        sent = [0]
        async with serve(_endless(start, piece, sent)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, response_timeout=5, idle_timeout=5) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(GET % RID)
                answer = await asyncio.wait_for(reader.read(len(status_line)), 8)
                await wait_for_logs(lines, 1)
                writer.close()
        assert answer.startswith(status_line), answer[:200]
        assert f"code={code} " in lines[0], lines

    run(main())


# --------------------------------------------------------------------------- local answers

UNKNOWN = b"GET / HTTP/1.1\r\nHost: nosuchapp.localhost\r\n\r\n"


def test_thousands_of_pipelined_404s_in_one_packet() -> None:
    """Answered one after the other in a loop (no recursion through each answer)."""
    count = 3000

    async def main() -> None:
        async with router_for({}) as (router, lines):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            writer.write(UNKNOWN * count)
            got = b""
            while got.count(b"HTTP/1.1 404 ") < count:
                data = await asyncio.wait_for(reader.read(1 << 20), 5)
                assert data, got[-300:]
                got += data
            writer.close()
            await wait_for_logs(lines, count)
        assert got.count(b"HTTP/1.1 404 ") == count
        assert len(lines) == count and all("status=404" in line for line in lines[:3])

    run(main(), timeout=30)


def test_a_client_pipelining_404s_it_never_reads_is_held_back() -> None:
    """The router stops reading requests while its answers wait unread (its write buffer stays
    small), and answers all of them once the client reads."""
    batch = UNKNOWN * 100

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with router_for({}) as (router, lines):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", router.port))
            sent, blocked = 0, 0
            while sent < 2000 * len(batch) and blocked < 10:  # 200,000 requests at most
                try:
                    sent += sock.send(batch[sent % len(batch) :])
                    blocked = 0
                    await asyncio.sleep(0)  # the router's turn
                except BlockingIOError:
                    blocked += 1
                    await asyncio.sleep(0.05)
            (client,) = router._fast
            assert client.transport is not None
            buffered = client.transport.get_write_buffer_size()
            assert buffered < 1 << 20, buffered
            assert blocked, "the router read every request without its answers being read"
            # The client reads now: every request it sent is answered.
            rest = -sent % len(UNKNOWN)
            requests = (sent + rest) // len(UNKNOWN)
            sending = loop.create_task(loop.sock_sendall(sock, batch[sent % len(batch) :][:rest]))
            received = bytearray()
            while (answers := received.count(b"HTTP/1.1 404 ")) < requests:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
                assert data
                received += data
            await sending
            sock.close()
            await wait_for_logs(lines, requests)
        assert answers == requests
        assert len(lines) == requests

    run(main(), timeout=60)


# --------------------------------------------------------------------------- slow reader


@pytest.mark.parametrize("slow", [False, True])
def test_a_client_that_stops_reading_is_not_the_dyno_s_fault(slow: bool) -> None:
    """The dyno sends a big body to a client that reads none of it: after idle_timeout the
    client is hung up on, logged with the dyno's 200 as on the proven path, not H15."""
    size = 20 << 20

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(big) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, response_timeout=0.5, idle_timeout=0.5) as (router, lines):
                with slow_path_only() if slow else contextlib.nullcontext():
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, ("127.0.0.1", router.port))
                    await loop.sock_sendall(sock, GET % RID)
                    await wait_for_logs(lines, 1)
                    sock.close()
        assert len(lines) == 1, lines
        assert "code=" not in lines[0] and lines[0].startswith("at=info "), lines
        assert fields(lines[0])["status"] == "200"
        assert 0 < int(fields(lines[0])["bytes"]) < size

    run(main())


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize(
    "coding", [b"gzip", b"gzip, chunked", b"identity", b"chunked\r\nTransfer-Encoding: chunked"]
)
@pytest.mark.parametrize("slow", [False, True])
def test_a_transfer_encoding_h11_refuses_is_h17_before_anything_is_relayed(
    coding: bytes, slow: bool
) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % coding

    async def main() -> None:
        async with serve(fixed_reply(reply)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                with slow_path_only() if slow else contextlib.nullcontext():
                    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                    writer.write(GET % RID)
                    answer = await _read_response(reader)
                    writer.close()
                await wait_for_logs(lines, 1)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"(H17)" in answer
        assert "code=H17 " in lines[0], lines

    run(main())


def fixed_reply(reply: bytes) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    return handle


# --------------------------------------------------------------------------- request line


@pytest.mark.parametrize(
    "line",
    [b"GET  / HTTP/1.1", b"GET /  HTTP/1.1", b"GET / HTTP/1.1 ", b"GET\t/ HTTP/1.1"],
    ids=["two-spaces-before-target", "two-spaces-before-version", "trailing-space", "tab"],
)
def test_a_request_line_h11_refuses_is_not_served_by_the_fast_path(line: bytes) -> None:
    head = line + b"\r\nHost: sushi.localhost\r\n\r\n"
    assert not RequestHead().parse(head)

    async def main() -> None:
        async with serve(fixed_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(head)
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                await wait_for_logs(lines, 1)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert fields(lines[0])["status"] == "400"

    run(main())


def test_a_plain_request_line_is_still_served_by_the_fast_path() -> None:
    assert RequestHead().parse(b"GET /a?b=c HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n")
