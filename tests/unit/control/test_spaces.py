"""The space and app services (control/spaces.py, control/apps.py) over fakes of the kernel's
space side, DNS and the router: their rules, and the route tables they push (no root)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from dynod.api.requests import CreateApp, CreateSpace, SetFeature, TrustedRange
from dynod.control.apps import AppService
from dynod.control.networks import Networks
from dynod.control.routing import RoutePublisher
from dynod.control.spaces import SpaceService
from dynod.dns.registry import Registry
from dynod.errors import DynodError, NotFound
from dynod.logs.book import LogBook
from dynod.router.routes import Refused, RouteTable
from dynod.state.store import Dyno, State

HOST = "192.0.2.10"  # the host's one address, and its default source


@dataclass
class SpaceKernel:
    """The space side of the kernel, in memory: bridges are names, the host routes nothing."""

    spaces: dict[str, Any] = field(default_factory=dict)
    pool: Any = field(
        default_factory=lambda: SimpleNamespace(network=ipaddress.IPv4Network("172.16.0.0/20"))
    )
    fail: str = ""  # a reason to refuse the next add_space with
    removed: list[str] = field(default_factory=list)

    async def add_space(
        self, key: str, space_id: int, cidr: str, nat_ip: str, live: Iterable[Dyno] | None
    ) -> Any:
        if self.fail:
            raise DynodError(self.fail, "")
        gateway = str(ipaddress.IPv4Network(cidr).network_address + 1)
        self.spaces[key] = SimpleNamespace(bridge=f"br{space_id}", address=gateway, cidr=cidr)
        return self.spaces[key]

    async def remove_space(self, key: str, live: Iterable[Dyno]) -> None:
        self.removed.append(key)
        del self.spaces[key]

    def net(self, key: str) -> Any:
        return self.spaces[key]

    def space_network(self, key: str) -> tuple[str, str]:
        return self.spaces[key].cidr, self.spaces[key].address

    async def routed_ranges(self) -> list[ipaddress.IPv4Network]:
        return []

    async def check_range(self, cidr: str) -> None:
        pass

    async def local_addresses(self) -> set[str]:
        return {HOST}

    async def default_source(self) -> str | None:
        return HOST


class Listeners:
    """The DNS server and the router: which addresses they listen on; DNS scopes."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.scopes: dict[str, dict[str, list[str]]] = {}

    def listen(self, host: str, port: int) -> None:
        self.addresses.add(host)

    def unlisten(self, host: str) -> None:
        self.addresses.discard(host)

    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None:
        self.scopes[scope] = records

    def update_scope(self, scope: str, changes: dict[str, Sequence[str] | None]) -> None:
        records = self.scopes[scope]
        for name, addresses in changes.items():
            if addresses is None:
                records.pop(name, None)
            else:
                records[name] = list(addresses)

    def remove_scope(self, scope: str) -> None:
        self.scopes.pop(scope, None)


class Router(Listeners):
    async def listen(self, host: str, port: int) -> None:  # type: ignore[override]
        self.addresses.add(host)

    async def unlisten(self, host: str) -> None:  # type: ignore[override]
        self.addresses.discard(host)


class NoSupervisor:
    async def stop(self, dyno: Dyno, grace: float | None = None) -> None:
        raise AssertionError("no dyno runs in these tests")


@dataclass
class World:
    state: State
    kernel: SpaceKernel
    dns: Listeners
    router: Router
    spaces: SpaceService
    apps: AppService
    tables: list[RouteTable]

    def serves(self, app: str, client: str) -> Any:
        return self.tables[-1].resolve(app, client)


@pytest.fixture
def world(tmp_path: object) -> Iterator[World]:
    state = State(os.path.join(str(tmp_path), "state"))
    kernel, dns, router = SpaceKernel(), Listeners(), Router()
    tables: list[RouteTable] = []
    routes = RoutePublisher(
        state, kernel.space_network, lambda table, _changes: tables.append(table)
    )
    fake: Any = SimpleNamespace(kernel=kernel, dns=dns, router=router)  # typed as the real ones
    registry = Registry(state, fake.dns, kernel.space_network)
    log = LogBook(None, echo=None)
    admin = asyncio.Lock()
    resolvers = [("10.9.0.53", 53)]
    spaces = SpaceService(
        state,
        fake.kernel,
        fake.dns,
        registry,
        fake.router,
        routes,
        log,
        resolvers,
        admin,
        Networks(state, fake.kernel),
    )
    apps = AppService(state, spaces, NoSupervisor(), registry, routes, log, admin)  # type: ignore[arg-type]
    yield World(state, kernel, dns, router, spaces, apps, tables)
    state.db.close()


def test_a_created_space_is_opened_and_in_the_route_table(world: World) -> None:
    async def test() -> None:
        info = await world.spaces.create(CreateSpace("acme", "10.7.0.0/16"))
        assert (info["cidr"], info["dns"], info["nat_ip"]) == ("10.7.0.0/16", "10.7.0.1", HOST)
        assert info["router"] == "10.7.0.1:80" and info["trusted_ips"] == ["0.0.0.0/0"]
        assert "10.7.0.1" in world.dns.addresses and "10.7.0.1" in world.router.addresses
        await world.apps.create(CreateApp("api", "acme", internal_routing=True))
        assert world.serves("api", "10.7.0.6") == ()  # from inside: the app exists
        assert world.serves("api", "198.51.100.1") is None  # internal: nobody else sees it
        await world.apps.destroy("api")
        await world.spaces.destroy("acme")
        assert world.kernel.removed == ["acme"] and not world.dns.addresses
        assert not world.router.addresses and world.tables[-1].spaces == {}
        assert world.state.space("acme") is None

    asyncio.run(test())


