"""Apps: create, destroy, list, and their one feature (DNS service discovery in a Private
Space). The internal-routing rule is checked here, once (rules/names.check_routing)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

from dynod.api.requests import CreateApp, SetFeature
from dynod.control.admin import administrative
from dynod.control.routing import RoutePublisher
from dynod.control.spaces import SpaceService
from dynod.control.supervisor import Supervisor
from dynod.dns.registry import FEATURE, Registry
from dynod.errors import DynodError, NotFound
from dynod.logs.book import LogBook
from dynod.rules import names
from dynod.state.store import App, State


class AppService:
    def __init__(
        self,
        state: State,
        spaces: SpaceService,
        supervisor: Supervisor,
        registry: Registry,
        routes: RoutePublisher,
        log: LogBook,
        admin: asyncio.Lock,
    ) -> None:
        self.state = state
        self.spaces = spaces
        self.supervisor = supervisor
        self.registry = registry
        self.routes = routes
        self.log = log
        self.admin = admin  # shared with the spaces: see control/admin.py

    def get(self, name: str) -> App:
        names.check_app(name)
        app = self.state.app(name)
        if app is None:
            raise NotFound(f"no app named {name!r}", "`dynod apps` lists the apps")
        return app

    @administrative
    async def create(self, request: CreateApp) -> dict[str, Any]:
        name = names.check_app(request.name)
        if self.state.app_exists(name):
            raise DynodError(f"an app named {name!r} already exists", "choose another name", 409)
        space = request.space
        names.check_routing(space, request.internal_routing)
        if space:
            self.spaces.get(space)
        directory = request.dir or ""
        if directory and (not os.path.isabs(directory) or "\0" in directory):
            raise DynodError(
                f"the app's directory must be an absolute path, and it is {directory!r}",
                "give --dir an absolute path (the CLI makes a relative one absolute)",
            )
        if directory and not os.path.isdir(directory):
            raise DynodError(
                f"the app's directory {directory} does not exist (or is not a directory)",
                "give --dir the directory that holds the app's Procfile",
            )
        self.state.add_app(
            App(
                name,
                space or "",
                internal_routing=request.internal_routing,
                dns_discovery=bool(space),
                dir=os.path.normpath(directory) if directory else "",
            )
        )
        if space:
            self.registry.publish(space)  # APP.herokuapp.localspace resolves from now on
        self.routes.publish()
        return self.info(self.get(name))

    def info(self, app: App, dynos: int | None = None) -> dict[str, Any]:
        """GET /v1/apps/APP. `dynos`: its count when the caller has counted them all at once."""
        return {
            "name": app.name,
            "space": app.space or None,  # the API's Common Runtime is null
            "internal_routing": app.internal_routing,
            "features": {FEATURE: app.dns_discovery},
            "dynos": len(self.state.dynos(app.name)) if dynos is None else dynos,
            "dir": app.dir or None,
            "formation": sum(p.quantity for p in self.state.formation(app.name)),
        }

    async def info_of(self, name: str) -> dict[str, Any]:
        """One app's info, built for that app alone (NotFound if there is none)."""
        return self.info(self.get(name))

    async def infos(self) -> list[dict[str, Any]]:
        counts = Counter(d.app for d in self.state.dynos())  # one read for every app's dynos
        return [self.info(a, counts[a.name]) for a in self.state.apps()]

    @administrative
    async def destroy(self, name: str) -> dict[str, Any]:
        """Stop its dynos (until none is left: a run may race with the destroy), forget it."""
        app = self.get(name)
        stopped: list[str] = []
        self.state.clear_formation(name)  # the formation must not start what is being stopped
        while dynos := self.state.dynos(name):
            await asyncio.gather(*(self.supervisor.stop(d) for d in dynos))
            stopped += [d.name for d in dynos]
        self.state.remove_app(name)
        if app.space:
            self.registry.publish(app.space)
        self.routes.publish()
        self.log.emit(name, "dynod", f"app {name} destroyed")
        return {"stopped": stopped}

    # ---------------------------------------------------------------- features
    def _feature(self, app: App) -> dict[str, Any]:
        running = [d for d in self.state.dynos(app.name) if d.state in ("starting", "up")]
        note = (
            "DNS answers change at once; a dyno's HEROKU_DNS_* variables and IPv6 follow at "
            "its next start"
        )
        if running:
            note += f" ({len(running)} dyno(s) running: stop and run them again to apply)"
        return {
            "name": FEATURE,
            "enabled": app.dns_discovery,
            "description": "DNS service discovery: TYPE.APP.app.localspace names for the "
            "space's dynos; turns IPv6 off in the app's dynos",
            "note": note if app.space else "only apps in a Private Space can use it",
        }

    async def features(self, name: str) -> list[dict[str, Any]]:
        return [self._feature(self.get(name))]

    @administrative
    async def set_feature(self, request: SetFeature) -> dict[str, Any]:
        app = self.get(request.app)
        if request.feature != FEATURE:
            raise NotFound(f"no feature named {request.feature!r}", f"the one feature is {FEATURE}")
        if not app.space:
            raise DynodError(
                f"{request.feature} works only for apps in a Private Space; {app.name} is in "
                "the Common Runtime",
                "create the app in a space (`dynod apps:create APP --space SPACE`)",
            )
        self.state.set_dns_discovery(app.name, request.enabled)
        self.registry.publish(app.space)
        return self._feature(self.get(app.name))
