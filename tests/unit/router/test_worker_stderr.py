"""A router worker's standard error into the daemon's log (dynod/router/worker_stderr.py): line
by line, whatever the chunks, bounded in lines and in length."""

from __future__ import annotations

import asyncio

import pytest

from dynod.router import worker_stderr
from dynod.router.worker_stderr import StderrRelay


def relayed(chunks: list[bytes]) -> list[str]:
    said: list[str] = []

    async def main() -> None:
        relay = StderrRelay(3, said.append)
        for chunk in chunks:
            relay.data_received(chunk)
        relay.eof_received()
        relay.connection_lost(None)
        assert relay.ended.done()

    asyncio.run(main())
    return said


def test_lines_are_said_whole_whatever_the_chunks() -> None:
    said = relayed([b"Traceback (most", b' recent call last):\n  File "x"', b"\n\nKeyError: 1"])
    assert said == [
        "router worker 3: Traceback (most recent call last):",
        'router worker 3:   File "x"',
        "router worker 3: KeyError: 1",  # the last line, with no newline: said at the end
    ]


def test_a_flood_is_cut_to_a_burst_and_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_stderr, "PER_SECOND", 0.0)  # however slow this machine is
    lines = b"".join(b"line %d\n" % i for i in range(worker_stderr.BURST + 500))
    said = relayed([lines[i : i + 4096] for i in range(0, len(lines), 4096)])
    burst, tail = worker_stderr.BURST, worker_stderr.TAIL
    assert len(said) == burst + 1 + tail
    assert said[burst - 1] == f"router worker 3: line {burst - 1}"
    # at the end: how many, and the last of them (a traceback's last lines say why)
    assert said[burst] == f"router worker 3: (500 lines left out; the last {tail}:)"
    assert said[burst + 1 :] == [f"router worker 3: line {i}" for i in range(540, 550)]


def test_lines_left_out_are_counted_and_the_next_one_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_stderr, "BURST", 2)
    monkeypatch.setattr(worker_stderr, "PER_SECOND", 0.0)
    said: list[str] = []

    async def main() -> None:
        relay = worker_stderr.StderrRelay(1, said.append)
        relay.data_received(b"a\nb\nc\nd\n")  # two said, two left out
        relay.data_received(b"e\n" * 30 + b"partial")  # counted at once, while none may go
        relay.bucket.rate = 1e6  # the bucket is full again
        relay.data_received(b" end\nnext\n")
        relay.finish()

    asyncio.run(main())
    assert said == [
        "router worker 1: a",
        "router worker 1: b",
        "router worker 1: (32 more lines left out)",
        "router worker 1: partial end",
        "router worker 1: next",
    ]


def test_a_line_too_long_is_cut_once_and_the_next_line_is_whole() -> None:
    huge = b"x" * (worker_stderr.LINE * 5)
    said = relayed([huge[: worker_stderr.LINE + 10], huge[worker_stderr.LINE + 10 :], b"\nnext\n"])
    assert said == [f"router worker 3: {'x' * worker_stderr.LINE} [cut]", "router worker 3: next"]
    said = relayed([huge + b"\nafter\n"])  # the same in one chunk
    assert said == [f"router worker 3: {'x' * worker_stderr.LINE} [cut]", "router worker 3: after"]
    said = relayed([huge[: worker_stderr.LINE + 10], b"its end\nnext\n"])  # the end: not said
    assert said == [f"router worker 3: {'x' * worker_stderr.LINE} [cut]", "router worker 3: next"]


def test_finish_says_the_last_line_without_its_newline() -> None:
    said: list[str] = []

    async def main() -> None:
        relay = worker_stderr.StderrRelay(2, said.append)
        relay.data_received(b"one\nValueError: why")
        relay.finish()  # no end of the pipe seen (no pipe here): what it holds, now

    asyncio.run(main())
    assert said == ["router worker 2: one", "router worker 2: ValueError: why"]


def test_bytes_that_are_not_text_are_replaced_not_fatal() -> None:
    assert relayed([b"\xff\xfe bad\n"]) == ["router worker 3: \ufffd\ufffd bad"]
