"""Config vars: an app's variables, kept in the root-only state, seen by its dynos at each start.

A change is a new release (vN) and restarts the app's running process dynos, as on Heroku, so
every one of them runs with the same config. One-off dynos (`run` in the foreground) keep the
environment they started with, as `heroku run` dynos do.

Values are secrets: they go to the state and to the dyno's stdin, never to a log or an error
message. Names may be logged (Heroku's release log says "Set A, B config vars")."""

from __future__ import annotations

import asyncio
from typing import Any

from dynod.control.dynos import known_app
from dynod.control.supervisor import Supervisor
from dynod.errors import DynodError
from dynod.logs.book import LogBook
from dynod.rules import configvars
from dynod.rules.configvars import check_changes
from dynod.state.store import State

MAX_VALUE = 32 * 1024  # Heroku's limit on all of an app's config vars together (32 kB)


class ConfigService:
    def __init__(self, state: State, supervisor: Supervisor, log: LogBook) -> None:
        self.state = state
        self.supervisor = supervisor
        self.log = log

    def _app(self, app: str) -> str:
        return known_app(self.state, app)

    def get(self, app: str) -> dict[str, Any]:
        app = self._app(app)
        return {"vars": self.state.config_vars(app), "version": self.state.release(app)}

    async def change(self, app: str, changes: dict[str, str | None]) -> dict[str, Any]:
        """Set (a string) and unset (None) vars: one release, then the running process dynos
        restart. Every check is made before anything is stored."""
        app = self._app(app)
        check_changes(changes)
        current = self.state.config_vars(app)
        after = {k: v for k, v in (current | changes).items() if v is not None}
        if configvars.size(after) > MAX_VALUE:
            raise DynodError(
                f"{app}'s config vars would take over {MAX_VALUE // 1024} kB",
                "keep large data out of config vars (store a URL or a path instead)",
                status=413,
            )
        version = self.state.change_config(app, changes)
        self.log.emit(app, "app[api]", _description(changes))
        self.log.emit(app, "app[api]", f"Release v{version} created")
        restarted = await self._restart(app)
        return {"vars": after, "version": version, "restarted": restarted}

    async def _restart(self, app: str) -> list[str]:
        """Exactly this app's running process dynos; a crashed one gets the new config at its
        next restart anyway."""
        running = [d for d in self.state.dynos(app) if d.detached and d.state in ("starting", "up")]
        done = await asyncio.gather(*(self.supervisor.restart(d) for d in running))
        return [d.name for d, was in zip(running, done, strict=True) if was]


def _description(changes: dict[str, str | None]) -> str:
    """Heroku's release description: `Set A, B config vars`, `Unset C config vars`."""
    parts = []
    set_names = [k for k, v in changes.items() if v is not None]
    unset_names = [k for k, v in changes.items() if v is None]
    if set_names:
        parts.append(f"Set {', '.join(set_names)} config vars")
    if unset_names:
        parts.append(f"Unset {', '.join(unset_names)} config vars")
    return "; ".join(parts)
