"""A converge with nothing to do (every 2 s, control/formation.py) builds no dyno row: its cost
is one counting query, the same for a formation of 5 dynos as of 50."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.control.test_formation import World, names, scale
from tests.unit.control.test_formation import world as world  # noqa: F401 - the fixture
from tests.unit.control.worlds import RowsBuilt


def rows_built_by_idle_converges(world: World, size: int, monkeypatch: pytest.MonkeyPatch) -> int:
    built: list[RowsBuilt] = []

    async def test() -> None:
        await scale(world, f"web={size}")
        assert len(names(world)) == size
        built.append(RowsBuilt(monkeypatch))
        for _ in range(3):
            assert await world.formation.converge("sushi") == []
        monkeypatch.undo()

    asyncio.run(test())
    return built[0].count


@pytest.mark.parametrize("size", [5, 50])
def test_an_idle_converge_builds_no_row(
    world: World, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every converge built each of the app's dyno rows (15 and 150 here)."""
    assert rows_built_by_idle_converges(world, size, monkeypatch) == 0


def test_a_converge_still_replaces_a_dyno_that_went(world: World) -> None:
    async def test() -> None:
        await scale(world, "web=3")
        (web2,) = [d for d in world.state.dynos("sushi") if d.name == "web.2"]
        await world.formation.supervisor.stop(web2)  # not by a scale: the formation says 3
        assert names(world) == ["web.1", "web.3"]
        await world.formation.converge("sushi")
        assert names(world) == ["web.1", "web.2", "web.3"]

    asyncio.run(test())
