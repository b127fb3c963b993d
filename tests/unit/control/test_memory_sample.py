"""Memory sampling (control/memory.py, each dyno every 20 s) builds the row of a dyno only when
it has something to say about it (R14, R15): the same work with 20 quiet sized dynos (or unsized
ones) beside it as with 200. The dynos take turns in slices, one a second, rather than all being
read at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynod.control.memory import SLICE_EVERY, MemoryWatch
from dynod.kernel.fake import FakeKernel
from dynod.state.store import App, Dyno, State
from netns import cgroup
from tests.unit.control.worlds import RowsBuilt, stored_dyno


def row(state: State, size: str, dyno_state: str = "up") -> Dyno:
    return stored_dyno(state, state=dyno_state, size=size)


def rows_built_by_a_sample(tmp_path: Path, quiet: int, monkeypatch: pytest.MonkeyPatch) -> int:
    state = State(str(tmp_path / f"state{quiet}"))
    try:
        state.add_app(App("app"))
        kernel = FakeKernel()
        for number in range(quiet):
            dyno = row(state, "standard-1x" if number % 2 else "")
            kernel.usage[dyno.netns] = cgroup.Usage(memory=1 << 20, oom_kills=0)  # under quota
        over = row(state, "standard-1x")
        kernel.usage[over.netns] = cgroup.Usage(memory=600 << 20, oom_kills=0)  # over 512 MB
        row(state, "standard-1x", dyno_state="crashed")  # not sampled
        told: list[tuple[str, str]] = []
        watch = MemoryWatch(
            state, kernel, lambda dyno, text: told.append((dyno.name, text)), SLICE_EVERY
        )
        built = RowsBuilt(monkeypatch)
        asyncio.run(watch.sample())
        monkeypatch.undo()
        assert [name for name, _ in told] == [over.name, over.name]
        assert told[1][1].startswith("Error R14 (Memory quota exceeded)")
        return built.count
    finally:
        state.db.close()


def test_a_sample_builds_the_row_of_the_dyno_over_its_quota_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every row (23 and 203 here)."""
    assert rows_built_by_a_sample(tmp_path, 20, monkeypatch) == 1
    assert rows_built_by_a_sample(tmp_path, 200, monkeypatch) == 1


def test_a_sample_with_no_sized_dyno_wakes_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of unsized dynos: nothing to read, so no thread to wait for (it took 0.3-0.4 s
    to come back with 3,000 dynos starting)."""
    state = State(str(tmp_path / "state"))
    try:
        state.add_app(App("app"))
        for _ in range(3):
            row(state, "")
        told: list[tuple[str, str]] = []
        watch = MemoryWatch(
            state, FakeKernel(), lambda dyno, text: told.append((dyno.name, text)), 20.0
        )

        async def no_thread(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a thread was started with nothing to read")

        monkeypatch.setattr("dynod.control.memory.asyncio.to_thread", no_thread)
        asyncio.run(watch.sample())
        assert told == []
    finally:
        state.db.close()


class CountingKernel(FakeKernel):
    """A fake whose cgroup reads are counted, by group."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def cgroup_usage(self, group: str, above: int | None = None) -> cgroup.Usage | None:
        self.reads.append(group)
        return super().cgroup_usage(group, above)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    """A state with one app, closed after the test."""
    opened = State(str(tmp_path / "state"))
    try:
        opened.add_app(App("app"))
        yield opened
    finally:
        opened.db.close()


def test_each_dyno_is_read_once_an_interval_a_slice_a_second(state: State) -> None:
    """--metrics-interval 20: 20 turns of one second; each turn reads about a twentieth of the
    sized dynos, and the 20 turns read each exactly once. Before: one turn every 20 s read all
    of them (0.3-0.7 s of a thread at 2,500-4,000 dynos, every start beside it 2.5x slower)."""
    kernel = CountingKernel()
    dynos = [row(state, "standard-1x") for _ in range(100)]
    for dyno in dynos:
        kernel.usage[dyno.netns] = cgroup.Usage(memory=1 << 20, oom_kills=0)
    row(state, "")  # unsized: never read
    watch = MemoryWatch(state, kernel, lambda dyno, text: None, 20.0)
    assert (watch.slices, watch.tick) == (20, 1.0)
    per_turn = []
    for _ in range(20):
        before = len(kernel.reads)
        asyncio.run(watch.sample())
        per_turn.append(len(kernel.reads) - before)
    assert sorted(kernel.reads) == sorted(dyno.netns for dyno in dynos)
    assert max(per_turn) <= 6  # 100 ids over 20 slices: 5 each
    asyncio.run(watch.sample())  # the next interval starts again with the first slice
    assert len(kernel.reads) == 100 + per_turn[0]


def test_a_short_interval_is_one_slice(state: State) -> None:
    """--metrics-interval 0.1 (the sizes tests'): every dyno at every turn, as before."""
    watch = MemoryWatch(state, FakeKernel(), lambda dyno, text: None, 0.1)
    assert (watch.slices, watch.tick) == (1, 0.1)
    watch = MemoryWatch(state, FakeKernel(), lambda dyno, text: None, 2.6)
    assert watch.slices == 3 and abs(watch.tick * 3 - 2.6) < 1e-9


def test_a_dyno_over_its_quota_is_told_at_its_own_turn_only(state: State) -> None:
    """R14 comes once an interval, at the turn of the dyno's slice, not at every turn."""
    kernel = FakeKernel()
    for _ in range(7):
        quiet = row(state, "standard-1x")
        kernel.usage[quiet.netns] = cgroup.Usage(memory=1 << 20, oom_kills=0)
    over = row(state, "standard-1x")
    kernel.usage[over.netns] = cgroup.Usage(memory=600 << 20, oom_kills=0)
    told: list[tuple[int, str]] = []
    clock = [0]  # the turn being sampled
    watch = MemoryWatch(state, kernel, lambda dyno, text: told.append((clock[0], text)), 4.0)
    for turn in range(8):  # two intervals of 4 turns
        clock[0] = turn
        asyncio.run(watch.sample())
    r14 = [turn for turn, text in told if text.startswith("Error R14")]
    assert r14 == [over.id % 4, over.id % 4 + 4]
