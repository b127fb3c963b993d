"""Private Spaces: create, destroy, list, open at start-up, and their trusted IP ranges.

A space is its bridge and firewall entries (the kernel side), its DNS listener and names, and
its internal router; opening one makes all of them or none. Every rule about a space's range,
NAT address and trusted ranges is checked here (with rules/spaces.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from typing import Any

from dynod.api.requests import CreateSpace, TrustedRange
from dynod.control.admin import administrative
from dynod.control.networks import Networks
from dynod.control.routing import RoutePublisher
from dynod.dns.registry import Registry
from dynod.dns.server import DnsServer
from dynod.errors import DynodError, NotFound
from dynod.kernel.host import Kernel
from dynod.logs.book import LogBook
from dynod.router.workers import AnyRouter
from dynod.rules import names, spaces
from dynod.rules.names import DNS_PORT, INTERNAL_ROUTER_PORT
from dynod.state.store import Space, State


class SpaceService:
    def __init__(
        self,
        state: State,
        kernel: Kernel,
        dns: DnsServer,
        registry: Registry,
        router: AnyRouter,
        routes: RoutePublisher,
        log: LogBook,
        upstreams: list[tuple[str, int]],
        admin: asyncio.Lock,
        networks: Networks,
    ) -> None:
        self.state = state
        self.kernel = kernel
        self.dns = dns
        self.registry = registry
        self.router = router
        self.routes = routes
        self.log = log
        self.upstreams = upstreams  # a space's range must not hide a DNS resolver
        self.admin = admin
        self.networks = networks  # the live dynos' network facts, for the firewall

    # ---------------------------------------------------------------- open and close
    async def open_all(self) -> None:
        """At start-up, every space of the state. A failure undoes nothing: the daemon stops
        and leaves the spaces' running dynos their network, for the next start to adopt; the
        firewall is applied once, after reconcile, so the tables a killed daemon left stay
        whole (and correct) until then."""
        for space in self.state.spaces():
            await self._open(space, starting=True)

    async def _open(self, space: Space, starting: bool = False) -> None:
        """The space's bridge, firewall entries, DNS and internal router; all or nothing for a
        new space."""
        net = await self.kernel.add_space(
            space.name,
            space.id,
            space.cidr,
            space.nat_ip,
            None if starting else self.networks.live(),
        )
        try:
            self.dns.listen(net.address, DNS_PORT)
            self.registry.publish(space.name)
            await self.router.listen(net.address, INTERNAL_ROUTER_PORT)
        except BaseException:
            if not starting:
                await self._close(space.name)
            raise
        self.routes.space_opened(space.name)

    async def _close(self, name: str) -> None:
        """The kernel side first: if it fails, the space still works as before."""
        net = self.kernel.spaces.get(name)
        if net is None:
            return
        await self.kernel.remove_space(name, self.networks.live())
        await self.router.unlisten(net.address)
        self.registry.forget_space(name)
        self.dns.unlisten(net.address)
        self.routes.space_closed(name)

    # ---------------------------------------------------------------- create, destroy, list
    def get(self, name: str) -> Space:
        names.check_space(name)
        space = self.state.space(name)
        if space is None:
            raise NotFound(f"no space named {name!r}", "`dynod spaces` lists the spaces")
        return space

    @administrative
    async def create(self, request: CreateSpace) -> dict[str, Any]:
        name = names.check_space(request.name)
        if self.state.space(name) is not None:
            raise DynodError(
                f"a space named {name!r} already exists", "choose another name", status=409
            )
        in_use = self._ranges_in_use()
        if request.cidr is None:
            routed = await self.kernel.routed_ranges()
            network = spaces.next_free_range([*in_use.values(), *routed])
        else:
            network = ipaddress.IPv4Network(names.check_space_cidr(request.cidr))
            spaces.check_range_free(network, in_use)
            await self.kernel.check_range(str(network))
        nat_ip = await self._nat_address(request.nat_ip, [*in_use.values(), network])
        space = self.state.add_space(name, str(network), nat_ip, [spaces.EVERYWHERE])
        try:
            await self._open(space)
        except BaseException:
            self.state.remove_space(name)
            raise
        self.log.emit(None, "dynod", f"space {name} created: {network}, NAT address {nat_ip}")
        return self.info(space)

    def _ranges_in_use(self) -> dict[str, ipaddress.IPv4Network]:
        """What a new space's range must not overlap, each with what it is."""
        in_use = {f"space {s.name}": ipaddress.IPv4Network(s.cidr) for s in self.state.spaces()}
        in_use["the Common Runtime range"] = self.kernel.pool.network
        for host, _ in self.upstreams:
            with contextlib.suppress(ValueError):
                in_use[f"the DNS resolver {host}"] = ipaddress.IPv4Network(host)
        return in_use

    async def _nat_address(self, given: str | None, ranges: list[ipaddress.IPv4Network]) -> str:
        """The given NAT address, checked, or the host's default source address."""
        if given is not None:
            nat_ip = names.check_nat_ip(given)
            local = await self.kernel.local_addresses()
            spaces.check_nat_address(nat_ip, local, [str(n) for n in ranges])
            return nat_ip
        found = await self.kernel.default_source()
        if found is None:
            raise DynodError(
                "this host has no default route, so there is no address for the space's "
                "outbound traffic to leave from",
                "give one of the host's addresses with --nat-ip",
            )
        return found

    def info(self, space: Space) -> dict[str, Any]:
        net = self.kernel.net(space.name)
        return {
            "name": space.name,
            "cidr": space.cidr,
            "bridge": net.bridge,
            "dns": net.address,
            "router": f"{net.address}:{INTERNAL_ROUTER_PORT}",
            "nat_ip": space.nat_ip,
            "apps": [a.name for a in self.state.apps_in(space.name)],
            "trusted_ips": self.state.trusted_ips(space.name),
        }

    async def info_of(self, name: str) -> dict[str, Any]:
        """One space's info, built for that space alone (NotFound if there is none)."""
        return self.info(self.get(name))

    async def infos(self) -> list[dict[str, Any]]:
        return [self.info(s) for s in self.state.spaces()]

    @administrative
    async def destroy(self, name: str) -> None:
        self.get(name)
        apps = [a.name for a in self.state.apps_in(name)]
        if apps:
            raise DynodError(
                f"space {name} still has apps: {', '.join(apps)}",
                "destroy them first (`dynod apps:destroy APP`)",
                status=409,
            )
        await self._close(name)
        self.state.remove_space(name)
        self.log.emit(None, "dynod", f"space {name} destroyed")

    # ---------------------------------------------------------------- trusted IP ranges
    async def trusted(self, space: str) -> list[str]:
        self.get(space)
        return self.state.trusted_ips(space)

    async def trust(self, request: TrustedRange) -> list[str]:
        self.get(request.space)
        cidr = names.check_cidr(request.cidr, "trusted IP range")
        spaces.check_can_add_trusted(self.state.trusted_ips(request.space), cidr)
        self.state.add_trusted_ip(request.space, cidr)
        self.routes.publish()
        return self.state.trusted_ips(request.space)

    async def distrust(self, request: TrustedRange) -> list[str]:
        self.get(request.space)
        cidr = names.check_cidr(request.cidr, "trusted IP range")
        if not self.state.remove_trusted_ip(request.space, cidr):
            raise NotFound(
                f"{cidr} is not a trusted IP range of space {request.space}",
                f"`dynod trusted-ips --space {request.space}` lists them",
            )
        self.routes.publish()
        return self.state.trusted_ips(request.space)
