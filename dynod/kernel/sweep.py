"""Reconcile's sweeps of the host (kernel thread): what no kept dyno owns goes, what a kept dyno
lost comes back."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass

from dynod.kernel import network, shards, tracing
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.inside import kill_namespace
from dynod.kernel.machine import Machine
from netns import addresses, links, namespace
from netns.rtnl import IFF_UP, Route, Rtnl


def remove_unknown(m: Machine, live: list[DynoNetwork]) -> None:
    """`ip netns delete`, `ip link del`, `ip addr del`, `ip route del` and `ip neigh del` of what
    has our prefix but no owner."""
    tracing.sweep_leftovers(m)  # a trace's tables, left by a daemon killed mid-trace
    ipr = m.worker.ipr
    known_netns = {d.netns for d in live}
    m.hosts.remove_all_but(known_netns)  # a kept dyno's /etc/hosts is bound in: it stays
    unknown = [
        name
        for name in namespace.names(f"{m.names.prefix}-")
        if m.names.owns_netns(name) and name not in known_netns
    ]
    if unknown:
        table = namespace.scan()  # one /proc scan for all of them, not one each
        for name in unknown:
            kill_namespace(name, table)
            namespace.delete(name)
    known_veths = {d.veth for d in live}
    for veth in network.existing_veths(ipr, m.names):
        if veth not in known_veths:
            links.delete(ipr, veth)
    live = [d for d in live if m.is_open(d.bridge)]
    for dyno in live:  # the shards kept dynos are on (a restarted daemon opens them here)
        shards.open_shard(m, dyno)
    known_bridges = {bridge for net in m.nets() for bridge, _ in net.open_shards()}
    for bridge in network.existing_bridges(ipr, m.names) - known_bridges:
        network.remove_bridge(ipr, bridge)
    routes = m.worker.rtnl.routes()
    gateways = addresses.local_gateways(routes)
    for net in m.nets():
        # a kept dyno's gateway address (an older dynod's) stays for restore_gateways
        wanted = {net.address} | {d.gateway for d in live if d.bridge == net.bridge}
        for _, index in net.open_shards():
            for iface in addresses.ipv4_on(ipr, index):
                if iface.ip in net.pool.network and str(iface.ip) not in wanted:
                    addresses.delete(ipr, index, str(iface.ip), iface.network.prefixlen)
            # gateways no kept dyno has: by their local route, or by a /30's route whose local
            # route someone deleted by hand (its source); each goes whole, once
            strays = set(gateways.get(index, []))
            strays |= {source for _, _, source in addresses.static_routes(routes, index) if source}
            for gateway in sorted(strays - wanted):
                if ipaddress.IPv4Address(gateway) in net.pool.network:
                    subnet = ipaddress.IPv4Network(f"{gateway}/30", strict=False)
                    address = str(subnet.network_address)
                    addresses.delete_gateway(m.worker.rtnl, index, gateway, address, 30)
            # a dyno's entry left by a daemon killed between a start's steps
            dynos = {d.address for d in live if d.bridge == net.bridge}
            for address in addresses.pinned_neighbours(ipr, index):
                if ipaddress.IPv4Address(address) in net.pool.network and address not in dynos:
                    addresses.forget_neighbour(m.worker.rtnl, index, address)


def restore_gateways(m: Machine, live: list[DynoNetwork], whole: bool) -> dict[str, str]:
    """The gateway's routes and the dyno's neighbour entry on the host for every kept dyno
    (someone may have removed them, or put others before them: those go), from one listing of
    each bridge's routes (or of the whole table), and its port's settings
    (network.close_port_to_host: a port made by an older dynod, or changed by hand since).

    A gateway an older dynod made an address of becomes routes: every such dyno is told its
    gateway's MAC first (nothing answers its ARP for it then) and every such address goes,
    before any route is made. The order matters: a bridge past the first has no address of
    its own, and when its last address goes the kernel flushes every route and neighbour entry
    through it (fib_inetaddr_event, fib_disable_ip), so routes made between two deletions would
    be lost.

    The dynos whose routes were put back (""), or could not be (a route before them that
    cannot be removed: why), by namespace; those whose routes were whole are not in it. The
    listing is `whole` or per bridge as in gateway_listings."""
    rtnl = m.worker.rtnl  # the per-dyno calls' lean socket, as at a start
    kept = [(dyno, shards.open_shard(m, dyno)[0]) for dyno in live if m.is_open(dyno.bridge)]
    held: dict[int, set[str]] = {}  # the addresses of each bridge, listed once
    for dyno, index in kept:
        if index not in held:
            held[index] = {str(a.ip) for a in addresses.ipv4_on(m.worker.ipr, index)}
        if dyno.gateway in held[index]:
            # its namespace is gone, or is not one any more: the dyno is rebuilt or stopped
            with contextlib.suppress(OSError):
                network.pin_gateway(dyno.netns, dyno.subnet, dyno.bridge_mac)
    converted = set()  # bridges an older dynod's gateway addresses went from
    for dyno, index in kept:
        if dyno.gateway in held[index]:
            addresses.delete(rtnl, index, dyno.gateway, dyno.prefixlen)
            converted.add(index)
    # listed after those deletions (the last address of a bridge takes its routes with it)
    done = {}
    for index, listing in gateway_listings(m, [d for d, _ in kept], whole).items():
        for dyno in listing.dynos:
            wanted = wanted_routes(dyno, index)
            try:
                if not addresses.gateway_intact(listing.by_key, wanted):
                    addresses.put_back_gateway(rtnl, listing.by_key, wanted)
                    # what this did itself (an address made routes) is no one's change
                    if index not in converted:
                        done[dyno.netns] = ""
                addresses.pin_neighbour(rtnl, index, dyno.address, dyno.subnet.dyno_mac)
            except addresses.GatewayBlocked as exc:
                done[dyno.netns] = str(exc)
            except Exception as exc:  # noqa: BLE001 - its bridge refused (down): it waits
                done[dyno.netns] = _refusal(exc)
    for dyno in live:
        close_port(rtnl, dyno.veth)
    return done


def _refusal(exc: Exception) -> str:
    """Why the kernel refused, as a person would read it (`Network is down`)."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    return os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)


