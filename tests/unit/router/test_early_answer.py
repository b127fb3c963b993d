"""A dyno that answers as it accepts, before reading the request, and closes (a bare socket
server, the kind a test app is): the router reads that answer as the response, on both event
loops the router runs on (asyncio's in the daemon, uvloop's in the worker processes). The answer
and the dyno's close can both arrive before the request is written, and the close can overtake
it as a reset once the request meets a closed socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from dynod.router.routes import Backend
from tests.unit.router.test_proxy import _raw_exchange, router_for

ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nHost: sushi.localhost\r\nConnection: close\r\n\r\n"
LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def answer_at_accept(server: socket.socket, stop: threading.Event) -> None:
    server.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.sendall(ANSWER)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_answer_sent_before_the_request_is_the_response(loop: str) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=answer_at_accept, args=(server, stop), daemon=True)
    thread.start()
    port = server.getsockname()[1]

    async def main() -> None:
        apps: dict[str, list[Backend] | None] = {"sushi": [Backend("web.1", "127.0.0.1", port)]}
        async with router_for(apps) as (router, lines):
            for _ in range(30):
                response = await _raw_exchange(router.port, REQUEST)
                assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"ok"), response
            assert not [line for line in lines if "code=H13" in line], lines

    try:
        LOOPS[loop](asyncio.wait_for(main(), 30))
    finally:
        stop.set()
        thread.join()
        server.close()
