"""Heroku-format log lines, the daemon's log and who is following it.

A line is `2026-11-21T12:00:00.123456+00:00 app[web.1]: text`: the timestamp is when dynod read
it, `app[...]` is a dyno's own output, `heroku[...]` the platform's (lifecycle, router).

A dyno writes its stdout and stderr straight into a file of its own (never a pipe to the
daemon), so a daemon that dies or restarts never makes a dyno's write fail; the daemon reads
the files from the offset it saved and turns what it reads into lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

MAX_LINE = 10_000  # Heroku splits longer lines

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def timestamp(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LogLine:
    app: str | None  # None for the daemon's own lines
    source: str  # "app[web.1]", "heroku[web.1]", "heroku[router]", "dynod"
    text: str
    time: str

    def __str__(self) -> str:
        return f"{self.time} {self.source}: {self.text}"


def split_output(pending: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """Cut complete lines out of pending+chunk; returns them and the unfinished rest.

    Lines over MAX_LINE bytes are cut into pieces, as Heroku's logplex does; bytes that are not
    UTF-8 are shown escaped rather than dropped.
    """
    data = pending + chunk
    lines: list[str] = []
    while True:
        cut = data.find(b"\n")
        if cut < 0:
            if len(data) >= MAX_LINE:
                lines.append(data[:MAX_LINE].decode(errors="backslashreplace"))
                data = data[MAX_LINE:]
                continue
            return lines, data
        raw, data = data[:cut], data[cut + 1 :]
        raw = raw.removesuffix(b"\r")
        for start in range(0, max(len(raw), 1), MAX_LINE):
            lines.append(raw[start : start + MAX_LINE].decode(errors="backslashreplace"))


Filter = Callable[[LogLine], bool]


class LogBook:
    """Keeps recent lines, appends every line to the log file and stderr, and feeds followers."""

    def __init__(self, path: str | None, keep: int = 5000, echo: TextIO | None = sys.stderr):
        self._recent: deque[LogLine] = deque(maxlen=keep)
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self._echo = echo
        self._followers: list[tuple[Filter, asyncio.Queue[LogLine | None]]] = []

    def emit(self, app: str | None, source: str, text: str) -> LogLine:
        line = LogLine(app, source, text, timestamp())
        self._recent.append(line)
        rendered = str(line)
        if self._file:
            self._file.write(rendered + "\n")
        if self._echo:
            print(rendered, file=self._echo, flush=True)
        for keep, queue in self._followers:
            if keep(line):
                # A follower that cannot keep up loses lines rather than growing memory forever.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(line)
        return line

    def recent(self, keep: Filter, count: int) -> list[LogLine]:
        chosen = [line for line in self._recent if keep(line)]
        return chosen[-count:] if count else []

    @contextlib.contextmanager
    def follow(self, keep: Filter) -> Iterator[asyncio.Queue[LogLine | None]]:
        """While inside, every line keep() accepts also goes to the yielded queue."""
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue(maxsize=10_000)
        entry = (keep, queue)
        self._followers.append(entry)
        try:
            yield queue
        finally:
            self._followers.remove(entry)

    def close(self) -> None:
        for _, queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._file:
            self._file.close()
            self._file = None


class OutputFile:
    """Reads what a dyno appended to its output file since the last read.

    The file stays open: reading goes on after the file is unlinked (a stopped dyno's), and a
    poll costs an fstat, not an open.
    """

    # Bytes already read are given back to the filesystem in steps of this size.
    RECLAIM = 4 << 20

    def __init__(self, path: str, offset: int, reclaim: bool = True) -> None:
        self.path = path
        self.offset = offset
        self.reclaim = reclaim
        self._fd: int | None = None
        self._pending = b""
        self._reclaimed = 0

    def open(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_lines(self, limit: int = 1 << 20) -> list[str]:
        """Complete lines from at most `limit` new bytes."""
        chunk = self._read(limit)
        lines, self._pending = split_output(self._pending, chunk)
        return lines

    def _read(self, limit: int) -> bytes:
        if not self.open():
            return b""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self.offset:  # truncated by someone: start over
            self.offset = 0
        if size == self.offset:
            return b""
        chunk = os.pread(self._fd, min(limit, size - self.offset), self.offset)
        self.offset += len(chunk)
        if self.reclaim and self.offset - self._reclaimed >= self.RECLAIM:
            self._reclaim()
        return chunk

    def _reclaim(self) -> None:
        """Punch out what was read (`fallocate --punch-hole`): the file keeps its size, so
        offsets stay valid and the dyno's O_APPEND writes are untouched, but a chatty dyno no
        longer fills the disk. A filesystem without hole punching just keeps the bytes."""
        end = self.offset & ~4095
        _libc.fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, end)
        self._reclaimed = end

    def flush(self) -> list[str]:
        """Everything left, the last unterminated line included, once the dyno has exited."""
        lines: list[str] = []
        while chunk := self._read(1 << 20):
            more, self._pending = split_output(self._pending, chunk)
            lines += more
        if self._pending:
            lines.append(self._pending.decode(errors="backslashreplace"))
            self._pending = b""
        return lines
