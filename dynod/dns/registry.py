"""DNS service discovery: which names each space's dynos can resolve, kept in step with the dynos.

A dyno is *registered* once its network exists and before its process starts, and unregistered
the moment it starts stopping or crashes, before its address can be reused (podman#13983: a
container nobody can resolve for seconds). Every change rebuilds the records of that one space
and hands them to the DNS server, which swaps them in for the very next query: there is no
refresh interval (Heroku's registry converges in about 10 s; dynod's has no delay).

Names, all scoped to the asker's space and answered with TTL 0:

    TYPE.APP.app.localspace       every registered dyno of that type (apps with discovery on)
    N.TYPE.APP.app.localspace     dyno N
    APP.herokuapp.localspace      the space's internal router, for every app of the space
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dynod.state.store import Dyno, State

DOMAIN = "app.localspace"
ROUTER_DOMAIN = "herokuapp.localspace"
FEATURE = "spaces-dns-discovery"
MAX_LABEL = 63  # a DNS label's limit: longer process types get no names


class Server(Protocol):
    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None: ...
    def remove_scope(self, scope: str) -> None: ...


def formation_name(app: str, ptype: str) -> str:
    return f"{ptype.lower()}.{app}.{DOMAIN}"


def dyno_name(app: str, ptype: str, number: int) -> str:
    return f"{number}.{formation_name(app, ptype)}"


def app_name(app: str) -> str:
    return f"{app}.{DOMAIN}"


def router_name(app: str) -> str:
    return f"{app}.{ROUTER_DOMAIN}"


def dns_env(dyno: Dyno) -> dict[str, str]:
    """The variables Heroku sets in dynos of apps with discovery on."""
    return {
        "HEROKU_DNS_FORMATION_NAME": formation_name(dyno.app, dyno.type),
        "HEROKU_DNS_DYNO_NAME": dyno_name(dyno.app, dyno.type, dyno.number),
        "HEROKU_DNS_APP_NAME": app_name(dyno.app),
    }


class Registry:
    """The registered dynos of every space, and the records they make."""

    def __init__(
        self, state: State, server: Server, network_of: Callable[[str], tuple[str, str]]
    ) -> None:
        """network_of(space) gives the space's (CIDR, bridge address)."""
        self.state = state
        self.server = server
        self.network_of = network_of
        self._dynos: dict[str, dict[int, Dyno]] = {}

    def register(self, dyno: Dyno) -> None:
        if not dyno.space:
            return  # Common Runtime dynos have no names
        self._dynos.setdefault(dyno.space, {})[dyno.id] = dyno
        self.publish(dyno.space)

    def unregister(self, dyno: Dyno) -> None:
        if dyno.space and self._dynos.get(dyno.space, {}).pop(dyno.id, None) is not None:
            self.publish(dyno.space)

    def publish(self, space: str) -> None:
        """Rebuild the space's records from the state and the registered dynos."""
        cidr, _ = self.network_of(space)
        self.server.set_scope(space, cidr, self.records(space))

    def forget_space(self, space: str) -> None:
        self._dynos.pop(space, None)
        self.server.remove_scope(space)

    def records(self, space: str) -> dict[str, list[str]]:
        _, router_address = self.network_of(space)
        apps = {app.name: app for app in self.state.apps_in(space)}
        records = {router_name(name): [router_address] for name in apps}
        dynos = sorted(self._dynos.get(space, {}).values(), key=lambda d: (d.app, d.type, d.number))
        for dyno in dynos:
            app = apps.get(dyno.app)
            if app is None or not app.dns_discovery or len(dyno.type) > MAX_LABEL:
                continue
            records.setdefault(formation_name(dyno.app, dyno.type), []).append(dyno.ip)
            records[dyno_name(dyno.app, dyno.type, dyno.number)] = [dyno.ip]
        return records
