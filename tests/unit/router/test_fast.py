"""The fast path (`dynod.router.fast`, `upstream`, `fastpool`, `frames`) against real 127.0.0.1
sockets: the same bytes as the proven h11 path, keep-alive reuse, the stale retry, the Heroku
errors, the handover of what it does not take, a client leaving mid-response, and a dyno
flooding a client that does not read."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import h11
import pytest

from dynod.router.fasthead import RequestHead
from dynod.router.frames import error_page, request_head, response_head
from dynod.router.headers import forward_response_headers
from dynod.router.logline import H12, H14
from dynod.router.routes import Backend
from dynod.router.server import Router
from tests.unit.router.test_proxy import (
    _raw_exchange,
    echo_backend,
    fields,
    router_for,
    run,
    sent_headers,
    serve,
    wait_for_logs,
)

GET = b"GET /p?q=1 HTTP/1.1\r\nHost: sushi.localhost\r\nX-Request-Id: %s\r\n\r\n"
RID = b"r" * 24


@contextlib.contextmanager
def slow_path_only() -> Iterator[None]:
    """Every request handed over to the proven h11 path, as before the fast path."""
    original = RequestHead.parse
    RequestHead.parse = lambda self, head: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        RequestHead.parse = original  # type: ignore[method-assign]


def fixed_backend(response: bytes, connections: list[int], received: list[bytes]) -> Any:
    """A dyno answering every request (a head without body) with `response`; counts its
    connections and records the bytes it receives."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        buffered = b""
        try:
            while data := await reader.read(65536):
                received.append(data)
                buffered += data
                while b"\r\n\r\n" in buffered:
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    writer.write(response)
                    await writer.drain()
                    delimited = b"Content-Length" in response or b"chunked" in response
                    if b"Connection: close" in response or not delimited:
                        return
        finally:
            writer.close()

    return handle


