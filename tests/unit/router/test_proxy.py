"""Tests for dynod.router: pure helpers, then the router on real 127.0.0.1 sockets.

Backends are tiny asyncio servers started in the test's own event loop on port 0; nothing
needs root (socket_mark stays None).  Every async test runs under a hard timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import h11
import pytest

from dynod.router.headers import (
    app_from_host,
    forward_request_headers,
    forward_response_headers,
    hop_by_hop_names,
    pick_request_id,
)
from dynod.router.logline import H14, RequestLog, format_log_line
from dynod.router.routes import Backend
from dynod.router.server import Router
from dynod.testing.daemon import free_port

TIMEOUT = 5.0
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """Run a backend on 127.0.0.1:0; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def router_for(
    apps: dict[str, list[Backend] | None], **kwargs: Any
) -> AsyncIterator[tuple[Router, list[str]]]:
    """A router whose resolve() reads ``apps``; yields it and its collected log lines."""
    lines: list[str] = []

    def resolve(app: str, client_ip: str) -> Sequence[Backend] | None:
        return apps.get(app)

    router = Router(resolve, lambda line, app: lines.append(line), **kwargs)
    await router.start("127.0.0.1", 0)
    try:
        yield router, lines
    finally:
        await router.close()


async def read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    """Read one whole request with h11 (server side); (None, b"") on EOF."""
    request, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:
            return None, b""


