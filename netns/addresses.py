"""Addresses, routes and neighbour entries (`ip addr`, `ip route`, `ip neigh`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netns import record
from netns.links import Netlink, name_of
from netns.rtnl import (
    NUD_PERMANENT,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    RTN_LOCAL,
    RTN_UNICAST,
    RTPROT_STATIC,
    Route,
    Rtnl,
)

EEXIST = 17
ENOENT = 2
ENODEV = 19  # the device itself is gone: so is whatever it held
EADDRNOTAVAIL = 99
ESRCH = 3
# (table, type, protocol, prefix length) of add_gateway's local route
_LOCAL_GATEWAY = (RT_TABLE_LOCAL, RTN_LOCAL, RTPROT_STATIC, 32)


def add(ipr: Netlink, index: int, address: str, prefixlen: int) -> None:
    """`ip addr add ADDRESS/PREFIXLEN dev IF` (no error if it is already there)."""
    try:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise
        return
    if record.active():
        record.note("ip", "addr", "add", f"{address}/{prefixlen}", "dev", name_of(ipr, index))


def delete(ipr: Netlink, index: int, address: str, prefixlen: int) -> bool:
    """`ip addr del ADDRESS/PREFIXLEN dev IF`; False if it was not there."""
    try:
        ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code in (EADDRNOTAVAIL, ENOENT, ESRCH, ENODEV):
            return False
        raise
    if record.active():
        record.note("ip", "addr", "del", f"{address}/{prefixlen}", "dev", name_of(ipr, index))
    return True


def add_gateway(rtnl: Rtnl, index: int, gateway: str, network: str, prefixlen: int) -> None:
    """A gateway for the hosts of NETWORK/PREFIXLEN behind IF, made of two routes instead of an
    address (no error for one already there):

        ip route add local GATEWAY dev IF table local proto static src GATEWAY
        ip route add NETWORK/PREFIXLEN dev IF proto static scope link src GATEWAY

    The host takes GATEWAY as its own (it answers to it, and sends from it to that network) as
    an address would make it, but without an address: the kernel walks every IPv4 address of
    the namespace after each new one (check_lifetime, a worker on the adding thread's CPU),
    which with one gateway a dyno grew every start with the dynos running. The hosts behind IF
    must know GATEWAY's MAC from elsewhere (pin_neighbour): IF answers no ARP for it (it is not
    an address of IF's, which arp_ignore 1 and 2 ask for)."""
    for route in gateway_routes(gateway, network, prefixlen, index):
        _add(rtnl, route)


def gateway_routes(gateway: str, network: str, prefixlen: int, index: int) -> tuple[Route, Route]:
    """The two routes add_gateway makes, as a dump lists them."""
    return (
        Route(RT_TABLE_LOCAL, RTN_LOCAL, RTPROT_STATIC, gateway, 32, index, gateway),
        Route(RT_TABLE_MAIN, RTN_UNICAST, RTPROT_STATIC, network, prefixlen, index, gateway),
    )


RouteKey = tuple[int, str, int]  # (table, destination, prefix length): what a lookup meets first


def routes_by_key(routes: Iterable[Route]) -> dict[RouteKey, list[Route]]:
    """Of a listing (in the kernel's order: a prefix's routes in the order a lookup meets
    them), the routes of tos 0 to each destination of each table, in that order, whatever their
    device (a blackhole has none): the first is the one a lookup of the host's (tos 0) meets."""
    found: dict[RouteKey, list[Route]] = {}
    for route in routes:
        if route.tos == 0:
            found.setdefault(_key(route), []).append(route)
    return found


def gateway_intact(listed: dict[RouteKey, list[Route]], wanted: tuple[Route, Route]) -> bool:
    """Of routes_by_key(), is each of the gateway's routes the first to its destination, the
    one a lookup meets (not another before it: `ip route prepend`, `replace` without `src`,
    through another device)?"""
    return all(listed.get(_key(route), [])[:1] == [route] for route in wanted)


class GatewayBlocked(Exception):
    """A route before the gateway's that cannot be removed: the gateway cannot be put back."""


def put_back_gateway(
    rtnl: Rtnl, listed: dict[RouteKey, list[Route]], wanted: tuple[Route, Route]
) -> None:
    """Make add_gateway's two routes the first to their destinations again (gateway_intact), in
    as few changes as it takes: where the gateway's route is listed, the routes listed before it
    go (`ip route del`, each as listed); where it is not, those listed to its destination go
    and it is added; if the kernel still holds another there (through a device the listing did
    not cover), `ip route del DST/LEN table T` takes the first, and it is added again.
    GatewayBlocked when a route stays before it."""
    for route in wanted:
        same = listed.get(_key(route), [])  # routes_by_key()
        if same[:1] == [route]:
            continue
        for other in same[: same.index(route)] if route in same else same:
            if not delete_route(rtnl, other):  # just listed, yet not matched: it stays first
                raise GatewayBlocked(
                    f"a route to {other.dst}/{other.dst_len} in table {other.table} comes "
                    "before the gateway's and cannot be removed"
                )
        if route in same:
            continue
        if not _add(rtnl, route):
            _delete_first(rtnl, route)
            if not _add(rtnl, route):
                raise GatewayBlocked(
                    f"another route to {route.dst}/{route.dst_len} in table {route.table} "
                    "comes first and cannot be removed"
                )


def _add(rtnl: Rtnl, route: Route) -> bool:
    """`ip route add` of one of add_gateway's routes; False if one with its key is there
    (EEXIST)."""
    local = route.kind == RTN_LOCAL
    try:
        rtnl.device_route(
            "add",
            dst=route.dst,
            prefixlen=route.dst_len,
            index=route.oif,
            source=route.source,
            local=local,
        )
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise
        return False
    if record.active():
        device = name_of(rtnl, route.oif)
        table = ["table", "local"] if local else []
        kind = ["local"] if local else []
        scope = [] if local else ["scope", "link"]
        dst = route.dst if local else f"{route.dst}/{route.dst_len}"
        record.note(
            "ip", "route", "add", *kind, dst, "dev", device, *table, "proto", "static", *scope,
            "src", route.source,
        )  # fmt: skip
    return True


def _delete_first(rtnl: Rtnl, route: Route) -> None:
    """`ip route del DST/LEN table TABLE`: the first route to `route`'s destination, whatever
    it is (no error if there is none)."""
    try:
        rtnl.delete_first(route.table, route.dst, route.dst_len)
    except NetlinkError as exc:
        if exc.code in (ENOENT, ESRCH):
            return
        raise
    if record.active():
        words = [f"{route.dst}/{route.dst_len}", "table", str(route.table)]
        record.note("ip", "route", "del", *words)


def _key(route: Route) -> RouteKey:
    return (route.table, route.dst, route.dst_len)


def delete_route(rtnl: Rtnl, route: Route) -> bool:
    """`ip route del [TYPE] DST/LEN [tos TOS] ([via GATEWAY] dev IF | nhid ID) table TABLE
    proto PROTO [src SOURCE]`; False if no such route is there."""
    try:
        rtnl.delete_route(route)
    except NetlinkError as exc:
        if exc.code in (ENOENT, ESRCH, ENODEV):
            return False
        raise
    if record.active():
        words = ["local"] if route.kind == RTN_LOCAL else []
        words.append(f"{route.dst}/{route.dst_len}")
        if route.tos:
            words += ["tos", f"{route.tos:#x}"]
        if route.gateway and not route.nh_id:
            words += ["via", route.gateway]
        words += ["nhid", str(route.nh_id)] if route.nh_id else ["dev", name_of(rtnl, route.oif)]
        words += ["table", str(route.table), "proto", str(route.proto)]
        if route.source:
            words += ["src", route.source]
        record.note("ip", "route", "del", *words)
    return True


def routes_through(rtnl: Rtnl, index: int) -> list[Route] | None:
    """`ip route show table all dev IF` (Rtnl.routes_through); None: IF is gone."""
    try:
        return rtnl.routes_through(index)
    except NetlinkError as exc:
        if exc.code != ENODEV:
            raise
        return None


def delete_gateway(rtnl: Rtnl, index: int, gateway: str, network: str, prefixlen: int) -> None:
    """Undo add_gateway, whatever part of it is there:
    `ip route del NETWORK/PREFIXLEN dev IF; ip route del local GATEWAY dev IF table local`."""
    for dst, length, local in ((network, prefixlen, False), (gateway, 32, True)):
        try:
            rtnl.device_route(
                "del", dst=dst, prefixlen=length, index=index, source=gateway, local=local
            )
        except NetlinkError as exc:
            if exc.code in (ENOENT, ESRCH, ENODEV):
                continue
            raise
        if record.active():
            device = name_of(rtnl, index)
            words = (
                ["local", dst, "dev", device, "table", "local"]
                if local
                else [f"{dst}/{length}", "dev", device]
            )
            record.note("ip", "route", "del", *words)


def pin_neighbour(rtnl: Rtnl, index: int, address: str, mac: str) -> None:
    """`ip neigh replace ADDRESS lladdr MAC dev IF nud permanent`: no ARP asks for it, and no
    answer can change it."""
    rtnl.neigh("replace", ifindex=index, dst=address, lladdr=mac)
    if record.active():
        record.note(
            "ip", "neigh", "replace", address, "lladdr", mac, "dev", name_of(rtnl, index),
            "nud", "permanent",
        )  # fmt: skip


def local_gateways(routes: Iterable[Route]) -> dict[int, list[str]]:
    """Of `ip route show table all` (Rtnl.routes()), `ip route show table local type local
    proto static`'s /32s: each device's addresses taken as the host's own by a local route of
    add_gateway's (not by an address), by device index."""
    found: dict[int, list[str]] = {}
    for route in routes:
        if (route.table, route.kind, route.proto, route.dst_len) == _LOCAL_GATEWAY and route.oif:
            found.setdefault(route.oif, []).append(route.dst)
    return found


def static_sources(routes: Iterable[Route]) -> dict[int, dict[str, str]]:
    """Of `ip route show table all`, `ip route show proto static`'s (table main): each
    device's routed networks ("NETWORK/PREFIXLEN") and each one's `src` ("" where it has
    none), by device index."""
    found: dict[int, dict[str, str]] = {}
    for route in routes:
        if (
            route.table == RT_TABLE_MAIN
            and route.proto == RTPROT_STATIC
            and route.oif
            and not route.tos
        ):
            # the first listed, the one a lookup meets (another after it is not used)
            found.setdefault(route.oif, {}).setdefault(f"{route.dst}/{route.dst_len}", route.source)
    return found


def static_routes(routes: Iterable[Route], index: int) -> list[tuple[str, int, str]]:
    """Of `ip route show table all`, `ip route show dev IF proto static` (table main): each
    route's destination, prefix length and source ("" where it has none)."""
    return [
        (r.dst, r.dst_len, r.source)
        for r in routes
        if r.table == RT_TABLE_MAIN and r.proto == RTPROT_STATIC and r.oif == index
    ]


def pinned_neighbours(ipr: IPRoute, index: int) -> list[str]:
    """`ip -4 neigh show dev IF nud permanent`: the addresses of IF's permanent entries."""
    return [
        str(msg.get_attr("NDA_DST"))
        for msg in ipr.get_neighbours(family=2, ifindex=index)
        if msg["state"] & NUD_PERMANENT and msg["ifindex"] == index
    ]


def ipv4_on(ipr: IPRoute, index: int) -> list[ipaddress.IPv4Interface]:
    """`ip -4 addr show dev IF`."""
    found = []
    for msg in ipr.get_addr(family=2, index=index):
        found.append(ipaddress.IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return found


def ipv4_routes(ipr: IPRoute) -> list[tuple[ipaddress.IPv4Network, int | None]]:
    """`ip -4 route show table main`: each route's destination and output interface index."""
    found = []
    for msg in ipr.get_routes(family=2, table=254):
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        found.append((ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}"), msg.get_attr("RTA_OIF")))
    return found


def add_default_route(ipr: Netlink, gateway: str) -> None:
    """`ip route add default via GATEWAY proto static` (a route an administrator set, as
    pyroute2 marks it by default; `ip route add` alone would say `proto boot`)."""
    ipr.route("add", dst="0.0.0.0/0", gateway=gateway, proto=RTPROT_STATIC)
    record.note("ip", "route", "add", "default", "via", gateway, "proto", "static")


def forget_neighbour(ipr: Netlink, index: int, address: str) -> None:
    """`ip neigh del ADDRESS dev IF`: no stale ARP entry may answer for an address we reuse."""
    # looked up before, while the link surely exists
    device = name_of(ipr, index) if record.active() else ""
    try:
        ipr.neigh("del", ifindex=index, dst=address)
    except NetlinkError as exc:
        if exc.code not in (ENOENT, ESRCH, ENODEV):
            raise
        return
    if record.active():
        record.note("ip", "neigh", "del", address, "dev", device)


def local_ipv4(ipr: IPRoute, routes: Iterable[Route]) -> set[str]:
    """`ip -4 -o addr show`: every IPv4 address of this namespace, and every address a local
    route of add_gateway's makes its own (of `routes`, Rtnl.routes(): `ip route show table
    local type local proto static`)."""
    found = {str(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr(family=2)}
    for gateways in local_gateways(routes).values():
        found.update(gateways)
    return found


def default_source(ipr: IPRoute) -> str | None:
    """`ip route get 1.1.1.1`'s `src`: the address outbound traffic leaves from (a route
    lookup only; nothing is sent). None when there is no route out."""
    try:
        reply = ipr.route("get", dst="1.1.1.1")
    except NetlinkError:
        return None
    for msg in reply:
        source = msg.get_attr("RTA_PREFSRC")
        if source:
            return str(source)
    return None