async def exchange(port: int, data: bytes, responses: int = 1) -> bytes:
    """Send `data`, read until `responses` whole answers (by h11) have come; the raw bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # for its state
    conn.send(h11.EndOfMessage())
    raw, done = b"", 0
    writer.write(data)
    try:
        while done < responses:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            raw += chunk
            conn.receive_data(chunk)
            while (event := conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    done += 1
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
                        conn.send(h11.EndOfMessage())
                elif isinstance(event, h11.ConnectionClosed):
                    break
    finally:
        writer.close()
    return raw


RESPONSES = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A:  b \r\nConnection: keep-alive"
    b"\r\n\r\nok\n",
    "chunked": b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nVia: 1.0 app\r\n\r\n"
    b"2\r\nok\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
    "204": b"HTTP/1.1 204 No Content\r\nX-B: c\r\n\r\n",
    "dyno closes": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "103 then 200": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_the_client_gets_the_same_bytes_on_both_paths(name: str) -> None:
    async def through(slow: bool) -> tuple[bytes, list[bytes], list[str]]:
        connections: list[int] = []
        received: list[bytes] = []
        async with serve(fixed_backend(RESPONSES[name], connections, received)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                with slow_path_only() if slow else contextlib.nullcontext():
                    answer = await exchange(router.port, (GET % RID) * 2, responses=2)
                await wait_for_logs(lines, 2)
        return answer, received, lines

    async def main() -> None:
        fast_answer, fast_sent, fast_lines = await through(slow=False)
        slow_answer, slow_sent, slow_lines = await through(slow=True)
        assert fast_answer == slow_answer
        assert fast_answer.count(b"HTTP/1.1 2") == 2, fast_answer
        start = re.compile(rb"(X-Request-Start|X-Forwarded-Port): \d+")
        assert start.sub(b"", b"".join(fast_sent)) == start.sub(b"", b"".join(slow_sent))
        assert len(fast_lines) == len(slow_lines) == 2
        for one, other in zip(fast_lines, slow_lines, strict=True):
            a, b = fields(one), fields(other)
            for varying in ("connect", "service"):
                assert a.pop(varying).endswith("ms") and b.pop(varying).endswith("ms")
            assert a == b

    run(main())


def test_router_pages_are_the_same_bytes_on_both_paths() -> None:
    async def main() -> None:
        answers = []
        for slow in (False, True):
            apps: dict[str, list[Backend] | None] = {"sushi": []}
            async with router_for(apps) as (router, lines):
                with slow_path_only() if slow else contextlib.nullcontext():
                    data = GET % RID + b"GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\n"
                    data += b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nConnection: close\r\n\r\n"
                    answers.append(await exchange(router.port, data, responses=3))
                await wait_for_logs(lines, 3)
                assert [fields(line)["status"] for line in lines] == ["503", "404", "503"]
                assert f"code={H14.code}" in lines[0]
        assert answers[0] == answers[1]
        assert answers[0].endswith(b"</html>\n") and b"Connection: close\r\n" in answers[0]

    run(main())


def test_frames_are_h11_s() -> None:
    headers = [(b"X-A", b"1"), (b"Host", b"sushi.localhost"), (b"Via", b"1.1 dynod")]
    conn = h11.Connection(h11.CLIENT)
    assert request_head(b"GET", b"/x", headers) == conn.send(
        h11.Request(method=b"GET", target=b"/x", headers=headers)
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    raw = [(b"Content-Length", b"2"), (b"Connection", b"x-a"), (b"X-A", b"1"), (b"Date", b"d")]
    out = forward_response_headers(raw, upgrade=False)
    assert response_head(200, b"OK", out) == server.send(
        h11.Response(status_code=200, reason=b"OK", headers=out)
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    server.next_event()
    page = error_page(503, H12, b"", close=True)
    head, body = page.split(b"\r\n\r\n", 1)
    sent = server.send(
        h11.Response(
            status_code=503,
            reason=b"Service Unavailable",
            headers=[tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:-1]],
        )
    )
    assert sent == head + b"\r\n\r\n"  # h11 would add Connection: close itself, last
    assert b"Request timeout (H12)" in body


# --------------------------------------------------------------------------- keep-alive


def test_one_dyno_connection_for_many_requests_and_log_fields() -> None:
    async def main() -> None:
        connections: list[int] = []
        received: list[bytes] = []
        async with serve(fixed_backend(RESPONSES["content-length"], connections, received)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                for _ in range(3):  # three client connections, two requests each
                    await exchange(router.port, (GET % RID) * 2, responses=2)
                await wait_for_logs(lines, 6)
                assert connections == [1]
                assert router._upstreams.idle_count(apps["sushi"][0]) == 1
        first, later = fields(lines[0]), [fields(line) for line in lines[1:]]
        assert re.fullmatch(r"\d+ms", first["connect"])  # a fresh connection: its connect time
        assert all(f["connect"] == "0ms" for f in later)  # reused: no connect
        for f in [first, *later]:
            assert (f["method"], f["path"], f["host"]) == ("GET", "/p?q=1", "sushi.localhost")
            assert (f["status"], f["bytes"], f["dyno"]) == ("200", "3", "web.1")
            assert (f["request_id"], f["fwd"]) == (RID.decode(), "127.0.0.1")
        heads = b"".join(received).split(b"\r\n\r\n")[:-1]
        assert len(heads) == 6
        assert all(b"X-Forwarded-For: 127.0.0.1\r\n" in h and b"Via: 1.1 dynod" in h for h in heads)

    run(main())


def test_heroku_headers_reach_the_dyno_on_the_fast_path() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                raw = await exchange(
                    router.port,
                    b"GET /x HTTP/1.1\r\nHost: sushi.localhost\r\nX-Forwarded-For: 1.2.3.4\r\n"
                    b"Connection: X-Drop\r\nX-Drop: 1\r\n\r\n",
                )
                sent = sent_headers(raw.split(b"\r\n\r\n", 1)[1])
                assert sent["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
                assert sent["x-forwarded-proto"] == "http"
                assert sent["x-forwarded-port"] == str(router.port)
                assert re.fullmatch(r"[0-9a-f-]{36}", sent["x-request-id"])
                assert sent["x-request-start"].isdigit() and sent["via"] == "1.1 dynod"
                assert "x-drop" not in sent and "connection" not in sent
                await wait_for_logs(lines, 1)
                assert fields(lines[0])["request_id"] == sent["x-request-id"]

    run(main())


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    async def main() -> None:
        connections: list[int] = []

        async def answer_then_close(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            connections.append(1)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)  # its own keep-alive timeout: closes while pooled
            writer.close()

        async with serve(answer_then_close) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                first = await exchange(router.port, GET % RID)
                # Not yet noticed by the pool: the close arrives while it idles.
                await asyncio.sleep(0.2)
                second = await exchange(router.port, GET % RID)
                await wait_for_logs(lines, 2)
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
        assert len(connections) == 2
        assert [fields(line)["status"] for line in lines] == ["200", "200"]

    run(main())


def test_stale_retry_when_the_close_is_not_yet_seen() -> None:
    """The pooled connection looks open when taken; the dyno's close shows on the write."""

    async def main() -> None:
        connections: list[int] = []

        async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.transport.abort()  # gone, without telling (RST)

        async with serve(one_answer) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                answer = await exchange(router.port, (GET % RID) * 3, responses=3)
                await wait_for_logs(lines, 3)
        assert answer.count(b"HTTP/1.1 200 ") == 3, answer
        assert [fields(line)["status"] for line in lines] == ["200"] * 3

    run(main())