def test_a_space_the_kernel_refuses_is_not_kept(world: World) -> None:
    async def test() -> None:
        world.kernel.fail = "no bridge today"
        with pytest.raises(DynodError, match="no bridge today"):
            await world.spaces.create(CreateSpace("acme"))
        assert world.state.space("acme") is None and world.tables == []

    asyncio.run(test())


def test_a_range_that_overlaps_is_refused_with_what_it_overlaps(world: World) -> None:
    async def test() -> None:
        await world.spaces.create(CreateSpace("acme", "10.7.0.0/16"))
        for cidr, what in (
            ("10.7.0.0/16", "space acme"),
            ("172.16.0.0/16", "Common Runtime"),
            ("10.9.0.0/16", "DNS resolver 10.9.0.53"),
        ):
            with pytest.raises(DynodError, match=what):
                await world.spaces.create(CreateSpace("other", cidr))
        with pytest.raises(DynodError) as err:
            await world.spaces.create(CreateSpace("acme"))
        assert err.value.status == 409

    asyncio.run(test())


def test_trusted_ranges_changed_push_a_new_table(world: World) -> None:
    async def test() -> None:
        await world.spaces.create(CreateSpace("acme", "10.7.0.0/16"))
        await world.apps.create(CreateApp("api", "acme"))
        assert world.serves("api", "198.51.100.1") == ()  # 0.0.0.0/0: everyone is trusted
        await world.spaces.trust(TrustedRange("acme", "203.0.113.0/24"))
        assert await world.spaces.distrust(TrustedRange("acme", "0.0.0.0/0")) == ["203.0.113.0/24"]
        with pytest.raises(Refused):
            world.serves("api", "198.51.100.1")
        assert world.serves("api", "203.0.113.9") == ()
        with pytest.raises(NotFound):
            await world.spaces.distrust(TrustedRange("acme", "0.0.0.0/0"))

    asyncio.run(test())


def test_the_app_rules_are_the_services(world: World) -> None:
    async def test() -> None:
        with pytest.raises(DynodError, match="internal routing exists only in Private Spaces"):
            await world.apps.create(CreateApp("api", None, internal_routing=True))
        with pytest.raises(NotFound, match="no space named 'nowhere'"):
            await world.apps.create(CreateApp("api", "nowhere"))
        await world.apps.create(CreateApp("web"))
        assert world.serves("web", "198.51.100.1") == ()  # Common Runtime: open to all
        with pytest.raises(DynodError, match="works only for apps in a Private Space"):
            await world.apps.set_feature(SetFeature("web", "spaces-dns-discovery", True))
        with pytest.raises(DynodError) as err:
            await world.apps.create(CreateApp("web"))
        assert err.value.status == 409
        await world.apps.destroy("web")
        assert world.serves("web", "198.51.100.1") is None

    asyncio.run(test())


def test_a_space_with_apps_is_not_destroyed(world: World) -> None:
    async def test() -> None:
        await world.spaces.create(CreateSpace("acme", "10.7.0.0/16"))
        await world.apps.create(CreateApp("api", "acme"))
        with pytest.raises(DynodError, match="still has apps: api") as err:
            await world.spaces.destroy("acme")
        assert err.value.status == 409 and world.kernel.spaces

    asyncio.run(test())


def test_one_app_s_or_space_s_info_reads_that_one_alone(world: World) -> None:
    """GET /v1/apps/APP and /v1/spaces/NAME build one entry; the lists count every app's dynos
    in one read, not one per app."""

    async def test() -> None:
        await world.spaces.create(CreateSpace("acme", "10.7.0.0/16"))
        await world.spaces.create(CreateSpace("beta", "10.8.0.0/16"))
        for n in range(5):
            await world.apps.create(CreateApp(f"app{n}", "acme" if n % 2 else None))
        reads: list[str | None] = []
        dynos, formation = world.state.dynos, world.state.formation

        def counted_dynos(app: str | None = None) -> list[Any]:
            reads.append(app)
            return dynos(app)

        def counted_formation(app: str) -> list[Any]:
            reads.append(f"formation {app}")
            return formation(app)

        world.state.dynos = counted_dynos  # type: ignore[method-assign]
        world.state.formation = counted_formation  # type: ignore[method-assign]
        info = await world.apps.info_of("app3")
        assert info["name"] == "app3" and info["space"] == "acme" and info["dynos"] == 0
        assert reads == ["app3", "formation app3"]
        reads.clear()
        listed = await world.apps.infos()
        assert [a["name"] for a in listed] == [f"app{n}" for n in range(5)]
        assert reads == [None] + [f"formation app{n}" for n in range(5)]  # one read of dynos
        with pytest.raises(NotFound, match="no app named 'nope'"):
            await world.apps.info_of("nope")
        space = await world.spaces.info_of("acme")
        assert space["apps"] == ["app1", "app3"] and space["cidr"] == "10.7.0.0/16"
        with pytest.raises(NotFound, match="no space named 'nope'"):
            await world.spaces.info_of("nope")

    asyncio.run(test())
