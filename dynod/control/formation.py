"""Formations: per app and process type, the Procfile's command and how many dynos run it.

The CLI reads the Procfile (the daemon, root, never reads a user's files) and sends its commands
with `ps:scale`; they are stored with the formation, so the daemon converges after a restart
without the Procfile. Converging starts the missing dynos (each gets the lowest free number, as on
Heroku) and stops the highest-numbered extra ones. Crashed dynos stay counted: the supervisor
restarts them with its backoff. Only the formation's own dynos are touched: a dyno started by
`dynod run --type X --detach` is outside it, and one-off run.N dynos are never of a formation's
type (`run` cannot be scaled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynod.api.requests import RunRequest
from dynod.config import Config
from dynod.control import launch
from dynod.control.dynos import DynoService, NewDyno
from dynod.control.supervisor import Supervisor
from dynod.errors import DynodError, NotFound
from dynod.kernel import processes
from dynod.logs.book import LogBook
from dynod.rules import formation, names, procfile, sizes
from dynod.state.store import Dyno, Process, State

CONVERGE_EVERY = 2.0  # seconds: a dyno that vanished or failed to start is replaced this soon


@dataclass(frozen=True)
class ScaleRequest:
    """PATCH /v1/apps/APP/formation: the changes, and the Procfile's commands as the CLI read
    them from `cwd` (the app's directory), with the caller's environment (PATH, LANG...)."""

    app: str
    changes: list[formation.Change]
    commands: Mapping[str, str]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    sudo_uid: int | None = None
    sudo_gid: int | None = None


class FormationService:
    def __init__(
        self,
        config: Config,
        state: State,
        dynos: DynoService,
        supervisor: Supervisor,
        log: LogBook,
    ) -> None:
        self.config = config
        self.state = state
        self.dynos = dynos
        self.supervisor = supervisor
        self.log = log
        self._locks: dict[str, asyncio.Lock] = {}
        # why starts of each (app, type) failed since its last success: each reason said once
        self._failures: dict[tuple[str, str], set[str]] = {}
        self._loop: asyncio.Task[None] | None = None

    def _lock(self, app: str) -> asyncio.Lock:
        return self._locks.setdefault(app, asyncio.Lock())

    def formation(self, app: str) -> list[dict[str, Any]]:
        self.dynos.known_app(app)
        return [p.to_json() for p in self.state.formation(app)]

    def formations(self) -> dict[str, list[dict[str, Any]]]:
        """Every app's formation, by app (`dynod ps` of all apps asks once)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for process in self.state.formations():
            found.setdefault(process.app, []).append(process.to_json())
        return found

    # ---------------------------------------------------------------- scale
    async def scale(self, request: ScaleRequest, peer_uid: int, peer_gid: int) -> list[Any]:
        """Check every change, store them all in one transaction, then converge. Nothing is
        stored when one change is refused."""
        app = request.app
        self.dynos.known_app(app)
        for change in request.changes:  # the Procfile's other types (release:...) are not ours
            formation.check_type(change.type)
        cwd = request.cwd
        who = RunRequest(app, sudo_uid=request.sudo_uid, sudo_gid=request.sudo_gid)
        uid, gid = launch.dyno_user(who, peer_uid, peer_gid, self.config.dyno_user)
        env = launch.dyno_env(request.env)
        # the PATH its dynos start with: the caller's, unless a config var sets one
        path = launch.layered(uid, env, self.state.config_vars(app), {})["PATH"]
        # From here to set_formation nothing awaits: two scales (web+1, web+1) cannot both read
        # the same quantities.
        current = {p.type: p for p in self.state.formation(app)}
        quantities = formation.apply({t: p.quantity for t, p in current.items()}, request.changes)
        problem = self.dynos.kernel.cgroups.problem
        rows: dict[str, Process] = {}
        for change in request.changes:
            ptype, old = change.type, current.get(change.type)
            quantity = quantities[ptype]
            command = request.commands.get(ptype)
            if command is None:
                # scaling down needs no Procfile: the stored command stays
                if old is None or quantity > old.quantity:  # raises: the Procfile has none
                    command = procfile.command(request.commands, ptype, cwd)
                else:
                    command = old.command
            size = sizes.choose(change.size or (old.size if old else None), problem)
            if quantity > 0:
                launch.check_can_enter(cwd, uid, gid)
                processes.check_command(command, cwd, path)
            rows[ptype] = Process(app, ptype, command, quantity, cwd, uid, gid, env, size)
        # The other types of the formation take the Procfile's commands as they are now, when
        # the caller is who they run as and reads the same directory; their user, directory and
        # environment never change here (a scale of `web` must not hand `worker` to whoever
        # asked: they would then run that caller's commands under the app's name).
        for ptype, old in current.items():
            same_owner = (old.uid, old.gid, old.cwd) == (uid, gid, cwd)
            if ptype not in rows and ptype in request.commands and same_owner:
                command = request.commands[ptype]
                rows[ptype] = Process(
                    app, ptype, command, old.quantity, old.cwd, old.uid, old.gid, old.env, old.size
                )
        self.state.set_formation(list(rows.values()))
        failed = await self.converge(app)
        if failed:
            raise DynodError(
                f"the formation is stored, but some dynos did not start: {'; '.join(failed)}",
                f"the daemon tries again every {CONVERGE_EVERY:g} s; `dynod logs --app {app}` "
                "says more",
                status=500,
            )
        return self.formation(app)

    # ---------------------------------------------------------------- converge
    async def converge(self, app: str) -> list[str]:
        """Start the missing dynos of each type and stop the highest-numbered extra ones.
        Returns why starts failed (each also logged once)."""
        async with self._lock(app):
            return await self._converge(app)

    async def _converge(self, app: str) -> list[str]:
        """converge(), under the app's lock."""
        processes_ = self.state.formation(app)
        # A dyno whose process a restart replaces (a config change's) is still one of them.
        restarting = self.supervisor.restarting
        if not restarting and self.state.formation_counts(app) == {
            p.type: p.quantity for p in processes_ if p.quantity
        }:
            return []  # nothing missing, nothing extra: no row built (every 2 s, N dynos)
        ours = [
            d
            for d in self.state.dynos(app)
            if d.formation and (d.state != "stopping" or d.id in restarting)
        ]
        extra: list[Dyno] = []
        missing: list[Process] = []
        for process in processes_:
            mine = sorted((d for d in ours if d.type == process.type), key=lambda d: d.number)
            extra += mine[process.quantity :]
            missing += [process] * max(0, process.quantity - len(mine))
        known = {p.type for p in processes_}
        extra += [d for d in ours if d.type not in known]
        await asyncio.gather(*(self.supervisor.stop(d) for d in extra))
        results = await asyncio.gather(
            *(self.dynos.create(self._new_dyno(p)) for p in missing), return_exceptions=True
        )
        failed = []
        for process, result in zip(missing, results, strict=True):
            if self._note(process, result):
                assert isinstance(result, BaseException)
                failed.append(f"{process.type}: {result}")
        return failed

    def _new_dyno(self, process: Process) -> NewDyno:
        size = process.size
        if size and self.dynos.kernel.cgroups.problem:
            size = ""  # cgroups went away since the scale: run unlimited rather than not at all
        return NewDyno(
            process.app,
            process.type,
            process.command,
            process.cwd,
            process.uid,
            process.gid,
            {},  # nothing of its own: a formation has no `run -e`
            size,
            detach=True,
            formation=True,
            inherited=process.env,  # the caller's PATH, LANG... at the last scale
        )

    def _note(self, process: Process, result: object) -> bool:
        """A start that failed is logged once (the next attempt is CONVERGE_EVERY away).
        True when it failed."""
        key = (process.app, process.type)
        if not isinstance(result, BaseException):
            self._failures.pop(key, None)
            return False
        if isinstance(result, asyncio.CancelledError):
            raise result
        text = str(result.problem if isinstance(result, DynodError) else result)
        said = self._failures.setdefault(key, set())
        if text not in said:
            said.add(text)
            self.log.emit(
                process.app, "dynod", f"formation: could not start a {process.type} dyno: {text}"
            )
        return True

    async def converge_all(self) -> None:
        for app in self.state.formation_apps():
            if self.state.app_exists(app):
                await self.converge(app)

    async def keep_converging(self) -> None:
        """At start-up (after reconcile) and every CONVERGE_EVERY seconds: what a SIGKILLed
        daemon left half-scaled is finished, and a dyno that vanished is replaced."""
        while True:
            try:
                await self.converge_all()
            except Exception as exc:  # noqa: BLE001 - keep converging
                self.log.emit(None, "dynod", f"error converging formations: {exc!r}")
            await asyncio.sleep(CONVERGE_EVERY)

    def start(self) -> None:
        self._loop = self.supervisor.background(self.keep_converging())

    async def close(self) -> None:
        """Before the daemon stops every dyno: no convergence may start them again."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    # ---------------------------------------------------------------- restart and stop
    def targets(self, app: str, target: str | None) -> list[Dyno]:
        """The app's dynos named by `target`: a dyno (web.1), a type (web), or all of them.
        Foreground dynos (`dynod run` attached, one-off run.N) are never targets of a whole
        app or a type: they belong to their terminal."""
        if target and "." in target:
            return [self.dynos.find(app, target)]
        dynos = self.dynos.of_app(app)
        found = [d for d in dynos if d.detached and (not target or d.type == target)]
        if target:
            names.check_process_type(target)
            if not found:
                raise NotFound(
                    f"no {target} dynos in app {app}", f"`dynod ps --app {app}` lists its dynos"
                )
        return found

    async def restart(self, app: str, target: str | None) -> list[str]:
        """`ps:restart`, Heroku's restart: each dyno's process ends (SIGTERM, the grace period)
        and a new one starts in its place, with the same name, namespace and address (a web
        dyno gets a new PORT, as on Heroku); a crashed one starts now. A formation dyno takes
        its type's command, directory and environment as stored now (the last scale's
        Procfile); another one keeps its own. A foreground dyno (attached to a terminal, named
        explicitly) is stopped, as before: a new process would have no terminal. Returns the
        names restarted or stopped."""
        self.targets(app, target)  # refuses a bad target at once, before waiting for the lock
        async with self._lock(app):  # no converge counts a restarting dyno as gone meanwhile
            # Chosen under the lock: a scale or stop that ran meanwhile may have removed some.
            chosen = self.targets(app, target)
            processes_ = {p.type: p for p in self.state.formation(app)}
            for dyno in chosen:
                process = processes_.get(dyno.type)
                if dyno.formation and dyno.detached and process is not None:
                    self._refresh(dyno, process)
            done = await asyncio.gather(*(self._restart_one(d) for d in chosen))
        return [d.name for d, restarted in zip(chosen, done, strict=True) if restarted]

    async def _restart_one(self, dyno: Dyno) -> bool:
        if not dyno.detached:
            await self.supervisor.stop(dyno)
            return True
        return await self.supervisor.restart(dyno, crashed=True)

    def _refresh(self, dyno: Dyno, process: Process) -> None:
        """What a new process of the formation's type starts with, on the dyno's row."""
        new = self._new_dyno(process)
        changes = {
            "command": new.command,
            "cwd": new.cwd,
            "uid": new.uid,
            "gid": new.gid,
            "env": new.env,
            "inherited": new.inherited,
            "size": new.size,
        }
        if any(getattr(dyno, key) != value for key, value in changes.items()):
            self.state.update_dyno(dyno, **changes)

    async def stop(self, app: str, target: str) -> dict[str, list[str]]:
        """`ps:stop`: as on Heroku, a dyno of the formation is started again by it (scale the
        type down to stop it for good); any other dyno stays stopped."""
        chosen = self.targets(app, target)
        async with self._lock(app):
            await asyncio.gather(*(self.supervisor.stop(d) for d in chosen))
            await self._converge(app)
        return {
            "stopped": [d.name for d in chosen],
            "replaced": [d.name for d in chosen if d.formation],
        }

    async def scale_to_zero(self, app: str) -> None:
        """`dynod stop --app APP` (every dyno): the formation goes to 0 first, or it would
        start them again."""
        self.dynos.known_app(app)
        async with self._lock(app):
            rows = self.state.formation(app)
            for row in rows:
                row.quantity = 0
            self.state.set_formation(rows)
