"""The output poll (control/output.py) on real files and real inotify: a quiet dyno costs no
system call per poll, whatever the number of dynos, and no output is ever lost: not when a
dyno writes more than a poll reads, not when its file is unlinked, not when the daemon restarts,
not when the kernel gives no watch (fs.inotify.max_user_watches) or loses events."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dynod.control.output import Outputs
from dynod.logs import changes as changes_module
from dynod.logs.book import READ_BUDGET, LogBook
from dynod.state.store import App, Dyno, State
from netns.inotify import IN_Q_OVERFLOW, Inotify
from tests.unit.control.worlds import stored_dyno


@dataclass
class Poll:
    state: State
    log: LogBook
    outputs: Outputs
    directory: Path
    dynos: list[Dyno] = field(default_factory=list)

    def add(self, count: int = 1) -> list[Dyno]:
        made = []
        for _ in range(count):
            path = self.directory / f"{self.state.next_dyno_id()}.out"
            path.write_bytes(b"")
            dyno = stored_dyno(self.state, log_path=str(path))
            self.outputs.open(dyno)
            made.append(dyno)
        self.dynos += made
        return made

    def poll(self) -> None:
        asyncio.run(self.outputs.read_all())

    def lines(self, dyno: Dyno) -> list[str]:
        return [
            line.text
            for line in self.log.recent(lambda line: line.source == f"app[{dyno.name}]", 100_000)
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Poll]:
    state = State(str(tmp_path / "state"))
    state.add_app(App("app"))
    poll = Poll(state, LogBook(None, echo=None), Outputs(state, LogBook(None, echo=None)), tmp_path)
    poll.log = poll.outputs.log
    yield poll
    for dyno in poll.dynos:
        poll.outputs.close(dyno.id)
    poll.outputs.shutdown()
    state.db.close()


def write(dyno: Dyno, data: bytes) -> None:
    with open(dyno.log_path, "ab") as out:
        out.write(data)


class Counted:
    """Counts the fstat and pread calls a poll makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for name in ("fstat", "pread"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._counting(real))

    def _counting(self, real: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.calls += 1
            return real(*args)

        return counted


def quiet_poll_calls(world: Poll, count: int, monkeypatch: pytest.MonkeyPatch) -> int:
    world.add(count)
    world.poll()  # the first poll reads every new file once
    counted = Counted(monkeypatch)
    world.poll()
    world.poll()
    monkeypatch.undo()
    return counted.calls


def test_a_poll_of_quiet_dynos_makes_no_system_call_for_20_or_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the change watch a poll asked each dyno's file (an fstat): 20 vs 200 calls."""
    calls = []
    for count in (20, 200):
        state = State(str(tmp_path / f"state{count}"))
        state.add_app(App("app"))
        directory = tmp_path / str(count)
        directory.mkdir()
        world = Poll(state, LogBook(None, echo=None), Outputs(state, LogBook(None)), directory)
        world.log = world.outputs.log
        try:
            calls.append(quiet_poll_calls(world, count, monkeypatch))
            assert world.outputs.changes.watched() == count
        finally:
            for dyno in world.dynos:
                world.outputs.close(dyno.id)
            world.outputs.shutdown()
            state.db.close()
    assert calls == [0, 0]


def test_only_the_dyno_that_wrote_is_read(world: Poll, monkeypatch: pytest.MonkeyPatch) -> None:
    dynos = world.add(50)
    world.poll()
    counted = Counted(monkeypatch)
    write(dynos[7], b"hello\n")
    world.poll()
    assert world.lines(dynos[7]) == ["hello"]
    assert counted.calls <= 4  # the one file: its fstat(s) and pread, not 50 fstats
    assert all(world.lines(dyno) == [] for dyno in dynos if dyno is not dynos[7])
    row = world.state.dyno(dynos[7].id)
    assert row is not None and row.log_offset == len(b"hello\n")


def test_a_dyno_that_writes_more_than_a_poll_reads_is_read_on_without_a_new_write(
    world: Poll,
) -> None:
    (dyno,) = world.add()
    line = b"x" * 999 + b"\n"
    count = READ_BUDGET // len(line) + 100  # more than one poll's budget, under the rate limit
    write(dyno, line * count)
    world.poll()
    assert 0 < len(world.lines(dyno)) < count
    world.poll()  # no write since: still due, its reader was not quiet
    assert len(world.lines(dyno)) == count


def test_an_unlinked_output_file_is_still_read(world: Poll) -> None:
    (dyno,) = world.add()
    world.poll()
    with open(dyno.log_path, "ab") as out:  # the dyno's own descriptor outlives the name
        os.unlink(dyno.log_path)
        out.write(b"after the unlink\n")
        out.flush()
        world.poll()
    assert world.lines(dyno) == ["after the unlink"]


def test_a_restarted_daemon_reads_from_the_stored_offset(world: Poll) -> None:
    (dyno,) = world.add()
    write(dyno, b"one\n")
    world.poll()
    row = world.state.dyno(dyno.id)
    assert row is not None and row.log_offset == 4
    write(dyno, b"two\n")
    # a new daemon: new readers (and watches) from the row's offset
    outputs = Outputs(world.state, LogBook(None, echo=None))
    try:
        outputs.reopen(row)
        asyncio.run(outputs.read_all())
        texts = [line.text for line in outputs.log.recent(lambda line: True, 10)]
        assert texts == ["two"]
        write(dyno, b"three\n")
        asyncio.run(outputs.read_all())
        assert [line.text for line in outputs.log.recent(lambda line: True, 10)][-1] == "three"
    finally:
        outputs.close(dyno.id)
        outputs.shutdown()


def test_files_past_max_user_watches_are_polled_and_still_read(
    world: Poll, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = Inotify.add
    given = 0

    def add(self: Inotify, path: str, mask: int) -> int:  # a limit of 3 watches
        nonlocal given
        if given == 3:
            raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")
        given += 1
        return real_add(self, path, mask)

    monkeypatch.setattr(Inotify, "add", add)
    dynos = world.add(6)
    assert world.outputs.changes.watched() == 3 and len(world.outputs.changes.polled) == 3
    world.poll()
    for dyno in dynos:
        write(dyno, f"from {dyno.name}\n".encode())
    world.poll()
    assert [world.lines(dyno) for dyno in dynos] == [[f"from {d.name}"] for d in dynos]


def test_no_inotify_instance_left_every_file_is_polled(
    world: Poll, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = Outputs(world.state, world.log)
    outputs.changes = changes_module.Changes(make=lambda: None)
    world.outputs = outputs
    dynos = world.add(3)
    world.poll()
    write(dynos[1], b"polled\n")
    world.poll()
    assert world.lines(dynos[1]) == ["polled"]


def test_lost_events_make_every_watched_file_due_once(
    world: Poll, monkeypatch: pytest.MonkeyPatch
) -> None:
    dynos = world.add(4)
    world.poll()
    inotify = world.outputs.changes._instance()
    assert inotify is not None
    real_events = inotify.events

    def overflowed() -> Iterator[tuple[int, int]]:  # what the kernel says when its queue filled
        list(real_events())  # the events that did fit are lost with the rest
        yield -1, IN_Q_OVERFLOW

    write(dynos[2], b"lost event\n")
    monkeypatch.setattr(inotify, "events", overflowed)
    world.poll()
    assert world.lines(dynos[2]) == ["lost event"]
    monkeypatch.setattr(inotify, "events", real_events)
    world.poll()  # the one that was read is asked once more, and found quiet
    assert world.outputs.changes.due() == []  # all settled again
