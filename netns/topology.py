"""Read-only listings of what the kernel holds: links with their bridge-port flags, FDB entries,
addresses, routes, a namespace's own view, and nftables sets. Nothing here changes anything; each
function is the `ip`/`bridge`/`nft` command a person would type to look.

Every function takes the IPRoute (or Nft) to use, as links.py's do; `inside()` opens its own
socket in the namespace, on the calling thread (the kernel worker's).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from netns import namespace
from netns.links import NUD_NOARP
from netns.nftables import Nft, NftError

NUD_PERMANENT = 0x80  # the bridge's own addresses (`permanent`)


@dataclass(frozen=True)
class PortFlags:
    """`bridge -d link show dev PORT`: the flags that matter for isolation."""

    isolated: bool
    learning: bool
    flood: bool  # unknown-unicast flooding


@dataclass(frozen=True)
class Link:
    """One line of `ip -d link show`."""

    name: str
    index: int
    kind: str  # "bridge", "veth", ... or "" for a link with no kind (lo, a physical one)
    mac: str
    up: bool
    master: int | None  # the bridge it is a port of
    peer: int | None  # a veth's peer ifindex (in the peer's namespace): IFLA_LINK
    port: PortFlags | None  # set when it is a bridge port


@dataclass(frozen=True)
class FdbEntry:
    """One line of `bridge fdb show br BRIDGE` that is not the bridge's own or multicast."""

    mac: str
    port: int  # the port's ifindex
    static: bool


@dataclass(frozen=True)
class Route:
    """One line of `ip -4 route show`."""

    dst: str  # "default" or a CIDR
    gateway: str | None
    dev: int | None


@dataclass
class Namespace:
    """`ip -n NS -d link show; ip -n NS -4 addr show; ip -n NS -4 route show`."""

    links: list[Link] = field(default_factory=list)
    addresses: dict[int, list[str]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)


def _flag(attrs: dict[str, Any], name: str) -> bool:
    return bool(attrs.get(name, 0))


def links(ipr: IPRoute) -> list[Link]:
    """`ip -d link show`: every link of the socket's namespace, with bridge-port flags."""
    found = []
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind, port = "", None
        if info is not None:
            kind = info.get_attr("IFLA_INFO_KIND") or ""
            slave = info.get_attr("IFLA_INFO_SLAVE_DATA")
            if info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge" and slave is not None:
                attrs = dict(slave["attrs"])
                port = PortFlags(
                    isolated=_flag(attrs, "IFLA_BRPORT_ISOLATED"),
                    learning=_flag(attrs, "IFLA_BRPORT_LEARNING"),
                    flood=_flag(attrs, "IFLA_BRPORT_UNICAST_FLOOD"),
                )
        found.append(
            Link(
                name=msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}",
                index=msg["index"],
                kind=kind,
                mac=msg.get_attr("IFLA_ADDRESS") or "",
                up=msg.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN"),
                master=msg.get_attr("IFLA_MASTER"),
                peer=msg.get_attr("IFLA_LINK") if kind == "veth" else None,
                port=port,
            )
        )
    return found


def fdb(ipr: IPRoute, bridge_index: int) -> list[FdbEntry]:
    """`bridge fdb show br BRIDGE`, without the bridge's own (permanent) entries and without
    multicast ones: what the bridge knows of where each MAC is."""
    found = []
    for msg in ipr.fdb("dump"):
        if msg.get_attr("NDA_MASTER") != bridge_index or msg["state"] & NUD_PERMANENT:
            continue
        mac = msg.get_attr("NDA_LLADDR") or ""
        if int(mac.split(":")[0] or "0", 16) & 1:
            continue  # a group address
        found.append(FdbEntry(mac, msg["ifindex"], bool(msg["state"] & NUD_NOARP)))
    return found


def ipv4_addresses(ipr: IPRoute) -> dict[int, list[str]]:
    """`ip -4 addr show`: each ifindex's addresses as ADDRESS/PREFIXLEN."""
    found: dict[int, list[str]] = {}
    for msg in ipr.get_addr(family=2):
        found.setdefault(msg["index"], []).append(
            f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
        )
    return found


def ipv4_routes(ipr: IPRoute) -> list[Route]:
    """`ip -4 route show table main`."""
    found = []
    for msg in ipr.get_routes(family=2, table=254):
        dst = msg.get_attr("RTA_DST")
        text = "default" if not msg["dst_len"] else f"{dst}/{msg['dst_len']}"
        if dst and msg["dst_len"]:
            text = str(ipaddress.IPv4Network(text, strict=False))
        found.append(Route(text, msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF")))
    return found


def inside(name: str) -> Namespace:
    """`ip -n NAME -d link show; ip -n NAME -4 addr; ip -n NAME -4 route` (the thread enters
    the namespace only for the listing, and comes back)."""
    with namespace.entered(name):
        ipr = IPRoute()
        try:
            return Namespace(links(ipr), ipv4_addresses(ipr), ipv4_routes(ipr))
        finally:
            ipr.close()


def nft_sets(nft: Nft, family: str, table: str) -> dict[str, list[Any]] | None:
    """`nft -j list table FAMILY TABLE`: each set's and map's elements as nft's JSON shows them
    (a concatenation is {"concat": [...]}, a map element [key, value]); None: no such table."""
    try:
        listing = json.loads(nft.run(f"list table {family} {table}", as_json=True))
    except NftError:
        return None
    found: dict[str, list[Any]] = {}
    for item in listing["nftables"]:
        for kind in ("set", "map"):
            if kind in item:
                found[item[kind]["name"]] = list(item[kind].get("elem", []))
    return found