# --------------------------------------------------------------------------- errors


def _stalling(reply: bytes, then: str) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if then == "close":
            writer.close()
            return
        await asyncio.sleep(5)
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("reply", "then", "code", "status_line"),
    [
        (b"", "stall", "H12", b"HTTP/1.1 503 "),
        (b"", "close", "H13", b"HTTP/1.1 503 "),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "close", "H18", b"HTTP/1.1 200 "),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "stall", "H15", b"HTTP/1.1 200 "),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "stall", "H17", b"HTTP/1.1 503 "),
        (b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", "stall", "H17", b"HTTP/1.1 503 "),
    ],
)
def test_dyno_failures_on_the_fast_path(
    reply: bytes, then: str, code: str, status_line: bytes
) -> None:
    async def main() -> None:
        async with serve(_stalling(reply, then)) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps, response_timeout=0.3, idle_timeout=0.3) as (router, lines):
                answer = await _raw_exchange(router.port, GET % RID)
                await wait_for_logs(lines, 1)
        assert answer.startswith(status_line), answer
        assert f"code={code} " in lines[0], lines
        assert fields(lines[0])["status"] == "503"

    run(main())


def test_a_slow_head_gets_408_on_the_fast_path() -> None:
    async def main() -> None:
        async with router_for({}, head_timeout=0.2) as (router, lines):
            answer = await _raw_exchange(router.port, b"GET / HTTP/1.1\r\nHost: a")
            await wait_for_logs(lines, 1)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert "code=H28" in lines[0] and "status=408" in lines[0]

    run(main())


# --------------------------------------------------------------------------- handover


def test_handover_on_one_connection_fast_chunked_expect_upgrade() -> None:
    """A fast GET, a chunked POST (handed over), a GET and an Expect: 100-continue POST on the
    same connection, the first three pipelined in one packet: all answered in order."""

    async def main() -> None:
        async with serve(echo_backend("web.1")) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(
                    b"GET /one HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n"
                    b"POST /two HTTP/1.1\r\nHost: sushi.localhost\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    b"GET /three HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n"
                )
                conn = h11.Connection(h11.CLIENT)
                bodies = []
                for target in (b"/one", b"/two", b"/three"):
                    conn.send(h11.Request(method="GET", target=target, headers=[("Host", "a")]))
                    conn.send(h11.EndOfMessage())
                    body = b""
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
                        elif isinstance(event, h11.Data):
                            body += event.data
                        elif isinstance(event, h11.EndOfMessage):
                            break
                    bodies.append(body)
                    conn.start_next_cycle()
                assert [sent_target(b) for b in bodies] == ["/one", "/two", "/three"]
                assert b'"body": "hello"' in bodies[1]
                writer.write(
                    b"POST /four HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 2\r\n"
                    b"Expect: 100-continue\r\n\r\nhi"  # not waiting for a 100 the dyno never sends
                )
                answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
                assert answer.startswith(b"HTTP/1.1 200 ") and b'"body": "hi"' in answer
                writer.close()
                await wait_for_logs(lines, 4)
                assert [fields(line)["path"] for line in lines] == [
                    "/one",
                    "/two",
                    "/three",
                    "/four",
                ]

    run(main())


def sent_target(body: bytes) -> str:
    import json

    return str(json.loads(body)["target"])


# --------------------------------------------------------------------------- client side


