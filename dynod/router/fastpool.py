"""Idle keep-alive connections of the fast path (`dynod.router.upstream.Upstream`), per dyno:
`dynod.router.pool`'s rules (nginx's). A connection is given back only after a clean exchange
(the whole response read, nothing unasked-for after it, no ``Connection: close`` either way,
still open)."""

from __future__ import annotations

from dynod.router.pool import IdlePool
from dynod.router.upstream import Upstream

__all__ = ["UpstreamPool"]


def _usable(upstream: Upstream) -> bool:
    return upstream.open and upstream.reusable


class UpstreamPool(IdlePool[Upstream]):
    def __init__(self) -> None:
        super().__init__(_usable, Upstream.abort)
