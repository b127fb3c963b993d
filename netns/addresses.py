"""Addresses, routes and neighbour entries (`ip addr`, `ip route`, `ip neigh`)."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netns import record
from netns.links import Netlink, name_of

EEXIST = 17
ENOENT = 2
ENODEV = 19  # the device itself is gone: so is whatever it held
EADDRNOTAVAIL = 99
ESRCH = 3
RTPROT_STATIC = 4  # `proto static` in `ip route`


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


def local_ipv4(ipr: IPRoute) -> set[str]:
    """`ip -4 -o addr show`: every IPv4 address of this namespace."""
    return {str(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr(family=2)}


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
