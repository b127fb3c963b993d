"""The router's access policy as a plain value: which web dynos serve an app, to which clients.

The control side makes a new `RouteTable` whenever something the policy depends on changes (a
dyno goes up or down, an app or a space comes or goes, a space's trusted IP ranges change) and
hands it to the router with `Router.update(table)`. The router reads only the table it was last
given, per request, and never asks the state: a table is immutable, so it can be swapped between
two requests without a lock. A router worker process is sent the table once, then the changes
(`RouteChange`: one app's route, one space's ranges, one web dyno in or out) that it applies to
its copy (`RouteTable.changed`), so a dyno's start costs the same on the wire however many run.

The policy, as on Heroku:
- an app is served by its web dynos that are up and have a port, in the order given;
- an app in a Private Space with internal routing exists only for clients inside the space
  (anyone else gets "no such app");
- any other app of a space is refused (403) to clients outside both the space and its trusted
  IP ranges; a Common Runtime app is open to everyone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from dynod.rules import names, spaces
from dynod.state.store import App, Dyno

__all__ = [
    "AppChanged",
    "AppRoute",
    "Backend",
    "DynoMoved",
    "Refused",
    "Resolve",
    "RouteChange",
    "RouteTable",
    "SpaceChanged",
    "SpaceRanges",
    "change_from_wire",
    "change_to_wire",
]


@dataclass(frozen=True)
class Backend:
    dyno: str  # "web.1"
    host: str  # "172.16.0.6"
    port: int


# What the router asks per request: (app, client IP) -> the web dynos, None, or Refused.
Resolve = Callable[[str, str], Sequence[Backend] | None]


class Refused(Exception):
    """Raised by ``resolve`` when the app exists but this client may not reach it (a Private
    Space's trusted IP ranges): 403, logged with the reason."""


@dataclass(frozen=True)
class SpaceRanges:
    """A space's own range (its dynos and bridge) and the client ranges it trusts."""

    network: ipaddress.IPv4Network
    trusted: tuple[ipaddress.IPv4Network, ...]


@dataclass(frozen=True)
class AppRoute:
    backends: tuple[Backend, ...]
    space: str | None = None  # None: the Common Runtime
    internal_routing: bool = False


def backend(dyno: Dyno) -> Backend | None:
    """The dyno as the router reaches it: a web dyno that is up with a port; else None."""
    if dyno.type == names.WEB_TYPE and dyno.state == "up" and dyno.port:
        return Backend(dyno.name, dyno.ip, dyno.port)
    return None


def _number(b: Backend) -> int:
    return int(b.dyno.rsplit(".", 1)[1])


@dataclass(frozen=True)
class RouteTable:
    """App name -> route, space name -> ranges; empty by default (every app unknown)."""

    apps: Mapping[str, AppRoute] = field(default_factory=lambda: MappingProxyType({}))
    spaces: Mapping[str, SpaceRanges] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls,
        apps: Iterable[App],
        dynos: Iterable[Dyno],
        space_cidrs: Mapping[str, str],
        trusted: Mapping[str, Iterable[str | ipaddress.IPv4Network]],
    ) -> RouteTable:
        """The table for these apps and dynos. space_cidrs maps each space to its CIDR,
        trusted each space to its trusted IP ranges (a space missing there trusts nobody)."""
        serving: dict[str, list[Backend]] = {}
        for dyno in dynos:  # one pass, however many apps
            found = backend(dyno)
            if found is not None:
                serving.setdefault(dyno.app, []).append(found)
        routes = {
            app.name: AppRoute(
                tuple(serving.get(app.name, ())), app.space or None, app.internal_routing
            )
            for app in apps
        }
        ranges = {
            name: SpaceRanges(
                ipaddress.IPv4Network(cidr),
                tuple(ipaddress.IPv4Network(c) for c in trusted.get(name, ())),
            )
            for name, cidr in space_cidrs.items()
        }
        return cls(MappingProxyType(routes), MappingProxyType(ranges))

    def to_wire(self) -> dict[str, Any]:
        """The table as JSON-ready data, for the router's worker processes (`from_wire`)."""
        return {
            "apps": {name: _route_wire(route) for name, route in self.apps.items()},
            "spaces": {name: _ranges_wire(r) for name, r in self.spaces.items()},
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> RouteTable:
        apps = {name: _route_from_wire(route) for name, route in data["apps"].items()}
        ranges = {name: _ranges_from_wire(r) for name, r in data["spaces"].items()}
        return cls(MappingProxyType(apps), MappingProxyType(ranges))

    def with_dyno(self, app: str, name: str, serving: Backend | None) -> RouteTable:
        """The same table with one web dyno of an app that it has (dyno NAME) in its
        backends (serving) or out of them (None), in number order: what one dyno's change
        makes, without the whole table built again."""
        route = self.apps[app]
        others = [b for b in route.backends if b.dyno != name]
        if serving is not None:
            others.append(serving)
            others.sort(key=_number)
        routes = dict(self.apps)
        routes[app] = replace(route, backends=tuple(others))
        return RouteTable(MappingProxyType(routes), self.spaces)

    def with_route(self, app: str, route: AppRoute | None) -> RouteTable:
        """The same table with one app's route replaced (None: the app is gone)."""
        routes = dict(self.apps)
        if route is None:
            routes.pop(app, None)
        else:
            routes[app] = route
        return RouteTable(MappingProxyType(routes), self.spaces)

    def with_space(self, space: str, ranges: SpaceRanges | None) -> RouteTable:
        """The same table with one space's ranges replaced (None: the space is closed)."""
        ranges_by_space = dict(self.spaces)
        if ranges is None:
            ranges_by_space.pop(space, None)
        else:
            ranges_by_space[space] = ranges
        return RouteTable(self.apps, MappingProxyType(ranges_by_space))

    def serving(self, app: str, name: str) -> Backend | None:
        """Dyno NAME of `app` as this table routes to it; None: not in its backends."""
        route = self.apps.get(app)
        return next((b for b in route.backends if b.dyno == name), None) if route else None

    def changed(self, change: RouteChange) -> RouteTable:
        """This table after one change."""
        if isinstance(change, DynoMoved):
            return self.with_dyno(change.app, change.dyno, change.serving)
        if isinstance(change, AppChanged):
            return self.with_route(change.app, change.route)
        return self.with_space(change.space, change.ranges)

    def dropped(self, change: RouteChange) -> list[Backend]:
        """The backends this table routes to that `change` takes out."""
        if isinstance(change, DynoMoved):
            old = self.serving(change.app, change.dyno)
            return [old] if old is not None and old != change.serving else []
        if isinstance(change, AppChanged):
            route = self.apps.get(change.app)
            kept = set(change.route.backends) if change.route is not None else set()
            return [b for b in route.backends if b not in kept] if route is not None else []
        return []

    def changes_to(self, new: RouteTable) -> list[RouteChange]:
        """The changes that make `new` out of this table (one per app or space that differs),
        so that a whole new build reaches the router's workers as what moved, not all of it."""
        found: list[RouteChange] = []
        for app, route in new.apps.items():
            if self.apps.get(app) != route:
                found.append(AppChanged(app, route))
        found.extend(AppChanged(app, None) for app in self.apps if app not in new.apps)
        for space, ranges in new.spaces.items():
            if self.spaces.get(space) != ranges:
                found.append(SpaceChanged(space, ranges))
        found.extend(SpaceChanged(space, None) for space in self.spaces if space not in new.spaces)
        return found

    def resolve(self, app: str, client: str) -> tuple[Backend, ...] | None:
        """The web dynos that serve `app` to `client`; None when the app does not exist for
        this client; Refused when it exists but this client may not reach it."""
        route = self.apps.get(app)
        if route is None:
            return None
        if route.space is None:
            return route.backends
        ranges = self.spaces.get(route.space)
        # A space the table does not know (not opened yet) has no range: nobody is inside.
        inside = ranges is not None and spaces.allows([ranges.network], client)
        if inside:
            return route.backends
        if route.internal_routing:
            return None
        if ranges is None or not spaces.allows(ranges.trusted, client):
            raise Refused(f"{client} is not in the trusted IP ranges of space {route.space}")
        return route.backends


@dataclass(frozen=True)
class AppChanged:
    """An app's route, whole (None: the app is gone)."""

    app: str
    route: AppRoute | None


@dataclass(frozen=True)
class SpaceChanged:
    """A space's ranges (None: the space is closed)."""

    space: str
    ranges: SpaceRanges | None


@dataclass(frozen=True)
class DynoMoved:
    """One web dyno of an app in its backends (serving) or out of them (None)."""

    app: str
    dyno: str
    serving: Backend | None


# One step from a table to the next: what the daemon pushes to the router's workers per change
# (router/wire.py); a worker that (re)starts gets the whole table instead.
RouteChange = AppChanged | SpaceChanged | DynoMoved


def change_to_wire(change: RouteChange) -> list[Any]:
    """A change as JSON-ready data (`change_from_wire`)."""
    if isinstance(change, DynoMoved):
        serving = change.serving
        return ["dyno", change.app, change.dyno, _backend_wire(serving) if serving else None]
    if isinstance(change, AppChanged):
        return ["app", change.app, _route_wire(change.route) if change.route else None]
    ranges = change.ranges
    return ["space", change.space, _ranges_wire(ranges) if ranges else None]


def change_from_wire(data: Sequence[Any]) -> RouteChange:
    kind = data[0]
    if kind == "dyno":
        _, app, dyno, serving = data
        return DynoMoved(app, dyno, _backend_from_wire(serving) if serving else None)
    if kind == "app":
        _, app, route = data
        return AppChanged(app, _route_from_wire(route) if route is not None else None)
    if kind == "space":
        _, space, ranges = data
        return SpaceChanged(space, _ranges_from_wire(ranges) if ranges is not None else None)
    raise ValueError(f"unknown route change {kind!r}")


def _backend_wire(b: Backend) -> list[Any]:
    return [b.dyno, b.host, b.port]


def _backend_from_wire(data: Sequence[Any]) -> Backend:
    name, host, port = data
    return Backend(str(name), str(host), int(port))


def _route_wire(route: AppRoute) -> list[Any]:
    return [[_backend_wire(b) for b in route.backends], route.space, route.internal_routing]


def _route_from_wire(data: Sequence[Any]) -> AppRoute:
    backends, space, internal = data
    return AppRoute(tuple(_backend_from_wire(b) for b in backends), space, internal)


def _ranges_wire(ranges: SpaceRanges) -> list[Any]:
    return [str(ranges.network), [str(t) for t in ranges.trusted]]


def _ranges_from_wire(data: Sequence[Any]) -> SpaceRanges:
    network, trusted = data
    return SpaceRanges(
        ipaddress.IPv4Network(network), tuple(ipaddress.IPv4Network(t) for t in trusted)
    )
