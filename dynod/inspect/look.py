"""What the kernel holds right now, read on the kernel worker's thread: the host's links (with
bridge-port flags), addresses, routes and FDB entries, the namespaces with the daemon's prefix,
the view from inside the ones asked for, and the elements of dynod's nftables sets. As a person
would look:

    ip -d link show; ip -4 addr show; ip -4 route show table all; bridge fdb show br BRIDGE
    ip netns list | grep PREFIX-
    ip -n NETNS -d link show; ip -n NETNS -4 addr show; ip -n NETNS -4 route show
    nft -j list table bridge PREFIX; nft -j list table inet PREFIX

Nothing here changes anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from netns import addresses, namespace, topology
from netns.nftables import Nft
from netns.rtnl import Route, Rtnl

FAMILIES = ("bridge", "inet")


@dataclass
class Look:
    links: list[topology.Link] = field(default_factory=list)
    addresses: dict[int, list[str]] = field(default_factory=dict)
    # the dynos' gateways: addresses a local route makes the host's, by device (no address)
    gateways: dict[int, list[str]] = field(default_factory=dict)
    # every static route of the main table ("NETWORK/PREFIXLEN", `ip route show proto
    # static`: the dynos' /30s, and whatever else someone routed so) and its `src` ("" none),
    # by device
    routed: dict[int, dict[str, str]] = field(default_factory=dict)
    fdb: dict[int, list[topology.FdbEntry]] = field(default_factory=dict)  # bridge -> entries
    namespaces: list[str] = field(default_factory=list)  # every one with the prefix
    inside: dict[str, topology.Namespace] = field(default_factory=dict)  # those asked for
    sets: dict[str, list[Any]] = field(default_factory=dict)  # "family name" -> elements
    tables: list[str] = field(default_factory=list)  # "family table" of ours that exist


def _routes() -> list[Route]:
    """`ip -4 route show table all` of the calling thread's namespace."""
    rtnl = Rtnl()
    try:
        return rtnl.routes()
    finally:
        rtnl.close()


def look(ipr: IPRoute, nft: Nft, prefix: str, bridges: Iterable[str], netns: Iterable[str]) -> Look:
    """The host's view, the namespaces named in `netns` from inside, and `bridges`' FDBs."""
    routes = _routes()
    found = Look(
        links=topology.links(ipr),
        addresses=topology.ipv4_addresses(ipr),
        gateways=addresses.local_gateways(routes),
        routed=addresses.static_sources(routes),
    )
    wanted = set(bridges)
    for link in found.links:
        if link.name in wanted and link.kind == "bridge":
            found.fdb[link.index] = topology.fdb(ipr, link.index)
    found.namespaces = namespace.names(f"{prefix}-")
    listed = set(found.namespaces)
    for name in netns:
        if name not in listed:
            continue
        try:
            found.inside[name] = topology.inside(name)
        except OSError:
            continue  # deleted between the listing and the look: shown as missing
    for family in FAMILIES:
        sets = topology.nft_sets(nft, family, prefix)
        if sets is None:
            continue
        found.tables.append(f"{family} {prefix}")
        for name, elements in sets.items():
            found.sets[f"{family} {name}"] = elements
    return found
