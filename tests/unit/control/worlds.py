"""What the control side's unit tests share: a DNS server that serves nothing, a fake kernel
that allocates, a world of services around it, running a test against a supervisor, waiting for
a condition, and ending the fake kernel's processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from dynod.config import Config
from dynod.control.dynos import DynoService
from dynod.control.routing import RoutePublisher
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import Registry
from dynod.kernel.addressing import Pool
from dynod.kernel.fake import FakeKernel
from dynod.kernel.machine import Net
from dynod.kernel.network import Names
from dynod.logs.book import LogBook
from dynod.router.routes import RouteChange, RouteTable
from dynod.state.store import Dyno, State


class NoDns:
    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None:
        pass

    def update_scope(self, scope: str, changes: dict[str, Sequence[str] | None]) -> None:
        pass

    def remove_scope(self, scope: str) -> None:
        pass


def run_with(supervisor: Supervisor, test: Callable[[], Awaitable[None]]) -> None:
    """Run the test on an event loop of its own; the supervisor's tasks end with it."""

    async def main() -> None:
        try:
            await test()
        finally:
            await supervisor.close()

    asyncio.run(main())


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def end_sessions(kernel: FakeKernel) -> None:
    """Whatever the fake's dynos left running (a test failed half-way) goes."""
    for session in kernel.started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session, 9)


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
class Services:
    """The control side around an AllocatingKernel: state, log book, config, supervisor and
    dyno service (DNS serving nothing, the router's tables handed to `update`)."""

    state: State
    kernel: AllocatingKernel
    log: LogBook
    config: Config
    supervisor: Supervisor
    dynos: DynoService


def no_update(table: RouteTable, changes: Sequence[RouteChange]) -> None:
    pass


@contextlib.contextmanager
def services(
    directory: str,
    update: Callable[[RouteTable, Sequence[RouteChange]], None] = no_update,
) -> Iterator[Services]:
    """The services over a state directory; afterwards the fake's processes end, the
    supervisor closes and so does the state."""
    state = State(os.path.join(directory, "state"))
    kernel = AllocatingKernel()
    log = LogBook(None, echo=None)
    config = Config(grace=0.5, metrics_interval=60, state_dir=directory)
    registry = Registry(state, NoDns(), lambda space: ("10.1.0.0/16", "10.1.0.1"))
    routes = RoutePublisher(state, lambda space: ("10.1.0.0/16", "10.1.0.1"), update)
    supervisor = Supervisor(state, kernel, log, config, registry, on_change=routes.dyno_changed)
    claim = SimpleNamespace(output_dir=directory)
    dynos = DynoService(config, claim, kernel, state, supervisor, routes)  # type: ignore[arg-type]
    yield Services(state, kernel, log, config, supervisor, dynos)
    end_sessions(kernel)
    asyncio.run(supervisor.close())
    state.db.close()


class RowsBuilt:
    """Counts the dyno rows the state builds (State._dyno) while installed: how tests tell a
    pass over every dyno from one over the few it needs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = State._dyno

        def counted(row: Any) -> Any:
            self.count += 1
            return real(row)

        monkeypatch.setattr(State, "_dyno", staticmethod(counted))


def stored_dyno(store: State, /, **fields: Any) -> Dyno:
    """A dyno row inserted with the next id: an `up` worker of `app` with its own /30 address,
    namespace and veth named after the id; `fields` override any of these."""
    dyno_id = store.next_dyno_id()
    row: dict[str, Any] = {
        "id": dyno_id,
        "app": "app",
        "type": "worker",
        "number": dyno_id,
        "state": "up",
        "slot": dyno_id,
        "ip": f"10.0.{dyno_id // 64}.{4 * (dyno_id % 64) + 2}",
        "port": None,
        "pid": None,
        "pid_start": None,
        "netns": f"ns-{dyno_id}",
        "veth": f"veth-{dyno_id}",
        "command": "sleep 1",
        "cwd": "/",
        "uid": os.getuid(),
        "gid": os.getgid(),
        "created_at": time.time(),
    }
    return store.insert_dyno(Dyno(**{**row, **fields}))
