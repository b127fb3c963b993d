"""What bounds DNS askers: shares of TCP connections and of forwarded queries in flight (in
total, per scope, per source), and a log that says each kind of refusal at most every 10 s."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

__all__ = ["ShareKey", "Shares", "Throttle"]

ShareKey = tuple[str, str]  # (scope, source address)


class Shares:
    """Counts of something held (connections, queries in flight) in total, per scope and per
    source, each with its own limit, so that one source, or one scope, cannot take it all.
    Thread safe."""

    def __init__(self, total: int, per_scope: int, per_source: int) -> None:
        self.limits = (total, min(per_scope, total), min(per_source, per_scope, total))
        self.total = 0
        self._lock = threading.Lock()
        self._scopes: dict[str, int] = {}
        self._sources: dict[str, int] = {}

    def take(self, key: ShareKey) -> bool:
        """Count one more for `key`; False (nothing counted) when any of its limits is full."""
        scope, source = key
        total, per_scope, per_source = self.limits
        with self._lock:
            if (
                self.total >= total
                or self._scopes.get(scope, 0) >= per_scope
                or self._sources.get(source, 0) >= per_source
            ):
                return False
            self.total += 1
            self._scopes[scope] = self._scopes.get(scope, 0) + 1
            self._sources[source] = self._sources.get(source, 0) + 1
            return True

    def release(self, key: ShareKey) -> None:
        scope, source = key
        with self._lock:
            self.total -= 1
            _decrement(self._scopes, scope)
            _decrement(self._sources, source)

    def clear(self) -> None:
        with self._lock:
            self.total = 0
            self._scopes.clear()
            self._sources.clear()


def _decrement(counts: dict[str, int], key: str) -> None:
    """One less; a key at zero is removed, so the dicts hold only sources holding something."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class Throttle:
    """Calls `log` at most once per `interval` seconds per kind of message, so that a flood of
    bad packets or a dead upstream cannot flood the daemon's log."""

    def __init__(self, log: Callable[[str], object], interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            text += f" ({suppressed} more like this in the last {self._interval:g}s)"
        with contextlib.suppress(Exception):  # a failing log must not kill a server thread
            self._log(text)
