"""Unit tests of the output and log bounds (issue 7 item 3): no daemon, no root."""

from __future__ import annotations

import asyncio
import io
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from dynod.logs import book as logs
from dynod.logs.book import (
    MAX_LINE,
    Echo,
    LogBook,
    OutputFile,
    OutputLimit,
    RotatingFile,
    TokenBucket,
    cut_lines,
    split_output,
    timestamp,
)

L10 = re.compile(
    r"^Error L10 \(output buffer overflow\): (\d+) messages( and (\d+) unread bytes)? "
    r"dropped since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\.$"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_over_the_gate_are_counted_not_cut() -> None:
    allowed = iter([True, True, False])
    lines, rest, dropped = cut_lines(b"", b"a\nb\nc\nd\ne\ntail", lambda _size: next(allowed))
    assert lines == ["a", "b"] and rest == b"tail" and dropped == 3
    # an unfinished tail never grows past MAX_LINE: the pieces are dropped, counted
    lines, rest, dropped = cut_lines(b"", b"x\n" + b"y" * (2 * MAX_LINE + 5), lambda _s: False)
    assert lines == [] and rest == b"y" * 5 and dropped == 1 + 2


def test_token_buckets_give_a_burst_then_a_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 5, clock)
    assert bucket.tokens == 5
    bucket.tokens = 0
    clock.now += 0.3
    bucket.refill()
    assert abs(bucket.tokens - 3) < 1e-9
    clock.now += 100
    bucket.refill()
    assert bucket.tokens == 5  # never more than the burst

    limit = OutputLimit(lines=100, line_burst=1024, bytes_=1 << 20, byte_burst=1 << 20, clock=clock)
    taken = sum(limit.admit(1) for _ in range(5000))
    assert taken == 1024
    clock.now += 1.0
    limit.refill()
    assert sum(limit.admit(1) for _ in range(5000)) == 100
    clock.now += 10
    limit.refill()
    assert not limit.admit((1 << 20) + 1)  # the bytes bucket refuses a line bigger than it holds
    assert limit.admit(1 << 20) and not limit.admit(1)


def test_a_flood_is_rate_limited_and_reported_in_logplex_words(tmp_path: Path) -> None:
    path = tmp_path / "dyno.out"
    clock = Clock()
    limit = OutputLimit(lines=1000, line_burst=1024, clock=clock)
    reader = OutputFile(str(path), 0, limit=limit)
    with open(path, "ab", buffering=0) as dyno:
        dyno.write(b"y\n" * 100_000)
        lines = reader.read_lines()
    assert lines == ["y"] * 1024
    assert reader.dropped == 100_000 - 1024 and reader.skipped == 0
    report = reader.overflow()
    assert report is not None
    match = L10.match(report)
    assert match and int(match.group(1)) == 100_000 - 1024 and match.group(2) is None, report
    assert reader.dropped == 0 and reader.overflow(final=True) is None  # reported once


def test_a_backlog_over_the_window_is_skipped_punched_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "dyno.out"
    reader = OutputFile(str(path), 0)
    reader.WINDOW = 1 << 20
    line = b"z" * 99 + b"\n"  # 100 bytes a line
    with open(path, "ab", buffering=0) as dyno:
        dyno.write(line * 50_000)  # 5 MB, 4 over the window
        lines = reader.read_lines(64 << 10)
    size = os.stat(path).st_size
    assert reader.skipped >= size - reader.WINDOW
    assert all(x == "z" * 99 for x in lines) and lines  # the reader starts at a line start
    assert os.stat(path).st_blocks * 512 <= reader.WINDOW + (64 << 10)  # skipped bytes punched
    report = reader.overflow(final=True)
    match = L10.match(report or "")
    assert match and size - reader.WINDOW <= int(match.group(3)) < size - reader.WINDOW + 100


def test_flush_reads_at_most_the_window_however_big_the_backlog(tmp_path: Path) -> None:
    for name in ("dyno.out", "other.out"):
        with open(tmp_path / name, "ab", buffering=0) as dyno:
            for _ in range(32):
                dyno.write(b"w" * 1023 + b"\n" + b"v" * (1 << 20) + b"\n")  # 32 MB in all
            dyno.write(b"last line, unterminated")
    path = tmp_path / "dyno.out"
    reader = OutputFile(str(path), 0)
    reader.WINDOW = 1 << 20
    began = time.monotonic()
    lines = reader.flush()
    assert time.monotonic() - began < 2
    assert sum(len(x) for x in lines) <= reader.WINDOW
    assert lines[-1] == "last line, unterminated"
    assert reader.skipped > 30 << 20 and reader.offset == os.stat(path).st_size
    # a slice-bounded flush counts what it did not read instead of reading it
    other = OutputFile(str(tmp_path / "other.out"), 0)
    other.WINDOW = 64 << 20  # no skip-ahead: the limit alone bounds it
    assert other.flush(limit=4096) == ["w" * 1023] and other.skipped > (32 << 20) - 4096


