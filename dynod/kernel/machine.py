"""What one daemon has on the host, shared by the kernel side's modules: its networks (the
Common Runtime's bridge and the spaces'), its nftables handle and what its tables should hold,
its cgroups. Touched only on the kernel worker's thread, but for reads from the event loop of
facts that do not change once made (a network's pool, its bridge's name), and of the list of
open networks (copied in one step under the GIL: nets())."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from dynod.errors import DynodError
from dynod.kernel import firewall, network
from dynod.kernel.addressing import SHARD_PORTS, Pool
from dynod.kernel.cgroups import DynoCgroups
from dynod.kernel.mounts import MountTemplate
from netns import hosts, nsid
from netns.nftables import Nft, Snapshot
from netns.worker import KernelWorker


@dataclass
class Net:
    """One dyno network: the Common Runtime's (key "") or a Private Space's (key: its name).

    It is sharded over bridges: shard 0 is `bridge` (it holds the network's own address, where
    DNS and the internal router listen), shard N is `bridge-N`. A dyno's shard follows from its
    /30's slot: slots 1..shard_ports are shard 0's, and so on. Slots are handed out lowest
    first, so a new shard is made only when the ones before it are full, and no shard ever has
    more than shard_ports ports. Every dyno keeps its own routed /30, so which bridge it hangs
    off changes nothing a dyno (or the control side) sees."""

    key: str
    bridge: str
    pool: Pool
    nat_ip: str | None = None  # a space's stable NAT address; None: masquerade
    index: int | None = None  # the bridge's ifindex, once it exists
    shard_ports: int = SHARD_PORTS
    shards: dict[int, int] = field(default_factory=dict)  # open shards past 0 -> ifindex

    @property
    def address(self) -> str:
        """The bridge's own address: where dynod's DNS (and a space's internal router) listen."""
        return self.pool.bridge.gateway

    def shard_of(self, slot: int) -> int:
        return max(slot - 1, 0) // self.shard_ports

    def shard_bridge(self, shard: int) -> str:
        return shard_bridge(self.bridge, shard)

    def shard_index(self, shard: int) -> int | None:
        """The ifindex of one of its shards, if open."""
        return self.index if shard == 0 else self.shards.get(shard)

    def open_shards(self) -> list[tuple[str, int]]:
        """(bridge, ifindex) of every open shard, shard 0 first."""
        found = [(self.bridge, self.index)] if self.index is not None else []
        return found + [(self.shard_bridge(n), self.shards[n]) for n in sorted(self.shards)]

    def firewall(self) -> firewall.Network:
        bridges = (self.bridge, *(self.shard_bridge(n) for n in sorted(self.shards)))
        return firewall.Network(
            self.bridge, str(self.pool.network), self.address, self.nat_ip, bridges
        )


def bridge_indexes(nets: Iterable[Net]) -> set[int]:
    """The ifindex of every open bridge (shard) of these networks."""
    return {index for net in nets for _, index in net.open_shards()}


@dataclass
class Machine:
    names: network.Names
    common: Net
    resolv_dir: str
    # each running dyno's /etc/hosts, and the file of its private mounts that binds it in (one
    # `mount -a -T` each)
    hosts: hosts.Files
    worker: KernelWorker
    cgroups: DynoCgroups
    mounts: MountTemplate  # what dynos' mount namespaces are copied from
    # the ids dynos' namespaces get in the host's, newest lowest (netns/nsid.py)
    nsids: nsid.Descending
    spaces: dict[str, Net] = field(default_factory=dict)
    router_user: int | None = None  # the router workers' user id, let through to web dynos
    nft: Nft | None = None
    # What our tables should hold: taken right after each full apply, and kept up to date
    # (on the kernel thread) with the elements each later transaction added or removed.
    expected: Snapshot | None = None

    @property
    def layout(self) -> firewall.Layout:
        return firewall.Layout(
            table=self.names.prefix,
            port_glob=self.names.port_glob,
            common=self.common.firewall(),
            spaces=tuple(n.firewall() for _, n in sorted(self.spaces.items())),
            router_user=self.router_user,
        )

    def net(self, key: str) -> Net:
        return self.common if key == "" else self.spaces[key]

    def nets(self) -> list[Net]:
        return [self.common, *self.spaces.values()]

    def network_of(self, bridge: str) -> Net | None:
        """The open network whose shard 0 is this bridge."""
        for net in self.nets():
            if net.bridge == bridge:
                return net
        return None

    def is_open(self, bridge: str) -> bool:
        return self.network_of(bridge) is not None

    def nftables(self) -> Nft:
        if self.nft is None:
            raise DynodError("nftables are not open yet", "restart the daemon", status=500)
        return self.nft

    def resolv_path(self, bridge: str) -> str:
        return os.path.join(self.resolv_dir, f"{bridge}.conf")


def shard_bridge(bridge: str, shard: int) -> str:
    """The name of a network's bridge number `shard`: shard 0 is the network's own bridge."""
    return bridge if shard == 0 else f"{bridge}-{shard}"
