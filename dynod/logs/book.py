"""Heroku-format log lines, the daemon's log and who is following it.

A line is `2026-11-21T12:00:00.123456+00:00 app[web.1]: text`: the timestamp is when dynod read
it, `app[...]` is a dyno's own output, `heroku[...]` the platform's (lifecycle, router).

A dyno writes its stdout and stderr straight into a file of its own (never a pipe to the
daemon), so a daemon that dies or restarts never makes a dyno's write fail; the daemon reads
the files from the offset it saved and turns what it reads into lines.

A dyno can write far faster than lines can be handled (`yes` writes hundreds of MB a second), so
everything here is bounded, per dyno: the unread part of its file (WINDOW; older bytes are
skipped and punched out), what one poll reads (READ_BUDGET), and the lines and bytes a second
that become log lines (token buckets). What is dropped is counted and reported in Logplex's
words (Error L10). The daemon's own log file is rotated by size, its stderr echo is written by a
thread of its own (a slow terminal or journal never blocks the daemon), and a follower that
cannot keep up is told what it missed (Error L11).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from netns import descriptors

MAX_LINE = 10_000  # Heroku splits longer lines

# Per dyno. Logplex buffers 1,024 messages per drain (drain_buffer_size in heroku/logplex's
# src/logplex.app.src) and drops what overflows, with an L10 line: the same number is the burst
# here, then 1,000 lines (and 1 MiB) a second, steady.
LINE_BURST = 1_024
LINES_PER_SECOND = 1_000
BYTE_BURST = 1 << 20
BYTES_PER_SECOND = 1 << 20
WINDOW = 8 << 20  # unread bytes kept in a dyno's file; what is older is skipped, unread
# A foreground dyno's output is its user's data (`dynod run -- pg_dump > file`): its stream may
# fall this far behind before bytes are skipped. The daemon's own reader of the same file keeps
# twice that unpunched, so the stream never reads a hole.
FOREGROUND_WINDOW = 64 << 20
READ_BUDGET = 256 << 10  # bytes read from one dyno's file per poll
REPORT_EVERY = 1.0  # seconds between two L10 lines of one dyno
PUNCH_QUEUE = 64  # hole punches waiting for the punching thread

# The daemon's own log: rotated at LOG_MAX bytes, LOG_KEEP old files kept (dynod.log.1 ...).
LOG_MAX = 10 << 20
LOG_KEEP = 3
ECHO_QUEUE = 10_000  # lines waiting for a slow stderr before they are dropped
FOLLOW_QUEUE = 10_000  # lines waiting for a slow `dynod logs --tail`

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
    # the dyno a line is about when its source does not say (an L10 from heroku[logplex]), so
    # `dynod logs --dyno web.1` shows it
    dyno: str | None = None

    def __str__(self) -> str:
        return f"{self.time} {self.source}: {self.text}"


def split_output(pending: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """Cut complete lines out of pending+chunk; returns them and the unfinished rest.

    Lines over MAX_LINE bytes are cut into pieces, as Heroku's logplex does; bytes that are not
    UTF-8 are shown escaped rather than dropped.
    """
    lines, rest, _ = cut_lines(pending, chunk)
    return lines, rest


def cut_lines(
    pending: bytes, chunk: bytes, admit: Callable[[int], bool] | None = None
) -> tuple[list[str], bytes, int]:
    """split_output with a gate: admit(size) says whether one more line may go on. From the
    first line it refuses, the rest of the chunk is only counted (a bytes.count, not a Python
    loop per line: a flood of short lines costs what its bytes cost). Returns the admitted
    lines, the unfinished rest (never over MAX_LINE) and how many lines were dropped."""
    data = pending + chunk
    lines: list[str] = []
    pos = 0
    while True:
        cut = data.find(b"\n", pos)
        if cut < 0:
            if len(data) - pos < MAX_LINE:
                return lines, data[pos:], 0
            raw, pos = data[pos : pos + MAX_LINE], pos + MAX_LINE
        else:
            raw, pos = data[pos:cut].removesuffix(b"\r"), cut + 1
        for start in range(0, max(len(raw), 1), MAX_LINE):
            piece = raw[start : start + MAX_LINE]
            if admit is not None and not admit(len(piece)):
                return lines, *_count_rest(data, pos)
            lines.append(piece.decode(errors="backslashreplace"))


def _count_rest(data: bytes, pos: int) -> tuple[bytes, int]:
    """The refused line, then every complete line after pos, and the over-long pieces of the
    unfinished tail are dropped; the tail itself is kept for the next read."""
    dropped = 1 + data.count(b"\n", pos)
    last = data.rfind(b"\n", pos)
    if last >= 0:
        pos = last + 1
    while len(data) - pos >= MAX_LINE:
        dropped += 1
        pos += MAX_LINE
    return data[pos:], dropped


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up: the classic rate limiter."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._last = clock()

    def refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now


class OutputLimit:
    """How much of one dyno's output becomes log lines: lines a second and bytes a second, each
    a token bucket (a burst, then a steady rate). What is over the limit is dropped and
    counted, as Heroku's Logplex does (Error L10)."""

    def __init__(
        self,
        lines: float = LINES_PER_SECOND,
        line_burst: float = LINE_BURST,
        bytes_: float = BYTES_PER_SECOND,
        byte_burst: float = BYTE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = TokenBucket(lines, line_burst, clock)
        self.bytes = TokenBucket(bytes_, byte_burst, clock)

    def refill(self) -> None:
        self.lines.refill()
        self.bytes.refill()

    def admit(self, size: int) -> bool:
        if self.lines.tokens < 1 or self.bytes.tokens < size:
            return False
        self.lines.tokens -= 1
        self.bytes.tokens -= size
        return True


def overflow_text(messages: int, skipped: int, since: str) -> str:
    """Logplex's words for dropped lines (Error L10 (output buffer overflow): N messages dropped
    since T.). Bytes skipped unread are never split into lines, so they are given as bytes."""
    what = f"{messages} messages"
    if skipped:
        what += f" and {skipped} unread bytes"
    return f"Error L10 (output buffer overflow): {what} dropped since {since}."


Filter = Callable[[LogLine], bool]


def about(app: str | None, dyno: str | None) -> Filter:
    """The lines of an app (any app: None), of one of its dynos when `dyno` is given: its own
    output and the platform's lines about it (`app[web.1]`, `heroku[web.1]`, an L10 naming
    it)."""

    def keep(line: LogLine) -> bool:
        if app and line.app != app:
            return False
        return not dyno or line.source.endswith(f"[{dyno}]") or line.dyno == dyno

    return keep


class RotatingFile:
    """An append-only file that is renamed to NAME.1 (NAME.1 to NAME.2 ...) once it reaches
    max_bytes; `keep` old files are kept. Created root-only (0600): the log names every app."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX, keep: int = LOG_KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd = -1
        self._size = 0
        self.lost = 0
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        """A full disk loses lines (counted in `lost`), never the daemon."""
        try:
            if self._fd < 0:  # a rotation that failed half-way: try again
                self._open()
            elif self._size and self._size + len(data) > self.max_bytes:
                self.rotate()
            os.write(self._fd, data)
        except OSError:
            self.lost += 1
            return
        self._size += len(data)

    def rotate(self) -> None:
        """`mv NAME.2 NAME.3; mv NAME.1 NAME.2; mv NAME NAME.1`, then a new NAME."""
        self.close()
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        with contextlib.suppress(FileNotFoundError):  # someone deleted it: nothing to keep
            if self.keep:
                os.replace(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Echo:
    """Lines for stderr, written by a thread of its own: a terminal or journal that reads slowly
    (or not at all) fills a bounded queue, and what does not fit is dropped and counted, never
    waited for on the event loop."""

    def __init__(self, stream: TextIO, size: int = ECHO_QUEUE) -> None:
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue(size)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="dynod-echo", daemon=True)
        self._thread.start()

    def put(self, text: str) -> None:
        try:
            if self.dropped:
                self._queue.put_nowait(f"dynod: {self.dropped} lines were not echoed: slow stderr")
                self.dropped = 0
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (text := self._queue.get()) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(text + "\n")
                if self._queue.empty():  # one flush for a burst, not one per line
                    self._stream.flush()

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)


@dataclass
class _Follower:
    keep: Filter
    queue: asyncio.Queue[LogLine | None]
    dropped: int = 0
    since: str = ""


class LogBook:
    """Keeps recent lines, appends every line to the log file and stderr, and feeds followers."""

    def __init__(
        self,
        path: str | None,
        keep: int = 5000,
        echo: TextIO | None = sys.stderr,
        max_bytes: int = LOG_MAX,
        keep_files: int = LOG_KEEP,
    ):
        self._recent: deque[LogLine] = deque(maxlen=keep)
        self._file = RotatingFile(path, max_bytes, keep_files) if path else None
        self._echo = Echo(echo) if echo else None
        self._followers: list[_Follower] = []

    def emit(self, app: str | None, source: str, text: str, dyno: str | None = None) -> LogLine:
        line = LogLine(app, source, text, timestamp(), dyno)
        self._recent.append(line)
        rendered = str(line)
        if self._file:
            self._file.write(rendered.encode(errors="backslashreplace") + b"\n")
        if self._echo:
            self._echo.put(rendered)
        for follower in self._followers:
            if follower.keep(line):
                self._feed(follower, line)
        return line

    def emit_many(self, source: str, items: Iterable[tuple[str, str | None]]) -> None:
        """Lines of one source that arrived together (a router worker's batch of (text, app)):
        one timestamp and one write to the log file for all of them. Under router load a write
        per line was most of the daemon's cost per request."""
        now = timestamp()
        lines = [LogLine(app, source, text, now) for text, app in items]
        if not lines:
            return
        self._recent.extend(lines)
        rendered = [str(line) for line in lines]
        if self._file:
            data = "\n".join(rendered).encode(errors="backslashreplace") + b"\n"
            self._file.write(data)
        if self._echo:  # one item: a slow stderr drops the batch (counted as one line)
            self._echo.put("\n".join(rendered))
        for follower in self._followers:
            for line in lines:
                if follower.keep(line):
                    self._feed(follower, line)

    @staticmethod
    def _feed(follower: _Follower, line: LogLine) -> None:
        """A follower that cannot keep up loses lines rather than growing memory forever, and is
        told how many once it has room again, in Logplex's words (Error L11)."""
        room = follower.queue.maxsize - follower.queue.qsize()
        if follower.dropped and room >= 2:
            notice = (
                f"Error L11 (Tail buffer overflow) -> This tail session dropped "
                f"{follower.dropped} messages since {follower.since}."
            )
            follower.queue.put_nowait(LogLine(line.app, "heroku[logplex]", notice, timestamp()))
            follower.dropped, room = 0, room - 1
        if room >= 1:
            follower.queue.put_nowait(line)
            return
        if not follower.dropped:
            follower.since = line.time
        follower.dropped += 1

    def recent(self, keep: Filter, count: int) -> list[LogLine]:
        chosen = [line for line in self._recent if keep(line)]
        return chosen[-count:] if count else []

    @contextlib.contextmanager
    def follow(self, keep: Filter) -> Iterator[asyncio.Queue[LogLine | None]]:
        """While inside, every line keep() accepts also goes to the yielded queue."""
        follower = _Follower(keep, asyncio.Queue(maxsize=FOLLOW_QUEUE))
        self._followers.append(follower)
        try:
            yield follower.queue
        finally:
            self._followers.remove(follower)

    def close(self) -> None:
        for follower in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                follower.queue.put_nowait(None)
        if self._file:
            self._file.close()
            self._file = None
        if self._echo:
            self._echo.close()
            self._echo = None


class Puncher:
    """Hole punching on a thread of its own: on ext4, punching out the hundreds of MB a `yes`
    writes between two polls takes tens of milliseconds, too long for the event loop. Each job
    has its own dup of the file descriptor, so a reader that closes its file meanwhile never
    has another file punched under the reused number."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dynod-punch", daemon=True)
        self._thread.start()

    def punch(self, fd: int, start: int, length: int) -> bool:
        """Queue a punch; False (try again later) when too many are waiting already."""
        if self._queue.qsize() >= PUNCH_QUEUE:
            return False
        self._queue.put((os.dup(fd), start, length))
        return True

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            fd, start, length = job
            try:
                punch_hole(fd, start, length)
            finally:
                os.close(fd)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


_shared: Puncher | None = None


def shared_puncher() -> Puncher:
    """The daemon's one punching thread, made on first use."""
    global _shared
    if _shared is None:
        _shared = Puncher()
    return _shared


def punch_hole(fd: int, start: int, length: int) -> None:
    """`fallocate --punch-hole --keep-size --offset START --length LENGTH FILE`: the bytes are
    given back to the filesystem, the file keeps its size. A filesystem without hole punching
    just keeps the bytes."""
    _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length)


class OutputFile:
    """Reads what a dyno appended to its output file since the last read, within bounds.

    The file stays open: reading goes on after the file is unlinked (a stopped dyno's), and a
    poll costs an fstat, not an open. Never more than WINDOW unread bytes are kept: when the dyno
    is further ahead, the reader skips to the last WINDOW bytes (and to the next line start),
    punches the skipped bytes out and counts them. With a `limit`, lines over its rates are
    dropped and counted too; `overflow()` says what was dropped, in Logplex's words.
    """

    # Bytes already read are given back to the filesystem in steps of this size.
    RECLAIM = 4 << 20
    WINDOW = WINDOW

    def __init__(
        self,
        path: str,
        offset: int,
        reclaim: bool = True,
        keep: int = 0,
        limit: OutputLimit | None = None,
        puncher: Puncher | None = None,
        window: int | None = None,
    ) -> None:
        """puncher: who punches out what was read (at once, here, without one).
        keep: bytes at the file's end never punched out, for a second reader of the same file
        (a foreground dyno's stream): with keep >= 2 * WINDOW, whatever one reader punches is
        so far behind the end that the other skips it instead of reading a hole."""
        self.path = path
        self.offset = offset
        self.reclaim = reclaim
        self.keep = keep
        if window is not None:
            self.WINDOW = window
        self.limit = limit
        self.puncher = puncher
        self._fd: int | None = None
        self._pending = b""
        self._reclaimed = 0
        self._resync = False  # after a skip: drop the rest of the line the skip landed in
        self._resync_seen = 0  # bytes dropped so far while looking for that line's end
        self.dropped = 0  # lines dropped since the last overflow()
        self.skipped = 0  # bytes skipped unread since the last overflow()
        self.since = ""
        self._reported = -REPORT_EVERY

    def open(self) -> bool:
        if self._fd is None:
            try:
                # one per dyno: kept above select()'s range (netns/descriptors.py)
                self._fd = descriptors.lifted(os.open(self.path, os.O_RDWR | os.O_CLOEXEC))
            except FileNotFoundError:
                return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def fileno(self) -> int | None:
        """The open file (None until open() found it): what a change watch follows."""
        return self._fd

    def quiet(self) -> bool:
        """Nothing to do this poll: the open file has no byte past the offset and no drop is
        waiting to be reported (one fstat, the cheapest question a poll of N dynos can ask)."""
        if self._fd is None or self.dropped or self.skipped or self._resync:
            return False
        return os.fstat(self._fd).st_size == self.offset

    def read_lines(self, limit: int = READ_BUDGET) -> list[str]:
        """Complete lines from at most `limit` new bytes (after a skip-ahead, if the dyno is more
        than WINDOW ahead); the lines over the rate limit are counted, not returned."""
        chunk = self._read(limit)
        if self._resync:
            chunk = self._after_cut_line(chunk)
        admit = None
        if self.limit is not None:
            self.limit.refill()
            admit = self.limit.admit
        lines, self._pending, dropped = cut_lines(self._pending, chunk, admit)
        self._count(dropped, 0)
        return lines

    def _read(self, limit: int) -> bytes:
        if not self.open():
            return b""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self.offset:  # truncated by someone: start over
            self.offset = 0
            self._reclaimed = 0
        if size - self.offset > self.WINDOW:
            self._skip_to(size - self.WINDOW, size)
        if size == self.offset:
            return b""
        chunk = os.pread(self._fd, min(limit, size - self.offset), self.offset)
        self.offset += len(chunk)
        if self.reclaim and self.offset - self._reclaimed >= self.RECLAIM:
            self._reclaim(size)
        return chunk

    def _skip_to(self, offset: int, size: int) -> None:
        self._count(0, offset - self.offset + len(self._pending))
        self._pending = b""
        self.offset = offset
        self._resync = True
        self._resync_seen = 0
        if self.reclaim:
            self._reclaim(size)

    def _after_cut_line(self, chunk: bytes) -> bytes:
        """Drop the rest of the line a skip landed in; output without newlines is cut into
        MAX_LINE pieces anyway, so after that much the next byte starts a line."""
        room = MAX_LINE - self._resync_seen
        cut = chunk.find(b"\n", 0, room)
        if cut < 0 and len(chunk) < room:
            self._count(0, len(chunk))
            self._resync_seen += len(chunk)
            return b""
        end = cut + 1 if cut >= 0 else room
        self._count(0, end)
        self._resync = False
        self._resync_seen = 0
        return chunk[end:]

    def _count(self, dropped: int, skipped: int) -> None:
        if (dropped or skipped) and not (self.dropped or self.skipped):
            self.since = timestamp()
        self.dropped += dropped
        self.skipped += skipped

    def _reclaim(self, size: int) -> None:
        """Punch out what was read or skipped: the file keeps its size, so offsets stay valid
        and the dyno's O_APPEND writes are untouched, but a chatty dyno no longer fills the
        disk."""
        end = min(self.offset, size - self.keep) & ~4095
        if end <= self._reclaimed or self._fd is None:
            return
        if self.puncher is None:
            punch_hole(self._fd, self._reclaimed, end - self._reclaimed)
        elif not self.puncher.punch(self._fd, self._reclaimed, end - self._reclaimed):
            return
        self._reclaimed = end

    def flush(self, limit: int | None = None) -> list[str]:
        """What is left, the last unterminated line included, once the dyno has exited: at most
        `limit` bytes (what a process left behind still writes beyond that is skipped and
        counted), within the rate limit. Without a limit: the window."""
        lines = self.read_lines(self.WINDOW if limit is None else limit)
        if self._fd is not None:
            size = os.fstat(self._fd).st_size
            if size > self.offset:
                self._skip_to(size, size)
        if self._pending and not self._resync:
            if self.limit is None or self.limit.admit(len(self._pending)):
                lines.append(self._pending.decode(errors="backslashreplace"))
            else:
                self._count(1, 0)
        self._pending = b""
        return lines

    def overflow(self, final: bool = False) -> str | None:
        """The L10 line for what was dropped since the last one, at most one every REPORT_EVERY
        seconds (any time when final)."""
        if not (self.dropped or self.skipped):
            return None
        now = time.monotonic()
        if not final and now - self._reported < REPORT_EVERY:
            return None
        text = overflow_text(self.dropped, self.skipped, self.since)
        self.dropped = self.skipped = 0
        self._reported = now
        return text