# A look at a few dynos (those whose routes were deleted or replaced) on at most this many
# bridges lists each bridge's own routes (a filtered dump: 2 ms for a bridge's 500 routes among
# 8,000); one at more lists the whole table once (15-18 ms for the 8,000 of 4,000 dynos, where
# sixteen bridges' own would take 21-31 ms).
FILTERED_BRIDGES = 4


@dataclass
class Listing:
    """The dynos of one bridge, and the routes a look at their gateways reads: the bridge's own
    (`ip route show table all dev BRIDGE`), or the whole table's, shared by every bridge."""

    dynos: list[DynoNetwork]
    by_key: dict[addresses.RouteKey, list[Route]]  # addresses.routes_by_key(the routes)


def gateway_listings(m: Machine, dynos: list[DynoNetwork], whole: bool) -> dict[int, Listing]:
    """These dynos by the index of their bridge (their shard's, when open and not deleted), each
    bridge's with its routes: one `ip route show table all`, read and indexed once, when
    `whole` (a look at every dyno, or reconcile's: it sees routes through other devices too, a
    prepended one, which no event tells of, among them), for dynos on more than
    FILTERED_BRIDGES bridges, or where the kernel does not filter dumps; else `ip route show
    table all dev BRIDGE` for each (a look at a dyno whose own route was deleted or replaced:
    it sees the gateway's routes, and what a bridge's listing misses makes them missing)."""
    bridges: dict[int, list[DynoNetwork]] = {}
    for dyno in dynos:
        net = m.network_of(dyno.bridge)
        index = net.shard_index(dyno.shard) if net is not None else None
        if index is not None:
            bridges.setdefault(index, []).append(dyno)
    rtnl = m.worker.rtnl
    table: dict[addresses.RouteKey, list[Route]] | None = None
    if bridges and (whole or len(bridges) > FILTERED_BRIDGES or not rtnl.filters):
        table = addresses.routes_by_key(rtnl.routes())
    found = {}
    for index, on_bridge in bridges.items():
        if rtnl.index_of(on_bridge[0].port_bridge) != index:
            continue  # deleted: its dynos are cut off until the next start rebuilds it
        if table is not None:
            found[index] = Listing(on_bridge, table)
        elif (routes := addresses.routes_through(rtnl, index)) is not None:
            found[index] = Listing(on_bridge, addresses.routes_by_key(routes))
    return found


def wanted_routes(dyno: DynoNetwork, index: int) -> tuple[Route, Route]:
    """The dyno's gateway routes (netns/addresses.py add_gateway), through bridge `index`."""
    address = str(dyno.subnet.network.network_address)
    return addresses.gateway_routes(dyno.gateway, address, dyno.prefixlen, index)


def missing_gateways(m: Machine, dynos: list[DynoNetwork], whole: bool) -> list[DynoNetwork]:
    """Of these dynos, those whose gateway routes are not both the first to their destination,
    the one a lookup meets (addresses.gateway_intact): someone deleted one, took the bridge
    down (which flushes the /30's route but not the local one), or replaced or prepended
    another (without the gateway's `src`, the host would send to the dyno from another address;
    through another device, not to the dyno at all)."""
    missing = []
    for index, listing in gateway_listings(m, dynos, whole).items():
        for dyno in listing.dynos:
            if not addresses.gateway_intact(listing.by_key, wanted_routes(dyno, index)):
                missing.append(dyno)
    return missing


def bridges_up(m: Machine) -> dict[str, bool]:
    """Each open bridge: is it up (`cat /sys/class/net/BRIDGE/flags`, IFF_UP); a deleted one
    reads as down."""
    found = {}
    for net in m.nets():
        for bridge, _index in net.open_shards():
            try:
                with open(f"/sys/class/net/{bridge}/flags") as f:
                    found[bridge] = bool(int(f.read(), 16) & IFF_UP)
            except (OSError, ValueError):
                found[bridge] = False
    return found


def close_port(rtnl: Rtnl, veth: str) -> None:
    """network.close_port_to_host on a kept dyno's port, if its veth is still there."""
    with contextlib.suppress(FileNotFoundError):  # its veth is gone: rebuilt elsewhere
        network.close_port_to_host(veth, rtnl, rtnl.index_of(veth))