def echo_backend(name: str) -> Handler:
    """Answers every request with JSON describing what it received."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await read_request(conn, reader)
                if request is None:
                    return
                payload = json.dumps(
                    {
                        "dyno": name,
                        "target": request.target.decode(),
                        "headers": [
                            [k.decode(), v.decode()] for k, v in request.headers.raw_items()
                        ],
                        "body": body.decode(),
                    }
                ).encode()
                headers = [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(payload))),
                    ("Keep-Alive", "timeout=5"),
                    ("X-Hop", "secret"),
                    ("Connection", "X-Hop"),
                ]
                writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                writer.write(conn.send(h11.Data(data=payload)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        finally:
            writer.close()

    return handle


class Client:
    """A minimal h11 HTTP client over one connection to the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            self.writer.write(self.conn.send(event) or b"")
        await self.writer.drain()

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), TIMEOUT))

    async def response(self) -> tuple[h11.Response, bytes]:
        head, body = None, b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body
            else:
                raise AssertionError(f"unexpected event {event!r}")

    async def get(
        self,
        host: str = "sushi.localhost",
        target: str = "/",
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[h11.Response, bytes]:
        request = h11.Request(method="GET", target=target, headers=[("Host", host), *headers])
        await self.send(request, h11.EndOfMessage())
        result = await self.response()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return result

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def fetch(port: int, **kwargs: Any) -> tuple[h11.Response, bytes]:
    client = await Client.open(port)
    try:
        return await client.get(**kwargs)
    finally:
        await client.close()


async def wait_for_logs(lines: list[str], count: int) -> list[str]:
    """The router logs after the response is out; give it a moment."""
    deadline = time.monotonic() + TIMEOUT
    while len(lines) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return lines


def header(
    response: h11.Request | h11.Response | h11.InformationalResponse, name: str
) -> str | None:
    values = [v.decode() for k, v in response.headers if k == name.lower().encode()]
    return ", ".join(values) if values else None


def sent_headers(body: bytes) -> dict[str, str]:
    """Headers the echo backend received (names lowercased)."""
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def fields(line: str) -> dict[str, str]:
    return {m[0]: m[1].strip('"') for m in re.findall(r'(\w+)=("[^"]*"|\S*)', line)}


# --------------------------------------------------------------------------- pure helpers


def test_format_log_line_success() -> None:
    entry = RequestLog(
        method="GET",
        path="/",
        host="sushi.localhost",
        request_id="0b6f",
        fwd="127.0.0.1",
        dyno="web.1",
        connect_ms=1,
        service_ms=3,
        status=200,
        bytes=1234,
    )
    assert format_log_line(entry) == (
        'at=info method=GET path="/" host=sushi.localhost request_id=0b6f fwd="127.0.0.1" '
        "dyno=web.1 connect=1ms service=3ms status=200 bytes=1234 protocol=http"
    )


def test_format_log_line_error_without_dyno() -> None:
    entry = RequestLog(
        method="GET",
        path="/",
        host="sushi.localhost",
        request_id="r",
        fwd="127.0.0.1",
        status=503,
        error=H14,
    )
    assert format_log_line(entry) == (
        'at=error code=H14 desc="No web processes running" method=GET path="/" '
        'host=sushi.localhost request_id=r fwd="127.0.0.1" dyno= connect= service= '
        "status=503 bytes= protocol=http"
    )


def test_format_log_line_escapes_quotes_and_spaces() -> None:
    entry = RequestLog(method="GET", path='/a"b\\c', host="evil host", status=404)
    line = format_log_line(entry)
    assert 'path="/a\\"b\\\\c"' in line
    assert "host=evil%20host " in line


@pytest.mark.parametrize(
    ("host", "app"),
    [
        ("sushi.localhost", "sushi"),
        ("Sushi.LOCALHOST:5000", "sushi"),
        ("sushi.localhost.", "sushi"),
        ("my-app2.localhost:80", "my-app2"),
        ("localhost", None),
        ("sushi.example.com", None),
        ("a.b.localhost", None),
        (".localhost", None),
        ("[::1]:80", None),
        ("127.0.0.1:80", None),
        ("", None),
    ],
)
def test_app_from_host(host: str, app: str | None) -> None:
    assert app_from_host(host) == app


def test_pick_request_id() -> None:
    good = "abcdefghij0123456789+/=-"
    assert pick_request_id([(b"X-Request-Id", good.encode())]) == good
    for bad in ("short", "x" * 201, "has space in it 1234567890", "bad!chars_0123456789xx"):
        generated = pick_request_id([(b"x-request-id", bad.encode())])
        assert generated != bad
        uuid.UUID(generated)  # a uuid4 string
    uuid.UUID(pick_request_id([]))


def test_hop_by_hop_names_include_connection_tokens() -> None:
    names = hop_by_hop_names([(b"Connection", b"keep-alive, X-Foo"), (b"connection", b"x-bar")])
    assert {b"x-foo", b"x-bar", b"keep-alive", b"te", b"upgrade"} <= names


def test_forward_request_headers() -> None:
    headers = [
        (b"Host", b"sushi.localhost"),
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Host", b"evil"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"x"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Accept", b"*/*"),
    ]
    out = forward_request_headers(
        headers,
        client_ip="10.0.0.9",
        listen_port=8080,
        request_start_ms=1700000000123,
        request_id="rid",
    )
    got = {k.lower(): v for k, v in out}
    assert len(got) == len(out)  # no duplicates
    assert got == {
        b"host": b"sushi.localhost",
        b"accept": b"*/*",
        b"transfer-encoding": b"chunked",
        b"x-forwarded-for": b"1.2.3.4, 10.0.0.9",
        b"x-forwarded-proto": b"http",
        b"x-forwarded-port": b"8080",
        b"x-request-start": b"1700000000123",
        b"x-request-id": b"rid",
        b"via": b"1.1 dynod",
    }


