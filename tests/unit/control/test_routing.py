"""The route table is pushed (control/routing.py): the supervisor's state changes of a web dyno
reach the router as new tables with what changed (the router's worker processes are sent only
that), on the fake kernel side (no root)."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from dynod.config import Config
from dynod.control.routing import RoutePublisher
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import Registry
from dynod.kernel.fake import FakeKernel
from dynod.logs.book import LogBook
from dynod.router.routes import Backend, Refused, RouteChange, RouteTable
from dynod.router.wire import changes_frame, routed
from dynod.rules import names
from dynod.state.store import App, Dyno, State
from tests.unit.control.worlds import NoDns, end_sessions, run_with, stored_dyno, until

SPACE_NET = ("10.9.0.0/16", "10.9.0.1")


@dataclass
class Pushed:
    """What the router received: each table, with the dynos' states at that moment."""

    state: State
    tables: list[RouteTable] = field(default_factory=list)
    states: list[dict[str, str]] = field(default_factory=list)

    worker: RouteTable = field(default_factory=RouteTable)  # a router worker's, from the wire

    def update(self, table: RouteTable, changes: Sequence[RouteChange]) -> None:
        assert changes  # a push that changes nothing is not made
        self.tables.append(table)
        self.states.append({d.name: d.state for d in self.state.dynos()})
        # What a worker process does with the frame it is sent (router/worker.py).
        frame = changes_frame(changes)
        new = routed(self.worker, json.loads(frame[4:]))
        assert new is not None
        self.worker = new[0]

    def serves(self, app: str, client: str = "127.0.0.1") -> tuple[Backend, ...] | None:
        return (self.tables[-1] if self.tables else RouteTable()).resolve(app, client)


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
        # Forgotten after stopping moves nothing the router reads: no push.
        assert world.state.dynos() == [] and len(world.pushed.tables) == stopping + 1
        assert world.pushed.serves("app") == () and world.pushed.worker == world.pushed.tables[-1]

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


def test_a_dyno_that_starts_again_after_crashing_pushes_nothing_until_up(world: World) -> None:
    world.routes.publish()
    dyno = world.dyno("true", names.WEB_TYPE, 5000)
    world.routes.dyno_changed(dyno)  # starting: not serving, as before
    for state in ("crashed", "starting"):
        world.state.update_dyno(dyno, state=state)
        world.routes.dyno_changed(dyno)
    assert len(world.pushed.tables) == 1  # only publish()'s (the app was new)
    world.state.update_dyno(dyno, state="up")
    world.routes.dyno_changed(dyno)
    assert world.pushed.serves("app") == (Backend(dyno.name, "127.0.0.1", 5000),)
    assert world.pushed.worker == world.pushed.tables[-1]


def _truth(world: World, opened: set[str]) -> RouteTable:
    """The table a whole build from the state gives now."""
    spaces = [s.name for s in world.state.spaces() if s.name in opened]
    return RouteTable.build(
        world.state.apps(),
        world.state.dynos(),
        {name: SPACE_NET[0] for name in spaces},
        {name: world.state.trusted_ips(name) for name in spaces},
    )


def _random_dyno(world: World, rnd: random.Random, app: str) -> Dyno:
    dyno_id = world.state.next_dyno_id()
    return stored_dyno(
        world.state,
        app=app,
        type=rnd.choice([names.WEB_TYPE, names.WEB_TYPE, "worker"]),
        state=rnd.choice(["starting", "up"]),
        ip=f"10.9.{dyno_id // 256}.{dyno_id % 256}",
        port=rnd.choice([None, 5000, 5001]),
        command="true",
        uid=0,
        gid=0,
        env={},
        detached=True,
        log_path="/dev/null",
        created_at=0.0,
    )


@pytest.mark.parametrize("seed", range(8))
def test_a_worker_fed_only_changes_routes_by_the_daemon_s_table(world: World, seed: int) -> None:
    """Random sequences of what moves the table (dynos in every state, forgotten, apps, spaces,
    trusted ranges): after each push, the table a worker rebuilt from the frames alone equals
    the daemon's, and the daemon's equals a whole build from the state."""
    rnd = random.Random(seed)
    world.state.add_space("acme", SPACE_NET[0], "192.0.2.1", [])
    opened: set[str] = set()
    apps = ["a", "b", "c"]
    for step in range(300):
        action = rnd.random()
        app = rnd.choice(apps)
        dynos = world.state.dynos()
        if action < 0.1:
            if world.state.app_exists(app):
                if not world.state.dynos(app):
                    world.state.remove_app(app)
            else:
                space = rnd.choice(["", "acme"])
                world.state.add_app(App(app, space, internal_routing=rnd.random() < 0.3))
            world.routes.publish()
        elif action < 0.15:
            if "acme" in opened:
                opened.discard("acme")
                world.routes.space_closed("acme")
            else:
                opened.add("acme")
                world.routes.space_opened("acme")
        elif action < 0.2:
            cidr = rnd.choice(["203.0.113.0/24", "198.51.100.0/24"])
            if not world.state.remove_trusted_ip("acme", cidr):
                world.state.add_trusted_ip("acme", cidr)
            world.routes.publish()
        elif action < 0.45 and world.state.app_exists(app):
            world.routes.dyno_changed(_random_dyno(world, rnd, app))
        elif action < 0.85 and dynos:
            dyno = rnd.choice(dynos)
            state = rnd.choice(["starting", "up", "crashed", "stopping", "up"])
            world.state.update_dyno(dyno, state=state, port=rnd.choice([dyno.port, 5002]))
            world.routes.dyno_changed(dyno)
        elif dynos:
            dyno = rnd.choice(dynos)
            world.state.remove_dyno(dyno)
            world.routes.dyno_changed(dyno)
        if world.pushed.tables:
            assert world.pushed.worker == world.pushed.tables[-1], f"step {step}"
            assert world.pushed.tables[-1] == _truth(world, opened), f"step {step}"
