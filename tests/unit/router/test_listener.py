"""Routers sharing one listening socket (as the worker processes share the daemon's) take one
connection per accept, so a burst of connections is spread instead of taken by one."""

from __future__ import annotations

import asyncio
import os
import socket

from dynod.router.server import Router
from tests.unit.router.test_proxy import run


def test_a_burst_of_connections_is_spread_over_routers_sharing_a_socket() -> None:
    async def main() -> None:
        listening = socket.create_server(("127.0.0.1", 0), backlog=64)
        port = listening.getsockname()[1]
        routers = []
        for _ in range(2):
            router = Router(lambda app, ip: None, lambda line, app: None)
            await router.start("", 0, sock=socket.socket(fileno=os.dup(listening.fileno())))
            routers.append(router)
        listening.close()
        try:
            # A burst: all 10 are queued in the kernel before either router runs.
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
            for sock in socks:
                sock.setblocking(False)
            await asyncio.sleep(0.2)
            taken = [len(router._fast) for router in routers]
            assert sum(taken) == 10, taken
            assert min(taken) >= 3, taken  # asyncio's server took all ten in one go
            loop = asyncio.get_running_loop()
            for sock in socks:
                await loop.sock_sendall(
                    sock, b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n"
                )
                answer = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
                assert answer.startswith(b"HTTP/1.1 404 "), answer
                sock.close()
        finally:
            for router in routers:
                await router.close()

    run(main())
