"""A router worker's standard error, line by line, into the daemon's log.

What a worker says before it dies (a traceback, or why it ends itself) belongs next to the
daemon's line about its exit, where `dynod logs` shows it, not on a terminal or journal
nobody reads. A worker parses what any client sends, so what it prints is bounded here: a burst
of BURST lines, then one line a second, each cut at LINE characters, and a count of what was
left out. The pipe is always read to its end: a worker blocked on a full pipe would stop
serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

BURST = 50  # lines said at once: a whole traceback
PER_SECOND = 1.0  # lines said a second after a burst
LINE = 2000  # characters kept of a line


class StderrRelay(asyncio.Protocol):
    """`loop.connect_read_pipe(lambda: relay, popen.stderr)`: each complete line goes to
    `say` as `router worker SLOT: LINE`; `ended` is done once the pipe is closed (the worker
    and anything it started have exited)."""

    def __init__(self, slot: int, say: Callable[[str], object]) -> None:
        self.slot = slot
        self.say = say
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._partial = b""
        self._cutting = False  # the rest of a line too long to keep, until its end
        self._tokens = float(BURST)
        self._refilled = time.monotonic()
        self._left_out = 0

    def data_received(self, data: bytes) -> None:
        *lines, rest = (self._partial + data).split(b"\n")
        if self._cutting and lines:
            lines = lines[1:]  # the end of a line whose kept part was said
            self._cutting = False
        if self._cutting:
            rest = b""
        elif len(rest) > LINE:
            lines.append(rest)
            rest, self._cutting = b"", True
        self._partial = rest
        self._lines(lines)

    def eof_received(self) -> bool:
        if self._partial and not self._cutting:
            self._lines([self._partial])
        self._partial = b""
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._say_left_out()
        if not self.ended.done():
            self.ended.set_result(None)

    def _lines(self, lines: list[bytes]) -> None:
        """As many as the bucket allows, the rest counted at once: a flood costs a split."""
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * PER_SECOND)
        self._refilled = now
        kept = lines[: max(0, int(self._tokens))]
        self._tokens -= len(kept)
        for raw in kept:
            self._say_left_out()
            text = raw[:LINE].decode(errors="replace").rstrip()
            if len(raw) > LINE:
                text += " [cut]"
            if text:
                self.say(f"router worker {self.slot}: {text}")
        self._left_out += len(lines) - len(kept)

    def _say_left_out(self) -> None:
        if self._left_out:
            count, self._left_out = self._left_out, 0
            self.say(f"router worker {self.slot}: ({count} more lines left out)")
