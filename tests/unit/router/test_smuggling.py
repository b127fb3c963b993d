"""A request framed both ways (Content-Length and Transfer-Encoding) is read by
Transfer-Encoding, and the connection closes after its answer (RFC 9112 6.1): a request
pipelined behind it is never read, so it cannot reach another app."""

from __future__ import annotations

import asyncio

from dynod.router.routes import Backend
from tests.unit.router.test_proxy import echo_backend, router_for, run, serve


def test_nothing_pipelined_behind_a_cl_te_request_is_served() -> None:
    async def main() -> None:
        async with serve(echo_backend("web.1")) as sushi, serve(echo_backend("other")) as other:
            apps = {
                "sushi": [Backend("web.1", "127.0.0.1", sushi)],
                "other": [Backend("other.1", "127.0.0.1", other)],
            }
            async with router_for(apps) as (router, _):
                reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
                writer.write(
                    b"POST / HTTP/1.1\r\nHost: sushi.localhost\r\nContent-Length: 4\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    b"GET /smuggled HTTP/1.1\r\nHost: other.localhost\r\n\r\n"
                )
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 5)  # until the router closes
                writer.close()
                assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
                assert raw.count(b"HTTP/1.1 ") == 1, raw
                assert b"/smuggled" not in raw

    run(main())