def test_a_client_gone_mid_response_frees_the_dyno_connection() -> None:
    async def main() -> None:
        closed = asyncio.Event()

        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while True:
                    writer.write(b"4\r\nabcd\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.01)
            except ConnectionError:
                closed.set()
            finally:
                writer.close()

        async with serve(endless) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(GET % RID)
                await asyncio.wait_for(reader.readuntil(b"abcd"), 5)
                writer.transport.abort()
                await asyncio.wait_for(closed.wait(), 5)
                await wait_for_logs(lines, 1)
                assert fields(lines[0])["status"] == "200"
                assert int(fields(lines[0])["bytes"]) >= 4
                assert router._upstreams.idle_count(apps["sushi"][0]) == 0
                assert not router._fast

    run(main())


def test_a_dyno_flooding_a_slow_reader_is_never_buffered_whole() -> None:
    size = 64 << 20

    async def main() -> None:
        written = [0]

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * 65536
            with contextlib.suppress(ConnectionError):
                while written[0] < size:
                    writer.write(block)
                    await writer.drain()
                    written[0] += len(block)
            writer.close()

        async with serve(flood) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port, limit=1)
                writer.transport.pause_reading()  # a client that reads nothing for a while
                writer.write(GET % RID)
                await asyncio.sleep(1.0)
                (client,) = router._fast
                assert client.transport is not None
                buffered = client.transport.get_write_buffer_size()
                assert buffered < 1 << 20, buffered
                assert written[0] < 16 << 20, written[0]  # the dyno was held back too
                writer.transport.resume_reading()
                got = 0
                while data := await asyncio.wait_for(reader.read(1 << 20), 10):
                    got += len(data)
                    if got >= size:
                        break
                assert got >= size
                writer.close()

    run(main(), timeout=60)


def test_router_still_answers_after_close_and_reopen() -> None:
    async def main() -> None:
        router = Router(lambda app, ip: None, lambda line, app: None)
        await router.start("127.0.0.1", 0)
        answer = await _raw_exchange(
            router.port, b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n"
        )
        await router.close()
        assert answer.startswith(b"HTTP/1.1 404 ")
        assert not router._fast

    run(main())


def test_a_head_cut_short_by_the_client_s_close_is_answered_as_before() -> None:
    async def answer(slow: bool) -> bytes:
        async with router_for({}) as (router, lines):
            with slow_path_only() if slow else contextlib.nullcontext():
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: a.loc")
                writer.write_eof()
                data = await asyncio.wait_for(reader.read(), 5)
                writer.close()
            await wait_for_logs(lines, 1)
            assert "status=400" in lines[0]
        return data

    async def main() -> None:
        fast_answer = await answer(slow=False)
        assert fast_answer.startswith(b"HTTP/1.1 400 "), fast_answer
        assert fast_answer == await answer(slow=True)

    run(main())


def test_an_upgrade_after_a_fast_request_on_the_same_connection_is_spliced() -> None:
    async def dyno(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"Upgrade: websocket" not in head:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")  # fmt: skip
                while data := await reader.read(65536):
                    writer.write(b"echo:" + data)
                return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()

    async def main() -> None:
        async with serve(dyno) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(b"GET /first HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n")
                first = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
                assert first.startswith(b"HTTP/1.1 200 ")
                writer.write(
                    b"GET /ws HTTP/1.1\r\nHost: sushi.localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\nhello"
                )
                switched = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert switched.startswith(b"HTTP/1.1 101 "), switched
                got = b""
                while len(got) < len(b"echo:hello"):
                    got += await asyncio.wait_for(reader.read(65536), 5)
                assert got == b"echo:hello"
                writer.close()
                await wait_for_logs(lines, 2)
                assert [fields(line)["status"] for line in lines] == ["200", "101"]

    run(main())


@pytest.mark.parametrize("slow", [False, True], ids=["fast path", "h11 path"])
def test_platform_errors_are_h99_on_both_paths(slow: bool) -> None:
    """An outgoing socket that cannot be set up (a source address the host does not have) and
    a route table that raises are both H99, with the same page on both paths."""

    async def main() -> None:
        def broken(app: str, ip: str) -> list[Backend]:
            if app == "broken":
                raise RuntimeError("a bug in the table")
            return [Backend("web.1", "127.0.0.1", 9)]

        router = Router(broken, lambda line, app: lines.append(line), source_address="192.0.2.1")
        lines: list[str] = []
        await router.start("127.0.0.1", 0)
        try:
            with slow_path_only() if slow else contextlib.nullcontext():
                answer = await exchange(
                    router.port,
                    b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\n\r\n"
                    b"GET / HTTP/1.1\r\nHost: broken.localhost\r\n\r\n",
                    responses=2,
                )
            await wait_for_logs(lines, 2)
        finally:
            await router.close()
        assert answer.count(b"HTTP/1.1 503 Service Unavailable\r\n") == 2, answer
        assert answer.count(b"Platform error (H99)") == 2
        assert ["code=H99" in line for line in lines] == [True, True]
        assert fields(lines[0])["dyno"] == "web.1" and fields(lines[1])["dyno"] == ""

    run(main())
