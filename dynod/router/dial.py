"""A new connection to a dyno, as both of the router's paths open one: marked (the firewall lets
only the router's mark reach the dynos), optionally bound to a source address, and every
failure a Heroku error: H99 (the socket could not be set up), H19 (connect timeout), H13
(refused)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from dynod.router.logline import H13, H19, H99, RequestLog
from dynod.router.peer import Fail, elapsed_ms
from dynod.router.routes import Backend

__all__ = ["dial"]

_logger = logging.getLogger(__name__)


async def dial(
    backend: Backend,
    entry: RequestLog,
    *,
    timeout: float,
    socket_mark: int | None,
    source_address: str | None,
) -> socket.socket:
    """`connect()` a non-blocking socket to the dyno; `entry.connect_ms` is how long it took.
    The socket is the caller's to close once it is handed back."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in backend.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        try:
            sock.setblocking(False)
            if socket_mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, socket_mark)
            if source_address:
                sock.bind((source_address, 0))
        except OSError as exc:
            _logger.error("router: cannot set up socket to %s: %s", backend, exc)
            raise Fail(H99) from exc
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (backend.host, backend.port))
        except TimeoutError as exc:
            raise Fail(H19) from exc
        except OSError as exc:
            raise Fail(H13) from exc
        finally:
            entry.connect_ms = elapsed_ms(started)
    except BaseException:
        sock.close()
        raise
    return sock
