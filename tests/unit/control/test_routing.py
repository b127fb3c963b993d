"""The route table is pushed (control/routing.py): the supervisor's state changes of a web dyno
reach the router as whole new tables, on the fake kernel side (no root)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from dynod.config import Config
from dynod.control.routing import RoutePublisher
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import Registry
from dynod.kernel.fake import FakeKernel
from dynod.logs.book import LogBook
from dynod.router.routes import Backend, Refused, RouteTable
from dynod.rules import names
from dynod.state.store import App, Dyno, State
from tests.unit.control.worlds import NoDns, end_sessions, run_with, until

SPACE_NET = ("10.9.0.0/16", "10.9.0.1")


@dataclass
class Pushed:
    """What the router received: each table, with the dynos' states at that moment."""

    state: State
    tables: list[RouteTable] = field(default_factory=list)
    states: list[dict[str, str]] = field(default_factory=list)

    def update(self, table: RouteTable) -> None:
        self.tables.append(table)
        self.states.append({d.name: d.state for d in self.state.dynos()})

    def serves(self, app: str, client: str = "127.0.0.1") -> tuple[Backend, ...] | None:
        return self.tables[-1].resolve(app, client)


@dataclass
class World:
    state: State
    kernel: FakeKernel
    supervisor: Supervisor
    routes: RoutePublisher
    pushed: Pushed
    directory: str

    def dyno(self, command: str, ptype: str, port: int | None = None) -> Dyno:
        dyno_id = self.state.next_dyno_id()
        if not self.state.app_exists("app"):
            self.state.add_app(App("app"))
        return self.state.insert_dyno(
            Dyno(
                id=dyno_id,
                app="app",
                type=ptype,
                number=dyno_id,
                state="starting",
                slot=dyno_id,
                ip="127.0.0.1",  # the fake runs the process in the test's own namespace
                port=port,
                pid=None,
                pid_start=None,
                netns=f"ns-{dyno_id}",
                veth=f"veth-{dyno_id}",
                command=command,
                cwd="/",
                uid=os.getuid(),
                gid=os.getgid(),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                detached=True,
                log_path=os.path.join(self.directory, f"{dyno_id}.out"),
                created_at=time.time(),
            )
        )


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    directory = str(tmp_path)
    state = State(os.path.join(directory, "state"))
    kernel = FakeKernel()
    log = LogBook(None, echo=None)
    config = Config(grace=0.5, health_interval=0.05, metrics_interval=60)
    registry = Registry(state, NoDns(), lambda space: SPACE_NET)
    pushed = Pushed(state)
    routes = RoutePublisher(state, lambda space: SPACE_NET, pushed.update)
    supervisor = Supervisor(state, kernel, log, config, registry, on_change=routes.dyno_changed)
    yield World(state, kernel, supervisor, routes, pushed, directory)
    end_sessions(kernel)
    state.db.close()


def run(world: World, test: Callable[[], Awaitable[None]]) -> None:
    run_with(world.supervisor, test)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# A web process that binds its PORT on 127.0.0.1 and waits.
LISTEN = (
    f"exec {sys.executable} -c 'import os, socket, time; s = socket.socket(); "
    's.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(); time.sleep(60)\''
)


def test_a_web_dyno_enters_the_table_when_up_and_leaves_it_when_stopping(world: World) -> None:
    async def test() -> None:
        world.routes.publish()
        port = free_port()
        dyno = world.dyno(LISTEN, names.WEB_TYPE, port)
        world.supervisor.start_loops()
        await world.supervisor.launch(dyno, world.supervisor.networks.of(dyno))
        await until(lambda: bool(world.pushed.serves("app")))
        assert world.pushed.serves("app") == (Backend(dyno.name, "127.0.0.1", port),)
        assert world.pushed.states[-1][dyno.name] == "up"
        pushed = len(world.pushed.tables)
        await world.supervisor.stop(dyno)
        # Out of the rotation when it began stopping, before any signal; gone once forgotten.
        stopping = world.pushed.states.index({dyno.name: "stopping"}, pushed)
        assert world.pushed.tables[stopping].resolve("app", "127.0.0.1") == ()
        assert world.pushed.states[-1] == {} and world.pushed.serves("app") == ()

    run(world, test)


def test_a_worker_pushes_no_table(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("exec sleep 30", "worker")
        await world.supervisor.launch(dyno, world.supervisor.networks.of(dyno))
        await world.supervisor.stop(dyno)
        assert world.pushed.tables == []  # nothing the router reads changed

    run(world, test)


def test_a_space_is_in_the_table_only_while_open(world: World) -> None:
    world.state.add_space("acme", SPACE_NET[0], "192.0.2.1", ["203.0.113.0/24"])
    world.state.add_app(App("api", "acme"))
    world.routes.publish()
    with pytest.raises(Refused):  # not open yet: nobody is inside it
        world.pushed.serves("api", "10.9.0.6")
    world.routes.space_opened("acme")
    assert world.pushed.serves("api", "10.9.0.6") == ()  # inside: served
    assert world.pushed.serves("api", "203.0.113.9") == ()  # trusted: served
    with pytest.raises(Refused):
        world.pushed.serves("api", "198.51.100.1")
    world.routes.space_closed("acme")
    with pytest.raises(Refused):
        world.pushed.serves("api", "10.9.0.6")
