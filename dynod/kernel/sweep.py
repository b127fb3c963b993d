"""Reconcile's sweeps of the host (kernel thread): what no kept dyno owns goes, what a kept dyno
lost comes back."""

from __future__ import annotations

import contextlib
import ipaddress

from dynod.kernel import network, shards, tracing
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.inside import kill_namespace
from dynod.kernel.machine import Machine
from netns import addresses, links, namespace
from netns.rtnl import Rtnl


def remove_unknown(m: Machine, live: list[DynoNetwork]) -> None:
    """`ip netns delete`, `ip link del`, `ip addr del` and `ip route del` of what has our prefix
    but no owner."""
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
    gateways = addresses.local_gateways(ipr)
    for net in m.nets():
        # a kept dyno's gateway address (an older dynod's) stays for restore_gateways
        wanted = {net.address} | {d.gateway for d in live if d.bridge == net.bridge}
        for _, index in net.open_shards():
            for iface in addresses.ipv4_on(ipr, index):
                if iface.ip in net.pool.network and str(iface.ip) not in wanted:
                    addresses.delete(ipr, index, str(iface.ip), iface.network.prefixlen)
            for gateway in gateways.get(index, []):
                if ipaddress.IPv4Address(gateway) in net.pool.network and gateway not in wanted:
                    subnet = ipaddress.IPv4Network(f"{gateway}/30", strict=False)
                    address = str(subnet.network_address)
                    addresses.delete_gateway(m.worker.rtnl, index, gateway, address, 30)


def restore_gateways(m: Machine, live: list[DynoNetwork]) -> None:
    """The gateway's routes and the dyno's neighbour entry on the host for every kept dyno
    (someone may have removed them), and its port's settings (network.close_port_to_host: a
    port made by an older dynod, or changed by hand since). A gateway an older dynod made an
    address of becomes routes, its dyno told the gateway's MAC first (nothing answers its ARP
    for it then)."""
    rtnl = m.worker.rtnl  # the per-dyno calls' lean socket, as at a start
    held: dict[int, set[str]] = {}  # the addresses of each bridge, listed once
    for dyno in live:
        if m.is_open(dyno.bridge):
            index, _ = shards.open_shard(m, dyno)
            if index not in held:
                held[index] = {str(a.ip) for a in addresses.ipv4_on(m.worker.ipr, index)}
            if dyno.gateway in held[index]:
                with contextlib.suppress(FileNotFoundError):  # its namespace is gone
                    network.pin_gateway(dyno.netns, dyno.subnet, dyno.bridge_mac)
                addresses.delete(rtnl, index, dyno.gateway, dyno.prefixlen)
            network.add_gateway(rtnl, index, dyno.subnet)
            addresses.pin_neighbour(rtnl, index, dyno.address, dyno.subnet.dyno_mac)
        close_port(rtnl, dyno.veth)


def close_port(rtnl: Rtnl, veth: str) -> None:
    """network.close_port_to_host on a kept dyno's port, if its veth is still there."""
    with contextlib.suppress(FileNotFoundError):  # its veth is gone: rebuilt elsewhere
        network.close_port_to_host(veth, rtnl, rtnl.index_of(veth))
