"""The router's keep-alive connections to the dynos (dynod.router.pool): reused after a clean
exchange, one request at a time, closed when the dyno leaves the route table, and a request on
a connection the dyno closed meanwhile retried once when it may be repeated (as nginx does)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import h11
import pytest

from dynod.router.routes import AppRoute, Backend, RouteTable
from tests.unit.router.test_fast import slow_path_only
from tests.unit.router.test_proxy import (
    Client,
    read_request,
    router_for,
    run,
    serve,
    wait_for_logs,
)


@pytest.fixture(autouse=True, params=["fast path", "h11 path"])
def path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test on both paths: the fast path's pool (`fastpool`) and the h11 path's (`pool`)."""
    if request.param == "h11 path":
        with slow_path_only():
            yield
    else:
        yield


class Dyno:
    """A backend that counts its connections and the requests on each; `drop_second` makes it
    read a connection's second request and close without answering (a keep-alive race)."""

    def __init__(self, drop_second: bool = False, delay: float = 0.0) -> None:
        self.connections: list[list[bytes]] = []  # per connection: the targets it served
        self.closed = 0
        self.drop_second = drop_second
        self.delay = delay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        served: list[bytes] = []
        self.connections.append(served)
        try:
            while True:
                request, _ = await read_request(conn, reader)
                if request is None:
                    return
                served.append(request.method + b" " + request.target)
                if self.drop_second and len(served) == 2:
                    return
                await asyncio.sleep(self.delay)
                writer.write(
                    conn.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"2")]))
                    + conn.send(h11.Data(data=b"ok"))
                    + conn.send(h11.EndOfMessage())
                )
                await writer.drain()
                conn.start_next_cycle()
        finally:
            self.closed += 1
            writer.close()


def test_requests_reuse_one_dyno_connection() -> None:
    async def main() -> None:
        dyno = Dyno()
        async with serve(dyno.handle) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                for _ in range(2):  # two clients, one after the other
                    client = await Client.open(router.port)
                    for i in range(3):
                        response, body = await client.get(target=f"/{i}")
                        assert (response.status_code, body) == (200, b"ok")
                    await client.close()
                await wait_for_logs(lines, 6)
                assert len(dyno.connections) == 1, dyno.connections
                assert len(dyno.connections[0]) == 6
                assert all(" status=200 " in line for line in lines)

    run(main())


def test_concurrent_requests_get_connections_of_their_own() -> None:
    """Never two requests on one dyno connection at once: a busy one is not in the pool."""

    async def main() -> None:
        dyno = Dyno(delay=0.2)
        async with serve(dyno.handle) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, _):
                clients = [await Client.open(router.port) for _ in range(3)]
                answers = await asyncio.gather(
                    *(c.get(target=f"/c{i}") for i, c in enumerate(clients))
                )
                assert [r.status_code for r, _ in answers] == [200, 200, 200]
                assert sorted(len(c) for c in dyno.connections) == [1, 1, 1]
                for client in clients:
                    await client.close()

    run(main())


def test_a_dyno_leaving_the_table_loses_its_pool() -> None:
    async def main() -> None:
        dyno = Dyno()
        async with serve(dyno.handle) as port:
            backend = Backend("web.1", "127.0.0.1", port)
            apps = {"sushi": [backend]}
            async with router_for(apps) as (router, _):
                client = await Client.open(router.port)
                assert (await client.get())[0].status_code == 200
                await client.close()
                router.update(RouteTable({"sushi": AppRoute((backend,))}))
                await asyncio.sleep(0.05)
                assert dyno.closed == 0  # still routed to: kept
                router.update(RouteTable({"sushi": AppRoute(())}))
                for _ in range(100):
                    if dyno.closed:
                        break
                    await asyncio.sleep(0.01)
                assert dyno.closed == 1

    run(main())


def test_a_get_on_a_connection_the_dyno_dropped_is_retried_once() -> None:
    async def main() -> None:
        dyno = Dyno(drop_second=True)
        async with serve(dyno.handle) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                assert (await client.get(target="/a"))[0].status_code == 200
                response, body = await client.get(target="/b")
                assert (response.status_code, body) == (200, b"ok")
                await client.close()
                await wait_for_logs(lines, 2)
                await asyncio.sleep(0.05)
                assert len(lines) == 2 and " status=200 " in lines[1], lines
                # the dropped connection saw /a and /b; a fresh one served /b again
                assert dyno.connections == [[b"GET /a", b"GET /b"], [b"GET /b"]]

    run(main())


def test_a_post_on_a_connection_the_dyno_dropped_is_not_sent_twice() -> None:
    async def main() -> None:
        dyno = Dyno(drop_second=True)
        async with serve(dyno.handle) as port:
            apps = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
            async with router_for(apps) as (router, lines):
                client = await Client.open(router.port)
                assert (await client.get(target="/a"))[0].status_code == 200
                post = h11.Request(
                    method="POST",
                    target="/pay",
                    headers=[("Host", "sushi.localhost"), ("Content-Length", "0")],
                )
                await client.send(post, h11.EndOfMessage())
                response, _ = await client.response()
                await client.close()
                assert response.status_code == 503
                await wait_for_logs(lines, 2)
                assert "code=H13" in lines[1], lines
                assert dyno.connections == [[b"GET /a", b"POST /pay"]]

    run(main())
