"""The dyno service (control/dynos.py) on the fake kernel side: run picks names, numbers and
/30s and creates an unknown app (pushing it to the router), stop and ps (no root)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dynod.api.requests import RunRequest, StopDynos
from dynod.control.dynos import DynoService
from dynod.errors import DynodError, NotFound
from dynod.router.routes import RouteTable
from dynod.state.store import State
from tests.unit.control.worlds import AllocatingKernel, services


@dataclass
class World:
    state: State
    kernel: AllocatingKernel
    dynos: DynoService
    tables: list[RouteTable]


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    tables: list[RouteTable] = []
    with services(str(tmp_path), lambda table, _changes: tables.append(table)) as made:
        yield World(made.state, made.kernel, made.dynos, tables)


def run(request: RunRequest, world: World) -> Any:
    return world.dynos.run(request, os.getuid(), os.getgid())


def test_run_numbers_the_dynos_of_a_type_and_gives_each_its_own_slash_30(world: World) -> None:
    async def test() -> None:
        first = await run(RunRequest("sushi", "web", "sleep 30"), world)
        second = await run(RunRequest("sushi", "web", "sleep 30"), world)
        worker = await run(RunRequest("sushi", "worker", "sleep 30"), world)
        assert [d.name for d in (first, second, worker)] == ["web.1", "web.2", "worker.1"]
        assert len({first.ip, second.ip, worker.ip}) == 3
        assert first.port and second.port and worker.port is None
        assert first.netns == world.kernel.names.netns("sushi", "web", 1)
        assert world.kernel.operations(first.netns) == ["attach", "spawn"]
        # The unknown app was created, in the Common Runtime, and is known to the router.
        app = world.state.app("sushi")
        assert app is not None and app.space == ""
        assert world.tables and world.tables[-1].resolve("sushi", "198.51.100.1") == ()
        await world.dynos.stop(StopDynos("sushi"))

    asyncio.run(test())


def test_a_refused_run_allocates_nothing(world: World) -> None:
    async def test() -> None:
        with pytest.raises(DynodError):
            await run(RunRequest("sushi", "web", "no-such-program-here"), world)
        with pytest.raises(DynodError, match="cannot be enforced"):
            await run(RunRequest("sushi", "web", "sleep 30", size="standard-2x"), world)
        assert world.state.app("sushi") is None and world.state.dynos() == []
        assert world.tables == []

    asyncio.run(test())


def test_stop_find_and_ps(world: World) -> None:
    async def test() -> None:
        web = await run(RunRequest("sushi", "web", "sleep 30"), world)
        await run(RunRequest("sushi", "worker", "sleep 30"), world)
        listed = {d["name"]: d for d in world.dynos.ps("sushi")}
        assert set(listed) == {"web.1", "worker.1"}
        # No cgroups here: the dynos have no size, so no memory and no quota to show.
        assert listed["web.1"]["memory_mb"] is None and listed["web.1"]["memory_quota_mb"] is None
        assert listed["web.1"]["ip"] == web.ip
        with pytest.raises(NotFound, match="no dyno web.9 in app sushi"):
            await world.dynos.stop(StopDynos("sushi", "web.9"))
        with pytest.raises(NotFound, match="no app named 'nope'"):
            world.dynos.ps("nope")
        with pytest.raises(NotFound, match="no app named 'nope'"):
            await world.dynos.stop(StopDynos("nope", "web.1"))
        assert world.dynos.find("sushi", "web.1").id == web.id
        answer = await world.dynos.stop(StopDynos("sushi", "web.1", grace=1))
        assert answer["stopped"] == ["web.1"] and "web.1" in answer["teardown_ms"]
        assert [d.name for d in world.state.dynos()] == ["worker.1"]
        answer = await world.dynos.stop(StopDynos("sushi"))
        assert answer["stopped"] == ["worker.1"] and world.state.dynos() == []

    asyncio.run(test())
