"""Reconcile's sweeps of the host (kernel thread): what no kept dyno owns goes, what a kept dyno
lost comes back."""

from __future__ import annotations

import contextlib

from dynod.kernel import network, shards, tracing
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.inside import kill_namespace
from dynod.kernel.machine import Machine
from netns import addresses, links, namespace
from netns.rtnl import Rtnl


def remove_unknown(m: Machine, live: list[DynoNetwork]) -> None:
    """`ip netns delete`, `ip link del` and `ip addr del` of what has our prefix but no owner."""
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
    for net in m.nets():
        wanted = {net.address} | {d.gateway for d in live if d.bridge == net.bridge}
        for _, index in net.open_shards():
            for iface in addresses.ipv4_on(ipr, index):
                if iface.ip in net.pool.network and str(iface.ip) not in wanted:
                    addresses.delete(ipr, index, str(iface.ip), iface.network.prefixlen)


def restore_gateways(m: Machine, live: list[DynoNetwork]) -> None:
    """`ip addr replace GATEWAY/30 dev BRIDGE` for every kept dyno (someone may have removed
    it), and its port's settings (network.close_port_to_host: a port made by an older dynod,
    or changed by hand since)."""
    rtnl = m.worker.rtnl  # the per-dyno calls' lean socket, as at a start
    for dyno in live:
        if m.is_open(dyno.bridge):
            index, _ = shards.open_shard(m, dyno)
            addresses.add(rtnl, index, dyno.gateway, dyno.prefixlen)
        close_port(rtnl, dyno.veth)


def close_port(rtnl: Rtnl, veth: str) -> None:
    """network.close_port_to_host on a kept dyno's port, if its veth is still there."""
    with contextlib.suppress(FileNotFoundError):  # its veth is gone: rebuilt elsewhere
        network.close_port_to_host(veth, rtnl, rtnl.index_of(veth))
