"""Serving a listening socket that several router worker processes share, one accept at a time.

asyncio's server accepts up to 100 connections each time the socket is readable. With the
workers all waiting on the same socket, whichever wakes first takes a whole burst (wrk's 32
connections, a browser's 6), and the other workers idle while it is saturated: the bench's
rounds swung between 0.37x and 0.85x of nginx with how the connections happened to fall.
Accepting one connection per readiness lets the others, woken too, take theirs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

__all__ = ["Listener"]

_logger = logging.getLogger(__name__)

# What asyncio waits before accepting again when out of descriptors or memory.
RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Listener:
    """A listening socket; each accepted connection gets a protocol from `factory`."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sockets = [sock]
        self._sock = sock
        self._factory = factory
        self._pending: set[asyncio.Task[object]] = set()
        self._closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            _logger.warning("router: cannot accept connections for now: %s", exc)
            self.loop.remove_reader(self._sock.fileno())
            self.loop.call_later(RETRY_DELAY, self._resume)
            return
        conn.setblocking(False)
        task = self.loop.create_task(self.loop.connect_accepted_socket(self._factory, conn))
        self._pending.add(task)
        task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _logger.debug("router: accepted connection failed: %s", task.exception())

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close this process's copy of the socket."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._sock.fileno())
        for task in self._pending:
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        return None