def test_forward_request_headers_keeps_upgrade() -> None:
    headers = [(b"Host", b"h"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
    out = forward_request_headers(
        headers, client_ip="1.1.1.1", listen_port=1, request_start_ms=1, request_id="r"
    )
    got = {k.lower(): v for k, v in out}
    assert got[b"upgrade"] == b"websocket"
    assert got[b"connection"] == b"Upgrade"


def test_forward_response_headers() -> None:
    headers = [
        (b"Content-Length", b"3"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Via", b"1.0 upstream"),
        (b"Set-Cookie", b"a=b"),
    ]
    out = forward_response_headers(headers, upgrade=False)
    assert out == [
        (b"Content-Length", b"3"),
        (b"Set-Cookie", b"a=b"),
        (b"Via", b"1.0 upstream, 1.1 dynod"),
    ]


# --------------------------------------------------------------------------- routing


def test_round_robin_and_one_log_line_per_request() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as p1, serve(echo_backend("web.2")) as p2:
            backends = [Backend("web.1", "127.0.0.1", p1), Backend("web.2", "127.0.0.1", p2)]
            async with router_for({"sushi": backends}) as (router, lines):
                dynos = []
                for _ in range(4):
                    response, body = await fetch(router.port, host="Sushi.localhost:1234")
                    assert response.status_code == 200
                    dynos.append(json.loads(body)["dyno"])
                assert dynos == ["web.1", "web.2", "web.1", "web.2"]
                await wait_for_logs(lines, 4)
                await asyncio.sleep(0.05)
                assert len(lines) == 4
                for line, dyno in zip(lines, dynos, strict=True):
                    f = fields(line)
                    assert line.startswith('at=info method=GET path="/" host=sushi.localhost ')
                    assert f["dyno"] == dyno
                    assert f["status"] == "200"
                    assert f["fwd"] == "127.0.0.1"
                    assert f["protocol"] == "http"
                    assert re.fullmatch(r"\d+ms", f["connect"])
                    assert re.fullmatch(r"\d+ms", f["service"])
                    assert int(f["bytes"]) > 0

    run(main())


def test_forwarding_headers_added_and_hop_by_hop_stripped() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                before = int(time.time() * 1000)
                valid_id = "abcdefghij0123456789"
                response, body = await fetch(
                    router.port,
                    target="/path?q=1",
                    headers=[
                        ("X-Forwarded-For", "1.2.3.4"),
                        ("X-Forwarded-Host", "evil.example"),
                        ("X-Request-Id", valid_id),
                        ("Connection", "keep-alive, X-Secret"),
                        ("X-Secret", "1"),
                        ("Keep-Alive", "timeout=5"),
                        ("TE", "trailers"),
                        ("Proxy-Authorization", "Basic eA=="),
                    ],
                )
                after = int(time.time() * 1000)
                got = sent_headers(body)
                assert json.loads(body)["target"] == "/path?q=1"
                assert got["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
                assert got["x-forwarded-proto"] == "http"
                assert got["x-forwarded-port"] == str(router.port)
                assert before <= int(got["x-request-start"]) <= after
                assert got["x-request-id"] == valid_id
                assert got["via"] == "1.1 dynod"
                assert got["host"] == "sushi.localhost"
                for gone in (
                    "x-forwarded-host",
                    "x-secret",
                    "keep-alive",
                    "te",
                    "proxy-authorization",
                ):
                    assert gone not in got
                assert "connection" not in got  # the router keeps its dyno connections alive
                # ...and in the other direction:
                assert header(response, "via") == "1.1 dynod"
                assert header(response, "x-hop") is None
                assert header(response, "keep-alive") is None
                await wait_for_logs(lines, 1)
                assert f"request_id={valid_id} " in lines[0]
                assert 'path="/path?q=1"' in lines[0]

    run(main())


@pytest.mark.parametrize("bad_id", ["tooshort", "has_underscore_0123456789", "x" * 201])
def test_invalid_request_id_replaced(bad_id: str) -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                _, body = await fetch(router.port, headers=[("X-Request-Id", bad_id)])
                request_id = sent_headers(body)["x-request-id"]
                assert request_id != bad_id
                assert uuid.UUID(request_id).version == 4
                await wait_for_logs(lines, 1)
                assert fields(lines[0])["request_id"] == request_id

    run(main())


@pytest.mark.parametrize("host", ["nope.localhost", "sushi.example.com", "localhost"])
def test_unknown_app_404(host: str) -> None:
    async def main() -> None:
        async with router_for({"sushi": []}) as (router, lines):
            response, body = await fetch(router.port, host=host)
            assert response.status_code == 404
            assert body == b"no such app\n"
            await wait_for_logs(lines, 1)
            f = fields(lines[0])
            assert lines[0].startswith("at=info ")
            assert f["status"] == "404"
            assert f["dyno"] == ""

    run(main())


def test_no_web_dynos_h14() -> None:
    async def main() -> None:
        async with router_for({"sushi": []}) as (router, lines):
            response, body = await fetch(router.port)
            assert response.status_code == 503
            assert b"H14" in body
            await wait_for_logs(lines, 1)
            assert lines[0].startswith('at=error code=H14 desc="No web processes running" ')
            assert " dyno= connect= service= status=503 bytes= protocol=http" in lines[0]

    run(main())


def test_request_timeout_h12() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            await asyncio.sleep(10)  # never answers
        finally:
            writer.close()

    async def main() -> None:
        async with serve(silent) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, response_timeout=0.5) as (router, lines):
                started = time.monotonic()
                response, body = await fetch(router.port)
                elapsed = time.monotonic() - started
                assert response.status_code == 503
                assert b"H12" in body
                assert 0.4 <= elapsed < 3
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["code"], f["desc"], f["dyno"], f["status"]) == (
                    "H12",
                    "Request timeout",
                    "web.1",
                    "503",
                )

    run(main())


def test_backend_closes_without_response_h13() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    async def main() -> None:
        async with serve(rude) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                try:
                    response, body = await client.get()
                    assert response.status_code == 503
                    assert b"H13" in body
                    # The connection to the client survives a dyno failure.
                    response, _ = await client.get()
                    assert response.status_code == 503
                finally:
                    await client.close()
                await wait_for_logs(lines, 2)
                f = fields(lines[0])
                assert (f["code"], f["dyno"], f["status"], f["bytes"]) == (
                    "H13",
                    "web.1",
                    "503",
                    "0",
                )

    run(main())


def test_connect_refused_503_h13() -> None:
    async def main() -> None:
        apps = {"sushi": [Backend("web.1", "127.0.0.1", free_port())]}
        async with router_for(apps) as (router, lines):
            response, _ = await fetch(router.port)
            assert response.status_code == 503
            await wait_for_logs(lines, 1)
            assert fields(lines[0])["code"] == "H13"

    run(main())


def test_connect_timeout_h19() -> None:
    async def main() -> None:
        # A listener with a full accept queue that never accepts: further SYNs are dropped,
        # so connecting hangs.
        listener = socket.socket()
        fillers: list[socket.socket] = []
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            await asyncio.sleep(0.05)
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, connect_timeout=0.3) as (router, lines):
                response, _ = await fetch(router.port)
                assert response.status_code == 503
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["code"], f["desc"]) == ("H19", "Backend connection timeout")
        finally:
            for sock in (*fillers, listener):
                sock.close()

    run(main())


