"""Idle keep-alive connections of the fast path (`dynod.router.upstream.Upstream`), per dyno:
`dynod.router.pool`'s rules (nginx's) for the fast path's own connections. A connection is
given back only after a clean exchange (the whole response read, nothing unasked-for after it,
no ``Connection: close`` either way, still open); at most ``IDLE_PER_BACKEND`` idle per dyno,
each at most ``IDLE_SECONDS``; `retain` closes the pools of dynos no longer routed to."""

from __future__ import annotations

import time

from dynod.router.pool import IDLE_PER_BACKEND, IDLE_SECONDS
from dynod.router.routes import Backend
from dynod.router.upstream import Upstream

__all__ = ["UpstreamPool"]


class UpstreamPool:
    def __init__(self, per_backend: int = IDLE_PER_BACKEND, idle: float = IDLE_SECONDS) -> None:
        self.per_backend = per_backend
        self.idle = idle
        self._idle: dict[Backend, list[Upstream]] = {}

    def take(self, backend: Backend) -> Upstream | None:
        """The most recently used idle connection to `backend` still open, or None."""
        stack = self._idle.get(backend)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            upstream = stack.pop()
            if upstream.open and upstream.reusable and now - upstream.idle_since < self.idle:
                return upstream
            upstream.abort()
        return None

    def give(self, backend: Backend, upstream: Upstream) -> bool:
        """Keep `upstream` for the next request to `backend` if the pool has room (the caller
        knows the exchange was clean); close it otherwise. True if it was kept."""
        stack = self._idle.setdefault(backend, [])
        if len(stack) >= self.per_backend or not upstream.open or not upstream.reusable:
            upstream.abort()
            return False
        upstream.idle_since = time.monotonic()
        stack.append(upstream)
        return True

    def retain(self, backends: set[Backend]) -> None:
        """Close the pools of the dynos that are no longer routed to."""
        for backend in [b for b in self._idle if b not in backends]:
            for upstream in self._idle.pop(backend):
                upstream.abort()

    def close(self) -> None:
        self.retain(set())

    def idle_count(self, backend: Backend) -> int:
        return len(self._idle.get(backend, ()))
