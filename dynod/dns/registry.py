"""DNS service discovery: which names each space's dynos can resolve, kept in step with the dynos.

A dyno is *registered* once its network exists and before its process starts, and unregistered
the moment it starts stopping or crashes, before its address can be reused (podman#13983: a
container nobody can resolve for seconds). A dyno's start or stop changes two names (its own and
its formation's), and only those go to the DNS server (`update_scope`), which swaps them in for
the very next query: there is no refresh interval (Heroku's registry converges in about 10 s;
dynod's has no delay), and the cost does not grow with the space's other dynos.  A change of the
apps (a new app, discovery turned on) rebuilds the space's records whole (`publish`).

Names, all scoped to the asker's space and answered with TTL 0:

    TYPE.APP.app.localspace       every registered dyno of that type (apps with discovery on)
    N.TYPE.APP.app.localspace     dyno N
    APP.herokuapp.localspace      the space's internal router, for every app of the space
"""

from __future__ import annotations

import bisect
import itertools
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from dynod.dns.zone import PackedAddresses
from dynod.state.store import Dyno, State

DOMAIN = "app.localspace"
ROUTER_DOMAIN = "herokuapp.localspace"
FEATURE = "spaces-dns-discovery"
MAX_LABEL = 63  # a DNS label's limit: longer process types get no names


class Server(Protocol):
    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None: ...
    def update_scope(self, scope: str, changes: dict[str, Sequence[str] | None]) -> None: ...
    def remove_scope(self, scope: str) -> None: ...


# One registered dyno in its formation's list: the order of `Registry.records` (process type,
# number, then who registered first), and the address.
_Member = tuple[str, int, int, int, str]  # type, number, order of registration, id, address


class _Members:
    """The registered dynos of one name, in `records` order, with their addresses alongside,
    packed: a change finds its place by bisection and hands the server the addresses as one
    copy of `packed` (PackedAddresses), never touching each member's string."""

    __slots__ = ("keys", "packed")

    def __init__(self) -> None:
        self.keys: list[_Member] = []
        self.packed = bytearray()

    def add(self, member: _Member, address: bytes) -> None:
        """`address` is member's, packed."""
        at = bisect.bisect(self.keys, member)
        self.keys.insert(at, member)
        self.packed[4 * at : 4 * at] = address

    def remove(self, member: _Member) -> None:
        at = bisect.bisect_left(self.keys, member)  # members differ in their id: this one
        del self.keys[at]
        del self.packed[4 * at : 4 * at + 4]

    def addresses(self) -> PackedAddresses:
        return PackedAddresses(bytes(self.packed))

    def last(self) -> str:
        return self.keys[-1][4]

    def __bool__(self) -> bool:
        return bool(self.keys)


def _packed(address: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except OSError:
        raise ValueError(f"not an IPv4 address: {address!r}") from None


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
        # space -> formation name -> its registered dynos in the order of `records`: a dyno's
        # change recomputes its formation's addresses, not the space's.
        self._formations: dict[str, dict[str, _Members]] = {}
        # The same by dyno name (N.TYPE.APP...): two dynos share one while one replaces the
        # other, and types differing only in case share their names.
        self._named: dict[str, dict[str, _Members]] = {}
        self._member: dict[int, _Member] = {}  # dyno id -> its entry in both
        self._order = itertools.count()
        self._published: set[str] = set()

    def register(self, dyno: Dyno) -> None:
        """ValueError for an address that is not IPv4 (nothing changes then; a dyno's address
        comes from its network's pool, which has none)."""
        if not dyno.space:
            return  # Common Runtime dynos have no names
        address = _packed(dyno.ip)
        registered = self._dynos.setdefault(dyno.space, {})
        previous = registered.get(dyno.id)
        if previous is not None:
            if previous == dyno:
                return
            order = self._order_of(previous)
            self._leave(previous)
        else:
            order = next(self._order)
        registered[dyno.id] = dyno
        member = self._member[dyno.id] = (dyno.type, dyno.number, order, dyno.id, dyno.ip)
        for index, name in self._names_of(dyno):
            names = index.setdefault(dyno.space, {})
            members = names.get(name)
            if members is None:
                members = names[name] = _Members()
            members.add(member, address)
        self._changed(dyno if previous is None else previous, dyno)

    def unregister(self, dyno: Dyno) -> None:
        if not dyno.space:
            return
        previous = self._dynos.get(dyno.space, {}).pop(dyno.id, None)
        if previous is not None:
            self._leave(previous)
            self._changed(previous, previous)

    def publish(self, space: str) -> None:
        """Rebuild the space's records from the state and the registered dynos."""
        cidr, _ = self.network_of(space)
        self.server.set_scope(space, cidr, self.records(space))
        self._published.add(space)

    def forget_space(self, space: str) -> None:
        for dyno_id in self._dynos.pop(space, {}):
            self._member.pop(dyno_id, None)
        self._formations.pop(space, None)
        self._named.pop(space, None)
        self._published.discard(space)
        self.server.remove_scope(space)

    def _names_of(self, dyno: Dyno) -> tuple[tuple[dict[str, dict[str, _Members]], str], ...]:
        return (
            (self._formations, formation_name(dyno.app, dyno.type)),
            (self._named, dyno_name(dyno.app, dyno.type, dyno.number)),
        )

    def _leave(self, dyno: Dyno) -> None:
        member = self._member.pop(dyno.id)
        for index, name in self._names_of(dyno):
            members = index[dyno.space][name]
            members.remove(member)
            if not members:
                del index[dyno.space][name]

    def _order_of(self, dyno: Dyno) -> int:
        """When a dyno re-registered with new facts: its place among equals is kept, as the
        dict of registered dynos (which `records` sorts, stably) keeps it."""
        return self._member[dyno.id][2]

    def _changed(self, old: Dyno, new: Dyno) -> None:
        """Send the server the names of `old` and `new` (the same dyno before and after) as
        `records` would now make them."""
        space = new.space
        if space not in self._published:
            self.publish(space)  # the first names of a space: all of them
            return
        apps = {name: self.state.app(name) for name in {old.app, new.app}}
        changes: dict[str, Sequence[str] | None] = {}
        for dyno in (new,) if old is new else (old, new):
            app = apps[dyno.app]
            if app is None or app.space != space or not app.dns_discovery:
                continue
            if len(dyno.type) > MAX_LABEL:
                continue
            formation = formation_name(dyno.app, dyno.type)
            members = self._formations[space].get(formation)
            changes[formation] = members.addresses() if members else None
            name = dyno_name(dyno.app, dyno.type, dyno.number)
            named = self._named[space].get(name)
            changes[name] = [named.last()] if named else None  # records: the last wins
        if changes:
            self.server.update_scope(space, changes)

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
