"""Memory sampling (control/memory.py, every 20 s) builds the row of a dyno only when it has
something to say about it (R14, R15): the same work with 20 quiet sized dynos (or unsized ones)
beside it as with 200."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dynod.control.memory import MemoryWatch
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
        watch = MemoryWatch(state, kernel, lambda dyno, text: told.append((dyno.name, text)))
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
        watch = MemoryWatch(state, FakeKernel(), lambda dyno, text: told.append((dyno.name, text)))

        async def no_thread(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a thread was started with nothing to read")

        monkeypatch.setattr("dynod.control.memory.asyncio.to_thread", no_thread)
        asyncio.run(watch.sample())
        assert told == []
    finally:
        state.db.close()
