"""Dynos: run, stop, find, list. The checks of a run request (names, user, command, size) are
made here, before anything is allocated; the lifecycle itself is the supervisor's."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynod.api.requests import RunRequest, StopDynos
from dynod.claim import Claim
from dynod.config import Config
from dynod.control import launch, networks
from dynod.control.routing import RoutePublisher
from dynod.control.supervisor import Supervisor
from dynod.errors import NotFound
from dynod.kernel import processes, stdio
from dynod.kernel.host import Kernel
from dynod.kernel.stdio import DaemonEnds, DynoEnds
from dynod.rules import names, sizes
from dynod.state.store import App, Dyno, State


@dataclass(frozen=True)
class NewDyno:
    """A dyno to create, every part of it checked: its user, directory and command."""

    app: str
    type: str
    command: str
    cwd: str
    uid: int
    gid: int
    env: Mapping[str, str]  # its own (`run -e`): over the config vars
    size: str
    detach: bool = True
    formation: bool = False  # the formation's: it may stop or replace it
    number: int | None = None  # its number when free (a restart keeps the name), else the lowest
    attached: DynoEnds | None = None  # a one-off's terminal or pipes, relayed to its caller
    inherited: Mapping[str, str] = field(default_factory=dict)  # the caller's PATH...: under them


def known_app(state: State, app: str) -> str:
    """`app`, or NotFound unless it exists (a look-up by its key: not a list of its dynos)."""
    names.check_app(app)
    if not state.app_exists(app):
        raise NotFound(
            f"no app named {app!r}",
            f"create it first (`dynod apps:create {app}`); `dynod apps` lists the apps",
        )
    return app


class DynoService:
    def __init__(
        self,
        config: Config,
        claim: Claim,
        kernel: Kernel,
        state: State,
        supervisor: Supervisor,
        routes: RoutePublisher,
    ) -> None:
        self.config = config
        self.claim = claim
        self.kernel = kernel
        self.names = kernel.names
        self.state = state
        self.supervisor = supervisor
        self.routes = routes

    async def run_attached(
        self, request: RunRequest, peer_uid: int, peer_gid: int
    ) -> tuple[Dyno, DaemonEnds]:
        """A one-off dyno run.N on a new pseudo-terminal (request.tty) or pipes: the dyno and
        the daemon's ends of its standard streams, for the caller to relay."""
        ours, theirs = stdio.terminal(request.rows, request.cols) if request.tty else stdio.pipes()
        try:
            dyno = await self.run(request, peer_uid, peer_gid, theirs)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return dyno, ours

    async def run(
        self,
        request: RunRequest,
        peer_uid: int,
        peer_gid: int,
        attached: DynoEnds | None = None,
    ) -> Dyno:
        app = names.check_app(request.app)
        ptype = names.ONE_OFF_TYPE if attached else names.check_process_type(request.type)
        command = request.command
        cwd = os.path.abspath(request.cwd)
        uid, gid = launch.dyno_user(request, peer_uid, peer_gid, self.config.dyno_user)
        env = launch.dyno_env(request.env)
        inherited = launch.dyno_env(request.inherited)
        size = sizes.choose(request.size, self.kernel.cgroups.problem)
        launch.check_can_enter(cwd, uid, gid)
        config = self.state.config_vars(app)
        path = launch.layered(uid, inherited, config, env)["PATH"]  # the PATH it will start with
        processes.check_command(command, cwd, path)
        return await self.create(
            NewDyno(
                app,
                ptype,
                command,
                cwd,
                uid,
                gid,
                env,
                size,
                request.detach,
                attached=attached,
                inherited=inherited,
            )
        )

    async def create(self, new: NewDyno) -> Dyno:
        """Allocate and launch a dyno whose request was checked (run's, or the formation's)."""
        app, ptype, cwd, attached = new.app, new.type, new.cwd, new.attached
        await self.sweep_draining()
        # From here to insert_dyno nothing awaits, so concurrent runs cannot pick the same
        # number or /30; an unknown app is created (in the Common Runtime) only once its first
        # dyno has a /30, with the caller's directory as its own (where its Procfile is).
        known = self.state.app(app)
        space = known.space if known is not None else ""
        number = new.number
        if number is None or self.state.number_taken(app, ptype, number):
            number = self._lowest_free_number(app, ptype)
        net = self.kernel.net(space)
        dense = self.state.dense_slots(space)  # slots 1..dense in use: no list to read
        if dense is None:
            subnet = net.pool.allocate(self.state.slots_unavailable(space))
        else:
            subnet = net.pool.allocate((), start=dense + 1)
        if known is None:
            self.state.add_app(App(app, dir=cwd))
        dyno_id = self.state.next_dyno_id()
        # one-offs get no PORT (nor a web element: the router never sends them requests)
        port = launch.choose_port() if ptype == names.WEB_TYPE and not attached else None
        # the dyno's network, computed once here and handed down whole
        network = networks.allocated(
            self.names.netns(app, ptype, number),
            self.names.veth(dyno_id),
            net,
            subnet,
            ptype,
            port,
        )
        dyno = self.state.insert_dyno(
            Dyno(
                id=dyno_id,
                app=app,
                type=ptype,
                number=number,
                state="starting",
                slot=subnet.slot,
                ip=network.address,
                port=port,
                pid=None,
                pid_start=None,
                netns=network.netns,
                veth=network.veth,
                command=new.command,
                cwd=cwd,
                uid=new.uid,
                gid=new.gid,
                env=dict(new.env),
                inherited=dict(new.inherited),
                detached=new.detach,
                log_path=os.path.join(self.claim.output_dir, f"{dyno_id}.out"),
                created_at=time.time(),
                space=space,
                size=new.size,
                formation=new.formation,
            )
        )
        if known is None:
            self.routes.publish()  # the new app exists for the router (with no web dyno yet)
        if attached is not None:
            self.supervisor.stdio[dyno.id] = attached
        await self.supervisor.launch(dyno, network)
        return dyno

    def _lowest_free_number(self, app: str, ptype: str) -> int:
        """The lowest free number of the type: N+1 when 1..N are taken (from the state's index,
        whatever N), else from the list of the numbers taken."""
        dense = self.state.dense_numbers(app, ptype)
        if dense is not None:
            return dense + 1
        return names.lowest_free_number(self.state.numbers_taken(app, ptype))

    async def sweep_draining(self) -> None:
        """A drained /30 is free again once the kernel has destroyed its dyno's veth."""
        draining = self.state.draining()
        if not draining:
            return
        present = await self.kernel.existing_veths(draining.values())
        self.state.drained([key for key, veth in draining.items() if veth not in present])

    # ---------------------------------------------------------------- stopping
    async def stop(self, request: StopDynos) -> dict[str, Any]:
        """One dyno, or every dyno of the app; with each one's kernel teardown time."""
        one = request.dyno
        dynos = [self.find(request.app, one)] if one else self.of_app(request.app)
        await asyncio.gather(*(self.supervisor.stop(d, request.grace) for d in dynos))
        timings = {d.name: self.supervisor.timings.pop(d.id, {}).get("teardown_ms") for d in dynos}
        return {"stopped": [d.name for d in dynos], "teardown_ms": timings}

    def stop_later(self, dyno: Dyno) -> None:
        """Stop a dyno in the background if it still exists (its client went away)."""
        if self.state.dyno(dyno.id) is not None:
            self.supervisor.background(self.supervisor.stop(dyno))

    async def wait_exit(self, dyno: Dyno) -> int | None:
        return await self.supervisor.wait_exit(dyno)

    def timings(self, dyno: Dyno) -> dict[str, float]:
        """The kernel-side cost of the dyno's setup (what `dynod run --detach` shows)."""
        return self.supervisor.timings.get(dyno.id, {})

    # ---------------------------------------------------------------- queries
    def find(self, app: str, dyno_name: str) -> Dyno:
        ptype, number = names.parse_dyno_name(dyno_name)
        self.known_app(app)  # by key: each stop of one of N dynos used to load all N
        dyno = self.state.find_dyno(app, ptype, number)
        if dyno is None:
            raise NotFound(
                f"no dyno {dyno_name} in app {app}", f"`dynod ps --app {app}` lists its dynos"
            )
        return dyno

    def of_app(self, app: str) -> list[Dyno]:
        """The app's dynos; NotFound when there is no such app."""
        self.known_app(app)
        return self.state.dynos(app)

    def known_app(self, app: str) -> str:
        return known_app(self.state, app)

    def ps(self, app: str | None = None) -> list[dict[str, Any]]:
        """What `dynod ps` shows: every dyno (of the app when given), with its memory."""
        dynos = self.of_app(app) if app else self.state.dynos()
        return [d.to_json() | self.memory(d) for d in dynos]

    def memory(self, dyno: Dyno) -> dict[str, Any]:
        """What `dynod ps` shows of a dyno's size: its memory now and its quota, in MB."""
        usage = self.supervisor.memory.usage(dyno)
        size = sizes.SIZES.get(dyno.size)
        return {
            "memory_mb": None if usage is None else round(usage.memory / sizes.MB, 1),
            "memory_quota_mb": size.quota_mb if size else None,
        }
