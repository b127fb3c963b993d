"""A fake daemon with the daemon's method names, behind the real ApiServer on a temporary socket,
and the CLI pointed at it: the CLI and API unit tests check routes, body checks and the CLI's
output with it, not what the daemon does (the root integration tests do that)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from click.testing import CliRunner, Result

from dynod.api.endpoints import Services
from dynod.api.requests import (
    CreateApp,
    CreateSpace,
    RunRequest,
    SetFeature,
    StopDynos,
    TrustedRange,
)
from dynod.cli.main import main
from dynod.errors import DynodError, NotFound
from dynod.rules import names

# ---------------------------------------------------------------- CLI refusals before the daemon

NO_DAEMON = ["--socket", "/nonexistent/dynod.sock"]


def cli(*args: str, socket_path: str | None = None) -> Result:
    where = ["--socket", socket_path] if socket_path else NO_DAEMON
    return CliRunner().invoke(main, [*where, *args])


def refused(result: Result, problem: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"error: {problem}" in result.stderr, result.stderr
    assert "fix: " in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- API and CLI over a fake daemon

DNS = "spaces-dns-discovery"


class FakeDaemon:
    """The daemon's Private Spaces methods over dicts (no kernel, no checks beyond names)."""

    def __init__(self) -> None:
        self.spaces: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _space(self, name: str) -> dict[str, Any]:
        if name not in self.spaces:
            raise NotFound(f"no space named {name!r}", "`dynod spaces` lists the spaces")
        return self.spaces[name]

    def _app(self, name: str) -> dict[str, Any]:
        if name not in self.apps:
            raise NotFound(f"no app named {name!r}", "`dynod apps` lists the apps")
        return self.apps[name]

    async def create_space(self, name: str, cidr: str | None, nat_ip: str | None) -> dict:
        self.calls.append(("create_space", name, cidr, nat_ip))
        names.check_space(name)
        n = len(self.spaces) + 1
        cidr = names.check_space_cidr(cidr) if cidr else f"10.{n}.0.0/16"
        bridge = cidr.split("/")[0][:-1] + "1"
        self.spaces[name] = {
            "name": name,
            "cidr": cidr,
            "bridge": f"dynods{n}",
            "dns": bridge,
            "router": f"{bridge}:80",
            "nat_ip": nat_ip or "192.0.2.10",
            "trusted_ips": ["0.0.0.0/0"],
        }
        return (await self.spaces_info())[-1]

    async def spaces_info(self) -> list[dict]:
        return [
            s | {"apps": sorted(a for a, x in self.apps.items() if x["space"] == s["name"])}
            for s in self.spaces.values()
        ]

    async def destroy_space(self, name: str) -> None:
        self._space(name)
        if any(a["space"] == name for a in self.apps.values()):
            raise DynodError(f"space {name} has apps", "destroy them first", status=409)
        del self.spaces[name]

    async def create_app(self, name: str, space: str | None, internal_routing: bool) -> dict:
        self.calls.append(("create_app", name, space, internal_routing))
        if space is not None:
            self._space(space)
        self.apps[name] = {
            "name": name,
            "space": space,
            "internal_routing": internal_routing,
            "features": {DNS: space is not None},
            "dynos": 0,
        }
        return self.apps[name]

    async def destroy_app(self, name: str) -> dict:
        self._app(name)
        del self.apps[name]
        return {"stopped": ["web.1", "worker.1"] if name == "busy" else []}

    async def apps_info(self) -> list[dict]:
        return list(self.apps.values())

    async def features(self, app: str) -> list[dict]:
        on = self._app(app)["features"][DNS]
        return [{"name": DNS, "enabled": on, "description": "DNS names for the space's dynos"}]

    async def set_feature(self, app: str, feature: str, enabled: bool) -> dict:
        self.calls.append(("set_feature", app, feature, enabled))
        if feature != DNS:
            raise NotFound(f"no feature {feature!r}", f"`dynod features --app {app}` lists them")
        self._app(app)["features"][DNS] = enabled
        return {"name": DNS, "enabled": enabled, "note": "DNS answers change now."}

    async def trusted_ips(self, space: str) -> list[str]:
        return list(self._space(space)["trusted_ips"])

    async def add_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self.calls.append(("add_trusted_ip", space, cidr))
        self._space(space)["trusted_ips"].append(names.check_cidr(cidr))
        return await self.trusted_ips(space)

    async def remove_trusted_ip(self, space: str, cidr: str) -> list[str]:
        self.calls.append(("remove_trusted_ip", space, cidr))
        ranges = self._space(space)["trusted_ips"]
        if cidr not in ranges:
            raise NotFound(f"{space} does not trust {cidr}", "`dynod trusted-ips` lists them")
        ranges.remove(cidr)
        return await self.trusted_ips(space)


