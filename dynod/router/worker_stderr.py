"""A router worker's standard error, line by line, into the daemon's log.

What a worker says before it dies (a traceback, or why it ends itself) belongs next to the
daemon's line about its exit, where `dynod logs` shows it, not on a terminal or journal
nobody reads. A worker parses what any client sends, so what it prints is bounded here: a burst
of BURST lines, then one line a second, each cut at LINE bytes, and a count of what was left
out with the last TAIL lines of it at the end (a traceback's last lines say why). Lines past
the bucket are counted a chunk at a time, so a flood costs the daemon a count, not a loop. The
pipe is always read to its end: a worker blocked on a full pipe would stop serving.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from dynod.logs.book import TokenBucket

BURST = 50  # lines said at once: a whole traceback
PER_SECOND = 1.0  # lines said a second after a burst
LINE = 2000  # bytes kept of a line
TAIL = 10  # lines left out, kept to be said at the end
FINISH_READS = 16  # reads of 64 kB at most in finish(): a child of the worker may still write


class StderrRelay(asyncio.Protocol):
    """`loop.connect_read_pipe(lambda: relay, popen.stderr)`: each complete line goes to
    `say` as `router worker SLOT: LINE`. `ended` is done once the pipe is closed: at its end
    (the worker, and anything it started, have exited), or when the daemon closes it.
    finish() says what is left, at once."""

    def __init__(self, slot: int, say: Callable[[str], object]) -> None:
        self.slot = slot
        self.say = say
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pipe: Any = None
        self._partial = b""
        self._cutting = False  # the rest of a line too long to keep, until its end
        self.bucket = TokenBucket(PER_SECOND, BURST)
        self._left_out = 0
        self._tail: deque[bytes] = deque(maxlen=TAIL)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._pipe = transport.get_extra_info("pipe")

    def data_received(self, data: bytes) -> None:
        self.bucket.refill()
        if self.bucket.tokens < 1 and not self._cutting and b"\n" in data:
            self._flooded(data)
            return
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
        self._say_left_out(last=True)
        if not self.ended.done():
            self.ended.set_result(None)

    def finish(self) -> None:
        """Before the line about the worker's end, whether or not the pipe ended: what it still
        holds (read without waiting), its last line with no newline, what was left out."""
        if not self.ended.done() and self._pipe is not None:
            for _ in range(FINISH_READS):
                try:
                    data = os.read(self._pipe.fileno(), 65536)
                except (BlockingIOError, OSError, ValueError):
                    break
                if not data:
                    break
                self.data_received(data)
        self.eof_received()
        self._say_left_out(last=True)

    def _flooded(self, data: bytes) -> None:
        """No line may be said now: this chunk's lines are counted at once, its last kept."""
        # the first of these lines began in _partial; of more than TAIL, the first part is all
        # the lines before the last TAIL, joined, and the bounded deque drops it
        parts = (self._partial + data).rsplit(b"\n", TAIL + 1)
        rest = parts.pop()
        self._tail.extend(part[:LINE] for part in parts)
        self._left_out += data.count(b"\n")
        if len(rest) > LINE:
            self._tail.append(rest[:LINE])
            self._left_out += 1
            rest, self._cutting = b"", True
        self._partial = rest

    def _lines(self, lines: list[bytes]) -> None:
        """As many as the bucket allows; the rest counted, and the last of them kept."""
        self.bucket.refill()
        kept = lines[: max(0, int(self.bucket.tokens))]
        self.bucket.tokens -= len(kept)
        for raw in kept:
            self._say_left_out()
            self._say_line(raw)
        left = lines[len(kept) :]
        self._left_out += len(left)
        self._tail.extend(raw[:LINE] for raw in left[-TAIL:])

    def _say_line(self, raw: bytes) -> None:
        text = raw[:LINE].decode(errors="replace").rstrip()
        if len(raw) > LINE:
            text += " [cut]"
        if text:
            self.say(f"router worker {self.slot}: {text}")

    def _say_left_out(self, last: bool = False) -> None:
        """The count of the lines left out since the last line said; at the end, with the
        last of them."""
        if not self._left_out:
            return
        count, self._left_out = self._left_out, 0
        tail = list(self._tail) if last else []
        self._tail.clear()
        if tail:
            self.say(f"router worker {self.slot}: ({count} lines left out; the last {len(tail)}:)")
            for raw in tail:
                self._say_line(raw)
        else:
            self.say(f"router worker {self.slot}: ({count} more lines left out)")
