"""The dyno service (control/dynos.py) on the fake kernel side: run picks names, numbers and
/30s and creates an unknown app (pushing it to the router), stop and ps (no root)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from dynod.api.requests import RunRequest, StopDynos
from dynod.config import Config
from dynod.control.dynos import DynoService
from dynod.control.routing import RoutePublisher
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import Registry
from dynod.errors import DynodError, NotFound
from dynod.kernel.addressing import Pool
from dynod.kernel.fake import FakeKernel
from dynod.kernel.machine import Net
from dynod.kernel.network import Names
from dynod.logs.book import LogBook
from dynod.router.routes import RouteTable
from dynod.state.store import State
from tests.unit.control.worlds import NoDns, end_sessions


@dataclass
class AllocatingKernel(FakeKernel):
    """The fake kernel side, with what a run allocates from: names and the Common Runtime's
    /30s (a real Pool), and no cgroups."""

    names: Names = field(default_factory=lambda: Names("tstu"))
    pool: Pool = field(default_factory=lambda: Pool("172.31.0.0/24"))
    cgroups: Any = field(default_factory=lambda: SimpleNamespace(problem="no cgroups here"))

    def net(self, key: str) -> Any:
        assert key == "", "only the Common Runtime here"
        return Net("", self.names.bridge, self.pool)

    async def existing_veths(self, veths: Iterable[str]) -> set[str]:
        return set(self.links) & set(veths)


@dataclass
class World:
    state: State
    kernel: AllocatingKernel
    dynos: DynoService
    tables: list[RouteTable]


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    directory = str(tmp_path)
    state = State(os.path.join(directory, "state"))
    kernel = AllocatingKernel()
    log = LogBook(None, echo=None)
    config = Config(grace=0.5, metrics_interval=60, state_dir=directory)
    registry = Registry(state, NoDns(), lambda space: ("10.1.0.0/16", "10.1.0.1"))
    tables: list[RouteTable] = []
    routes = RoutePublisher(
        state,
        lambda space: ("10.1.0.0/16", "10.1.0.1"),
        lambda table, _changes: tables.append(table),
    )
    supervisor = Supervisor(state, kernel, log, config, registry, on_change=routes.dyno_changed)
    claim = SimpleNamespace(output_dir=directory)
    dynos = DynoService(config, claim, kernel, state, supervisor, routes)  # type: ignore[arg-type]
    yield World(state, kernel, dynos, tables)
    end_sessions(kernel)
    asyncio.run(supervisor.close())
    state.db.close()


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