class FakeApi:
    def __init__(self, path: str, daemon: FakeDaemon) -> None:
        self.path = path
        self.daemon = daemon

    def cli(self, *args: str) -> Result:
        return cli(*args, socket_path=self.path)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("localhost")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        conn.sock = sock
        conn.request(method, path, body=body)
        response = conn.getresponse()
        answer = response.status, json.loads(response.read())
        conn.close()
        return answer


def ok(result: Result) -> list[str]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.splitlines()


class RunDaemon(FakeDaemon):
    """Refuses every run after recording it: the tests check what reaches the daemon."""

    async def run_dyno(self, request: RunRequest, uid: int, gid: int) -> Any:
        self.calls.append(("run_dyno", request))
        raise DynodError("fake daemon: not running dynos", "")


# ---------------------------------------------------------------- the services over a fake daemon


class _Spaces:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon

    async def create(self, r: CreateSpace) -> dict:
        return await self.d.create_space(r.name, r.cidr, r.nat_ip)

    async def infos(self) -> list[dict]:
        return await self.d.spaces_info()

    async def info_of(self, name: str) -> dict:
        self.d._space(name)  # NotFound
        return next(s for s in await self.d.spaces_info() if s["name"] == name)

    async def destroy(self, name: str) -> None:
        await self.d.destroy_space(name)

    async def trusted(self, space: str) -> list[str]:
        return await self.d.trusted_ips(space)

    async def trust(self, r: TrustedRange) -> list[str]:
        return await self.d.add_trusted_ip(r.space, r.cidr)

    async def distrust(self, r: TrustedRange) -> list[str]:
        return await self.d.remove_trusted_ip(r.space, r.cidr)


class _Apps:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon

    async def create(self, r: CreateApp) -> dict:
        return await self.d.create_app(r.name, r.space, r.internal_routing)

    async def infos(self) -> list[dict]:
        return await self.d.apps_info()

    async def info_of(self, name: str) -> dict:
        return dict(self.d._app(name))  # NotFound

    async def destroy(self, name: str) -> dict:
        return await self.d.destroy_app(name)

    async def features(self, app: str) -> list[dict]:
        return await self.d.features(app)

    async def set_feature(self, r: SetFeature) -> dict:
        return await self.d.set_feature(r.app, r.feature, r.enabled)


class _Dynos:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon

    async def run(self, request: RunRequest, uid: int, gid: int) -> Any:
        return await self.d.run_dyno(request, uid, gid)

    def of_app(self, app: str) -> list[Any]:
        return self.d.app_dynos(app)

    def ps(self, app: str | None = None) -> list[dict]:
        return [d.to_json() for d in self.of_app(app)] if app else []

    async def stop(self, r: StopDynos) -> dict:
        dynos = [self.d.find(r.app, r.dyno)] if r.dyno else self.of_app(r.app)
        return {"stopped": [d.name for d in dynos], "teardown_ms": {}}


class _Config:
    """Config vars over a dict per app (the real service: tests/unit/control/test_configvars.py)."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.vars: dict[str, dict[str, str]] = {}
        self.version: dict[str, int] = {}

    def _app(self, app: str) -> dict[str, str]:
        if app not in self.d.apps:
            raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")
        return self.vars.setdefault(app, {})

    def get(self, app: str) -> dict:
        return {"vars": dict(self._app(app)), "version": self.version.get(app, 1)}

    async def change(self, app: str, changes: dict[str, str | None]) -> dict:
        found = self._app(app)
        for name, value in changes.items():
            if value is None:
                found.pop(name, None)
            else:
                found[name] = value
        self.version[app] = self.version.get(app, 1) + 1
        self.d.calls.append(("config", app, changes))
        return {"vars": dict(found), "version": self.version[app], "restarted": []}


def services(daemon: Any) -> Services:
    """The API's services, each a thin adapter over the fake daemon's methods."""
    return Services(  # type: ignore[arg-type]
        _Spaces(daemon),
        _Apps(daemon),
        _Dynos(daemon),
        None,
        None,
        None,
        _Config(daemon),
        None,
        getattr(daemon, "formation_service", None),  # a daemon of a test that needs one
    )
