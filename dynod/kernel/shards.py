"""A network's bridges (kernel thread): a network is sharded over bridges of at most
Net.shard_ports ports (machine.Net says which dyno goes where); a shard is made when its first
dyno comes. A shard stays while the daemon runs, so a dyno starting and stopping at a shard's
edge does not make and remove a bridge each time; reconcile at the next start removes the
shards no dyno uses."""

from __future__ import annotations

from dynod.errors import DynodError
from dynod.kernel import network
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.machine import Machine, Net


def network_of(m: Machine, dyno: DynoNetwork) -> Net:
    net = m.network_of(dyno.bridge)
    if net is None or net.index is None:
        raise DynodError(f"the bridge {dyno.bridge} is not open", "restart the daemon", status=500)
    return net


def open_shard(m: Machine, dyno: DynoNetwork) -> tuple[int, bool]:
    """The ifindex of the bridge the dyno's veth goes on, and whether it was made just now:
    `ip link add BRIDGE-N type bridge` (network.ensure_shard_bridge) when it is not open."""
    net = network_of(m, dyno)
    index = net.shard_index(dyno.shard)
    if index is not None:
        return index, False
    index = network.ensure_shard_bridge(m.worker.ipr, net.shard_bridge(dyno.shard), net.pool)
    net.shards[dyno.shard] = index
    return index, True


def close_shard(m: Machine, net: Net, shard: int) -> None:
    """`ip link del BRIDGE-N`: a shard just made whose firewall elements were refused."""
    net.shards.pop(shard, None)
    network.remove_bridge(m.worker.ipr, net.shard_bridge(shard))