async def _raw_exchange(port: int, data: bytes, wait: float = TIMEOUT) -> bytes:
    """Send raw bytes, return everything received until the router closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def _misbehaving(reply: bytes, then_sleep: float) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            writer.write(reply)
            await writer.drain()
            await asyncio.sleep(then_sleep)
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize(
    ("reply", "then_sleep", "code", "client_sees"),
    [
        # closes mid-body: H18, the client gets the partial response and a closed connection
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 0.0, "H18", b"abc"),
        # goes quiet mid-body: H15 after idle_timeout
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 3.0, "H15", b"abc"),
        # not HTTP at all: H17 and a 503 page
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 0.0, "H17", b"HTTP/1.1 503 Service Unavailable"),
    ],
)
def test_backend_misbehaving(
    reply: bytes, then_sleep: float, code: str, client_sees: bytes
) -> None:
    async def main() -> None:
        async with serve(_misbehaving(reply, then_sleep)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, idle_timeout=0.3) as (router, lines):
                request = b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nConnection: close\r\n\r\n"
                raw = await _raw_exchange(router.port, request)
                assert client_sees in raw
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["at"], f["code"], f["dyno"], f["status"]) == (
                    "error",
                    code,
                    "web.1",
                    "503",
                )

    run(main())


def test_client_abort_mid_upload_h27() -> None:
    async def main() -> None:
        async with serve(_misbehaving(b"", 3.0)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(
                    b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 100\r\n\r\nabc"
                )
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.close()
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["code"], f["status"]) == ("H27", "499")

    run(main())


# --------------------------------------------------------------------------- streaming


def test_chunked_response_streamed_before_it_ends() -> None:
    async def main() -> None:
        last_chunk = asyncio.Event()

        async def streamer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = h11.Connection(h11.SERVER)
            await read_request(conn, reader)
            writer.write(conn.send(h11.Response(status_code=200, headers=[])))  # chunked
            writer.write(conn.send(h11.Data(data=b"first|")))
            await writer.drain()
            await last_chunk.wait()  # only once the client has seen the first chunk
            writer.write(conn.send(h11.Data(data=b"last")))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            writer.close()

        async with serve(streamer) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                try:
                    request = h11.Request(
                        method="GET", target="/", headers=[("Host", "sushi.localhost")]
                    )
                    await client.send(request, h11.EndOfMessage())
                    response = await client.next_event()
                    assert isinstance(response, h11.Response)
                    assert header(response, "transfer-encoding") == "chunked"
                    first = await client.next_event()
                    assert isinstance(first, h11.Data) and first.data == b"first|"
                    last_chunk.set()
                    rest = b""
                    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
                        assert isinstance(event, h11.Data)
                        rest += event.data
                    assert rest == b"last"
                finally:
                    await client.close()
                await wait_for_logs(lines, 1)
                assert fields(lines[0])["bytes"] == str(len(b"first|last"))

    run(main())


def test_chunked_request_streamed_to_backend() -> None:
    async def main() -> None:
        first_seen = asyncio.Event()

        async def collector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = h11.Connection(h11.SERVER)
            received = b""
            chunked = False
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    chunked = header(event, "transfer-encoding") == "chunked"
                elif isinstance(event, h11.Data):
                    received += event.data
                    first_seen.set()
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            body = f"{chunked}:{received.decode()}".encode()
            writer.write(
                conn.send(
                    h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])
                )
            )
            writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            writer.close()

        async with serve(collector) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, _):
                client = await Client.open(router.port)
                try:
                    request = h11.Request(
                        method="POST",
                        target="/upload",
                        headers=[("Host", "sushi.localhost"), ("Transfer-Encoding", "chunked")],
                    )
                    await client.send(request, h11.Data(data=b"part1-"))
                    # The dyno must see the first chunk while the client still holds the rest.
                    await asyncio.wait_for(first_seen.wait(), TIMEOUT)
                    await client.send(h11.Data(data=b"part2"), h11.EndOfMessage())
                    response, body = await client.response()
                    assert response.status_code == 200
                    assert body == b"True:part1-part2"
                finally:
                    await client.close()

    run(main())


def test_keep_alive_two_requests_one_connection() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as p1, serve(echo_backend("web.2")) as p2:
            backends = [Backend("web.1", "127.0.0.1", p1), Backend("web.2", "127.0.0.1", p2)]
            async with router_for({"sushi": backends, "other": backends[:1]}) as (router, lines):
                client = await Client.open(router.port)
                try:
                    r1, b1 = await client.get()
                    r2, b2 = await client.get(target="/second")
                    r3, _ = await client.get(host="nope.localhost")  # 404 keeps it alive too
                    r4, b4 = await client.get(host="other.localhost")
                finally:
                    await client.close()
                assert [r.status_code for r in (r1, r2, r3, r4)] == [200, 200, 404, 200]
                assert json.loads(b1)["dyno"] == "web.1"
                assert json.loads(b2)["dyno"] == "web.2"
                assert json.loads(b2)["target"] == "/second"
                assert json.loads(b4)["dyno"] == "web.1"
                await wait_for_logs(lines, 4)
                assert [fields(line)["status"] for line in lines] == ["200", "200", "404", "200"]

    run(main())


def test_websocket_upgrade_splices_bytes() -> None:
    async def ws_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request, _ = await read_request(conn, reader)
        assert request is not None
        seen = {k.lower(): v for k, v in request.headers.raw_items()}
        assert seen[b"upgrade"] == b"websocket" and seen[b"connection"] == b"Upgrade"
        writer.write(
            conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                )
            )
        )
        pending = conn.trailing_data[0]
        try:
            while True:
                data = pending or await reader.read(65536)
                pending = b""
                if not data:
                    return
                writer.write(b"echo:" + data)
                await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        async with serve(ws_echo) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                try:
                    request = h11.Request(
                        method="GET",
                        target="/ws",
                        headers=[
                            ("Host", "sushi.localhost"),
                            ("Upgrade", "websocket"),
                            ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZQ=="),
                        ],
                    )
                    client.writer.write(
                        client.conn.send(request) + client.conn.send(h11.EndOfMessage()) + b"hello"
                    )
                    response = await client.next_event()
                    assert isinstance(response, h11.InformationalResponse)
                    assert response.status_code == 101
                    assert header(response, "upgrade") == "websocket"
                    got = client.conn.trailing_data[0]
                    while len(got) < len(b"echo:hello"):
                        got += await asyncio.wait_for(client.reader.read(65536), TIMEOUT)
                    assert got == b"echo:hello"
                    client.writer.write(b"again")
                    got = await asyncio.wait_for(client.reader.read(65536), TIMEOUT)
                    assert got == b"echo:again"
                    await wait_for_logs(lines, 1)  # logged at the handshake, not at close
                    assert fields(lines[0])["status"] == "101"
                finally:
                    await client.close()

    run(main())


def test_malformed_request_400_and_router_keeps_serving() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                try:
                    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
                    raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # until close
                    assert raw.startswith(b"HTTP/1.1 400 ")
                finally:
                    writer.close()
                response, _ = await fetch(router.port)
                assert response.status_code == 200
                await wait_for_logs(lines, 2)
                assert fields(lines[0])["status"] == "400"

    run(main())


def test_both_framings_are_refused_and_the_dyno_sees_nothing() -> None:
    """Content-Length beside Transfer-Encoding: 400 from the router, no connection to the dyno."""

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                try:
                    request = h11.Request(
                        method="POST",
                        target="/",
                        headers=[
                            ("Host", "sushi.localhost"),
                            ("Content-Length", "4"),
                            ("Transfer-Encoding", "chunked"),
                        ],
                    )
                    await client.send(request, h11.Data(data=b"abcdefgh"), h11.EndOfMessage())
                    response, _ = await client.response()
                finally:
                    await client.close()
                assert response.status_code == 400
                await wait_for_logs(lines, 1)
                assert "status=400 " in lines[0] and "dyno=web.1" not in lines[0]

    run(main())


def test_close_cleans_up_open_connections() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            writer.close()

    async def main() -> None:
        async with serve(hang) as port:
            router = Router(
                lambda app, ip: [Backend("web.1", "127.0.0.1", port)], lambda line, app: None
            )
            await router.start("127.0.0.1", 0)
            idle = await Client.open(router.port)
            busy = await Client.open(router.port)
            try:
                await busy.send(
                    h11.Request(method="GET", target="/", headers=[("Host", "sushi.localhost")]),
                    h11.EndOfMessage(),
                )
                await asyncio.sleep(0.1)
                started = time.monotonic()
                await router.close()
                assert time.monotonic() - started < 3
                assert await asyncio.wait_for(busy.reader.read(), TIMEOUT) == b""
                assert await asyncio.wait_for(idle.reader.read(), TIMEOUT) == b""
                with pytest.raises(OSError):
                    await asyncio.open_connection("127.0.0.1", router.port)
            finally:
                await idle.close()
                await busy.close()
                await router.close()

    run(main())


# ------------------------------------------------------------- issue 7: edge cases and limits


def test_connection_listing_host_or_content_length_keeps_them() -> None:
    """`Connection: Host` used to strip Host, and the request was dropped unanswered."""

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                raw = await _raw_exchange(
                    router.port,
                    b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nConnection: Host, close\r\n\r\n",
                )
                assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
                body = raw.split(b"\r\n\r\n", 1)[1]
                assert sent_headers(body)["host"] == "sushi.localhost"
                raw = await _raw_exchange(
                    router.port,
                    b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 5\r\n"
                    b"Connection: content-length, close\r\n\r\nhello",
                )
                assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
                assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["body"] == "hello"
                await wait_for_logs(lines, 2)
                assert [fields(line)["status"] for line in lines] == ["200", "200"]

    run(main())


def test_absolute_form_target_routes_by_its_authority() -> None:
    """RFC 9112 3.2.2: the absolute-form's authority overrides Host; the dyno gets the
    origin-form and a Host naming that authority.  It used to be forwarded unchanged to the
    app named by Host."""

    async def main() -> None:
        async with serve(echo_backend("sushi")) as sushi, serve(echo_backend("other")) as other:
            apps = {
                "sushi": [Backend("web.1", "127.0.0.1", sushi)],
                "other": [Backend("web.1", "127.0.0.1", other)],
            }
            async with router_for(apps) as (router, lines):
                raw = await _raw_exchange(
                    router.port,
                    b"GET http://Other.localhost:5000/x?y=1 HTTP/1.1\r\n"
                    b"Host: sushi.localhost\r\nConnection: close\r\n\r\n",
                )
                assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
                seen = json.loads(raw.split(b"\r\n\r\n", 1)[1])
                assert seen["dyno"] == "other" and seen["target"] == "/x?y=1"
                hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
                assert hosts == ["Other.localhost:5000"]
                for bad in (b"ftp://other.localhost/", b"http://user@other.localhost/"):
                    raw = await _raw_exchange(
                        router.port,
                        b"GET "
                        + bad
                        + b" HTTP/1.1\r\nHost: sushi.localhost\r\nConnection: close\r\n\r\n",
                    )
                    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
                await wait_for_logs(lines, 3)
                first = fields(lines[0])
                assert (first["host"], first["path"], first["status"]) == (
                    "other.localhost",
                    "/x?y=1",
                    "200",
                )
                assert [fields(line)["status"] for line in lines[1:]] == ["400", "400"]

    run(main())


def test_malformed_chunk_size_is_400_h25() -> None:
    """It used to be logged as H27/499 (client gone) with nothing sent back."""

    async def main() -> None:
        async with serve(_misbehaving(b"", 3.0)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                raw = await _raw_exchange(
                    router.port,
                    b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                    wait=2.0,
                )
                assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["at"], f["code"], f["status"], f["dyno"]) == (
                    "error",
                    "H25",
                    "400",
                    "web.1",
                )

    run(main())


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_peer(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), wait) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_connections_per_client_are_capped_and_others_are_served() -> None:
    """Idle connections from one client beyond its share are closed at once; another client
    is still served.  600 idle connections used to freeze the daemon."""

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, _lines):
                held = [await open_from("127.0.0.2", router.port) for _ in range(100)]
                try:
                    closed = await asyncio.gather(*(closed_by_peer(r, 1.0) for r, _w in held))
                    assert closed.count(True) == 100 - 64, closed
                    assert not any(closed[:64])  # the first 64 stay open
                    reader, writer = await open_from("127.0.0.3", router.port)
                    client = Client(reader, writer)
                    try:
                        response, _body = await client.get()
                        assert response.status_code == 200
                    finally:
                        await client.close()
                finally:
                    for _reader, writer in held:
                        writer.close()

    run(main())


def test_connections_in_all_are_capped() -> None:
    async def main() -> None:
        async with router_for({}) as (router, _lines):
            router.max_connections = 8
            held = [await open_from(f"127.0.1.{n + 1}", router.port) for n in range(12)]
            try:
                closed = await asyncio.gather(*(closed_by_peer(r, 1.0) for r, _w in held))
                assert closed == [False] * 8 + [True] * 4
            finally:
                for _reader, writer in held:
                    writer.close()

    run(main())


def test_a_partial_request_head_is_timed_out_408() -> None:
    """Slowloris: a head trickled one byte at a time used to be kept for ever (each byte
    restarted the 55 s idle timeout).  An idle keep-alive connection is not affected."""

    async def main() -> None:
        async with router_for({}) as (router, lines):
            router.head_timeout = 0.5
            idle_reader, idle_writer = await open_from("127.0.0.4", router.port)
            reader, writer = await open_from("127.0.0.5", router.port)
            try:
                started = time.monotonic()
                received = b""
                for byte in b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nX-Slow: " + b"a" * 100:
                    writer.write(bytes([byte]))
                    with contextlib.suppress(TimeoutError):
                        received += await asyncio.wait_for(reader.read(65536), 0.1)
                    if received or time.monotonic() - started > 3:
                        break
                assert received.startswith(b"HTTP/1.1 408 "), received
                assert time.monotonic() - started < 2
                await wait_for_logs(lines, 1)
                f = fields(lines[0])
                assert (f["at"], f["code"], f["status"]) == ("error", "H28", "408")
                assert not await closed_by_peer(idle_reader, 0.2)  # idle, no bytes: kept
            finally:
                writer.close()
                idle_writer.close()

    run(main())
