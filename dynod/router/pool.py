"""Keep-alive connections to the dynos, reused between requests (nginx's upstream ``keepalive``).

A connection goes back to its dyno's pool only when its exchange ended cleanly: the request and
the response both whole (h11 ``DONE`` on both sides), nothing more buffered from the dyno, no
``Connection: close`` either way. So a pooled connection is always idle, and one request runs on
it at a time: two clients' requests are never interleaved on it. A pool holds at most
``IDLE_PER_BACKEND`` idle connections per dyno (more are closed, as nginx does), each at most
``IDLE_SECONDS``; a dyno that leaves the route table (stopped, crashed, restarted on a new port)
has its pool closed at once (`retain`).

A dyno may close an idle connection at any time (its own keep-alive timeout). The router then
finds out only when it reuses it: nginx retries such a request once on a fresh connection when
nothing came back and the request may be repeated; so does the router (`server.Router._proxy`),
for bodyless requests with an idempotent method (RFC 9110 9.2.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

import h11

from dynod.router.peer import Peer
from dynod.router.routes import Backend

__all__ = ["IDEMPOTENT", "IDLE_PER_BACKEND", "IDLE_SECONDS", "BackendPool", "IdlePool"]

C = TypeVar("C")

# nginx's ``keepalive 64`` in the bench's reference configuration.
IDLE_PER_BACKEND = 64
# Below Heroku's 55 s idle rule and the usual servers' defaults for their idle connections
# (nginx 75 s, gunicorn 2 s is the exception: those are retried), above wrk's pauses.
IDLE_SECONDS = 50.0
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class IdlePool(Generic[C]):
    """Idle keep-alive connections, per dyno (`Backend`: its name, address and port): a
    connection is kept while `usable` says so, and closed with `close`."""

    def __init__(
        self,
        usable: Callable[[C], bool],
        close: Callable[[C], None],
        per_backend: int = IDLE_PER_BACKEND,
        idle: float = IDLE_SECONDS,
    ) -> None:
        self.per_backend = per_backend
        self.idle = idle
        self._usable = usable
        self._close = close
        self._idle: dict[Backend, list[tuple[float, C]]] = {}

    def take(self, backend: Backend) -> C | None:
        """The most recently used idle connection to `backend` still open, or None."""
        stack = self._idle.get(backend)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            since, conn = stack.pop()
            if now - since < self.idle and self._usable(conn):
                return conn
            self._close(conn)
        return None

    def give(self, backend: Backend, conn: C) -> bool:
        """Keep `conn` for the next request to `backend` if it is usable and the pool has room
        (the caller knows its exchange ended cleanly); close it otherwise. True if kept."""
        stack = self._idle.setdefault(backend, [])
        if len(stack) >= self.per_backend or not self._usable(conn):
            self._close(conn)
            return False
        stack.append((time.monotonic(), conn))
        return True

    def retain(self, backends: set[Backend]) -> None:
        """Close the pools of the dynos that are no longer routed to."""
        for backend in [b for b in self._idle if b not in backends]:
            for _, conn in self._idle.pop(backend):
                self._close(conn)

    def drop(self, backend: Backend) -> None:
        """Close the pool of a dyno no longer routed to."""
        for _, conn in self._idle.pop(backend, ()):
            self._close(conn)

    def close(self) -> None:
        self.retain(set())

    def idle_count(self, backend: Backend) -> int:
        return len(self._idle.get(backend, ()))


class BackendPool(IdlePool[Peer]):
    """The h11 path's: a connection goes back only when h11 saw its exchange end cleanly."""

    def __init__(self, per_backend: int = IDLE_PER_BACKEND, idle: float = IDLE_SECONDS) -> None:
        super().__init__(_still_idle, _abort, per_backend, idle)

    def give(self, backend: Backend, conn: Peer) -> bool:
        h11_conn = conn.conn
        clean = h11_conn.our_state is h11.DONE and h11_conn.their_state is h11.DONE
        if not clean or h11_conn.trailing_data[0]:
            _abort(conn)
            return False
        h11_conn.start_next_cycle()
        return super().give(backend, conn)


def _abort(peer: Peer) -> None:
    peer.writer.transport.abort()


def _still_idle(peer: Peer) -> bool:
    """Open, and nothing unasked-for arrived from the dyno (nginx closes such a connection
    too: bytes before a request would be taken as the next response)."""
    if peer.writer.is_closing() or peer.reader.at_eof() or peer.saw_eof:
        return False
    # StreamReader keeps what arrived since the last read in its buffer; it has no public
    # way to ask whether that is empty.
    return not getattr(peer.reader, "_buffer", b"")
