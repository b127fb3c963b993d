"""One timer per connection, moved by assigning a float: the fast path's timeouts.

Arming a loop timer per request (and cancelling it when the answer comes, almost always) costs
a heap push and a cancelled entry each time. A `Deadline` keeps one timer: moving the deadline
later only records it, and when the timer fires early it re-arms itself for the recorded time;
only a deadline moved earlier than the armed timer re-arms at once. The callback runs exactly
when the (last) deadline passes, as the tests' small timeouts need.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """Calls `on_expiry` once the deadline set last (loop time) has passed, unless cleared."""

    __slots__ = ("_handle", "_loop", "_on_expiry", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._handle: asyncio.TimerHandle | None = None
        self.when = math.inf

    def set(self, when: float) -> None:
        self.when = when
        handle = self._handle
        if handle is None or handle.when() > when:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        """No deadline (the armed timer, if any, fires once and finds nothing to do)."""
        self.when = math.inf

    def cancel(self) -> None:
        """No deadline and no timer (the connection is gone)."""
        self.when = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when == math.inf:
            return
        if self._loop.time() < when:
            self._handle = self._loop.call_at(when, self._fire)
            return
        self.when = math.inf
        self._on_expiry()