def test_two_readers_of_one_file_never_read_a_punched_hole(tmp_path: Path) -> None:
    """A foreground dyno: the daemon and the `dynod run` stream read the same file, and both
    punch. With keep = 2 windows, the slower one skips what the faster one punched."""
    path = tmp_path / "dyno.out"
    window = 256 << 10
    fast = OutputFile(str(path), 0, keep=2 * window)
    slow = OutputFile(str(path), 0, keep=2 * window)
    fast.WINDOW = slow.WINDOW = window
    fast.RECLAIM = slow.RECLAIM = 4096
    seen: list[str] = []
    with open(path, "ab", buffering=0) as dyno:
        for i in range(3000):
            dyno.write(f"{i:07d}".encode() * 100 + b"\n")
            fast.read_lines(1 << 30)
            if i % 7 == 0:
                seen += slow.read_lines(4096)
    seen += slow.flush()
    assert seen and all("\0" not in x and len(x) == 700 for x in seen)
    assert slow.skipped > 0  # it fell behind and skipped, rather than reading zeros
    assert os.stat(path).st_blocks * 512 < os.stat(path).st_size  # and bytes were given back


def test_the_daemon_log_rotates_and_stays_root_only(tmp_path: Path) -> None:
    path = tmp_path / "dynod.log"
    book = LogBook(str(path), echo=None, max_bytes=10_000, keep_files=2)
    for i in range(1000):
        book.emit("sushi", "app[web.1]", f"line {i:04d} " + "x" * 50)
    book.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["dynod.log", "dynod.log.1", "dynod.log.2"], names
    for name in names:
        info = os.stat(tmp_path / name)
        assert info.st_size <= 10_000 and stat.S_IMODE(info.st_mode) == 0o600
    assert "line 0999" in (tmp_path / "dynod.log").read_text()
    # a restarted daemon appends to the current file and keeps rotating
    file = RotatingFile(str(path), max_bytes=10_000, keep=2)
    file.write(b"x" * 9_999 + b"\n")
    file.close()
    assert b"line 0999" in (tmp_path / "dynod.log.1").read_bytes()  # rotated, not lost
    assert (tmp_path / "dynod.log").read_bytes() == b"x" * 9_999 + b"\n"
    assert not (tmp_path / "dynod.log.3").exists()


class BlockedStream(io.StringIO):
    """stderr of a terminal that is not read: every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)


def test_a_stuck_stderr_never_blocks_the_log() -> None:
    stream = BlockedStream()
    book = LogBook(None, echo=stream)
    began = time.monotonic()
    for i in range(logs.ECHO_QUEUE + 5000):
        book.emit(None, "dynod", f"line {i}")
    assert time.monotonic() - began < 5  # nothing waited for the stuck stream
    echo = book._echo
    assert isinstance(echo, Echo) and echo.dropped >= 4000
    stream.release.set()
    deadline = time.monotonic() + 10
    while not echo._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    book.emit(None, "dynod", "after")  # there is room again: the count goes first
    book.close()
    text = stream.getvalue()
    assert re.search(r"dynod: \d+ lines were not echoed: slow stderr\n.*after", text), text[-300:]


def test_a_slow_follower_is_told_what_it_missed() -> None:
    async def scenario() -> list[str]:
        book = LogBook(None, echo=None)
        with book.follow(lambda line: True) as queue:
            for i in range(logs.FOLLOW_QUEUE + 30):
                book.emit("sushi", "app[web.1]", f"n{i}")
            for _ in range(100):
                queue.get_nowait()
            book.emit("sushi", "app[web.1]", "later")
            got = []
            while not queue.empty():
                item = queue.get_nowait()
                assert item is not None
                got.append(str(item))
            return got

    got = asyncio.run(scenario())
    notice = [x for x in got if "Error L11" in x]
    assert len(notice) == 1 and got[-1].endswith("app[web.1]: later"), got[-3:]
    assert re.search(
        r" heroku\[logplex\]: Error L11 \(Tail buffer overflow\) -> This tail session dropped "
        r"30 messages since \S+\.$",
        notice[0],
    ), notice


def test_a_batch_of_lines_is_one_write_in_order_and_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> list[str]:
        book = LogBook(str(tmp_path / "dynod.log"), echo=None)
        book.emit(None, "dynod", "before")
        writes: list[bytes] = []
        real_write = os.write
        monkeypatch.setattr(
            os, "write", lambda fd, data: writes.append(data) or real_write(fd, data)
        )
        with book.follow(lambda line: line.app == "sushi") as queue:
            book.emit_many("heroku[router]", [("one", "sushi"), ("two", None), ("three", "sushi")])
            followed = []
            while not queue.empty():
                item = queue.get_nowait()
                assert item is not None
                followed.append(item.text)
        assert len(writes) == 1
        recent = book.recent(lambda line: True, 10)
        assert [line.text for line in recent] == ["before", "one", "two", "three"]
        assert recent[1].source == "heroku[router]" and recent[2].app is None
        return followed

    assert asyncio.run(scenario()) == ["one", "three"]
    text = (tmp_path / "dynod.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in text] == [
        "dynod: before",
        "heroku[router]: one",
        "heroku[router]: two",
        "heroku[router]: three",
    ]


def test_a_full_disk_loses_log_lines_not_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    book = LogBook(str(tmp_path / "dynod.log"), echo=None)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logs.os, "write", full)
    line = book.emit("sushi", "app[web.1]", "lost on disk, kept in memory")
    monkeypatch.undo()
    assert book.recent(lambda x: True, 1) == [line]
    assert book._file is not None and book._file.lost == 1
    book.emit("sushi", "app[web.1]", "room again")
    book.close()
    assert (tmp_path / "dynod.log").read_text().endswith("app[web.1]: room again\n")


def test_output_is_cut_into_lines_and_long_lines_split() -> None:
    lines, rest = split_output(b"", b"one\ntwo\r\nthr")
    assert (lines, rest) == (["one", "two"], b"thr")
    lines, rest = split_output(rest, b"ee\n")
    assert (lines, rest) == (["three"], b"")
    lines, rest = split_output(b"", b"x" * 25_000 + b"\n")
    assert [len(x) for x in lines] == [10_000, 10_000, 5_000] and rest == b""
    lines, _ = split_output(b"", b"\xff\xfebad\n")
    assert lines == ["\\xff\\xfebad"]


def test_log_lines_have_heroku_format(tmp_path: object) -> None:
    stamp = timestamp()
    assert stamp.endswith("+00:00") and len(stamp) == len("2026-11-21T12:00:00.123456+00:00")
    book = LogBook(None, echo=None)
    line = book.emit("sushi", "app[web.1]", "hello")
    text = str(line)
    assert text.endswith(" app[web.1]: hello") and text.split(" ")[0].endswith("+00:00")
    assert book.recent(lambda x: x.app == "sushi", 10) == [line]
    assert book.recent(lambda x: x.app == "other", 10) == []


def test_output_file_reads_new_lines_and_gives_read_space_back(tmp_path) -> None:
    import os

    from dynod.logs.book import OutputFile

    path = tmp_path / "dyno.out"
    with open(path, "ab", buffering=0) as dyno:
        reader = OutputFile(str(path), 0)
        assert reader.read_lines() == []
        dyno.write(b"first\nsec")
        assert reader.read_lines() == ["first"]
        dyno.write(b"ond\n" + b"x" * 99 + b"\n")
        assert reader.read_lines() == ["second", "x" * 99]
        block = (b"y" * 1023 + b"\n") * 1024  # 1 MiB a write
        for _ in range(6):
            dyno.write(block)
            while reader.read_lines():
                pass
        size = os.stat(path).st_size
        assert size > 6 << 20  # offsets stay valid: the file keeps its size...
        assert os.stat(path).st_blocks * 512 < 3 << 20  # ...but what was read is given back
        dyno.write(b"tail without newline")
        assert reader.read_lines() == [] and reader.flush() == ["tail without newline"]


def test_output_without_newlines_comes_back_after_a_skip(tmp_path: Path) -> None:
    path = tmp_path / "dyno.out"
    reader = OutputFile(str(path), 0, window=1 << 20)
    with open(path, "ab", buffering=0) as dyno:
        dyno.write(b"x" * (3 << 20))  # a burst past the window, no newline anywhere
        reader.read_lines()
        assert reader.skipped >= 2 << 20
        for i in range(30):
            dyno.write(b"%09999d" % i)  # 10,000 bytes each, still no newline
    lines: list[str] = []
    for _ in range(20):
        lines += reader.read_lines()
    assert len(lines) >= 25, len(lines)
    assert all(len(line) == MAX_LINE for line in lines)


def test_a_line_about_a_dyno_carries_its_name(tmp_path: Path) -> None:
    book = LogBook(None, echo=None)
    line = book.emit("sushi", "heroku[logplex]", "Error L10 (output buffer overflow): 1", "web.1")
    assert line.dyno == "web.1" and str(line).endswith(
        "heroku[logplex]: Error L10 (output buffer overflow): 1"
    )
    assert book.emit("sushi", "app[web.1]", "hi").dyno is None


def test_a_quiet_output_file_is_told_by_one_fstat_and_is_never_wrong(tmp_path) -> None:
    """quiet() (the poll's fast path) is True only when read_lines() would return nothing and
    there is no drop to report."""
    path = tmp_path / "1.out"
    path.write_bytes(b"")
    reader = OutputFile(str(path), 0)
    assert not reader.quiet()  # not open yet: the poll opens it
    assert reader.read_lines() == [] and reader.quiet()
    with open(path, "ab") as out:
        out.write(b"one\ntw")
    assert not reader.quiet()
    assert reader.read_lines() == ["one"] and reader.quiet()  # "tw" waits for its line's end
    with open(path, "ab") as out:
        out.write(b"o\n")
    assert not reader.quiet() and reader.read_lines() == ["two"] and reader.quiet()
    path.write_bytes(b"")  # truncated by someone: not quiet, the reader starts over
    assert not reader.quiet()
    reader.read_lines()
    reader.close()
