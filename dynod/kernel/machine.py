"""What one daemon has on the host, shared by the kernel side's modules: its networks (the
Common Runtime's bridge and the spaces'), its nftables handle and what its tables should hold,
its cgroups. Touched only on the kernel worker's thread."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dynod.errors import DynodError
from dynod.kernel import firewall, network
from dynod.kernel.addressing import Pool
from dynod.kernel.cgroups import DynoCgroups
from netns.nftables import Nft, Snapshot
from netns.worker import KernelWorker


@dataclass
class Net:
    """One dyno network: the Common Runtime's (key "") or a Private Space's (key: its name)."""

    key: str
    bridge: str
    pool: Pool
    nat_ip: str | None = None  # a space's stable NAT address; None: masquerade
    index: int | None = None  # the bridge's ifindex, once it exists

    @property
    def address(self) -> str:
        """The bridge's own address: where dynod's DNS (and a space's internal router) listen."""
        return self.pool.bridge.gateway

    def firewall(self) -> firewall.Network:
        return firewall.Network(self.bridge, str(self.pool.network), self.address, self.nat_ip)


@dataclass
class Machine:
    names: network.Names
    common: Net
    resolv_dir: str
    worker: KernelWorker
    cgroups: DynoCgroups
    spaces: dict[str, Net] = field(default_factory=dict)
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
        )

    def net(self, key: str) -> Net:
        return self.common if key == "" else self.spaces[key]

    def nets(self) -> list[Net]:
        return [self.common, *self.spaces.values()]

    def bridge_index(self, bridge: str) -> int:
        """The ifindex of one of our open bridges, by name."""
        for net in self.nets():
            if net.bridge == bridge and net.index is not None:
                return net.index
        raise DynodError(f"the bridge {bridge} is not open", "restart the daemon", status=500)

    def is_open(self, bridge: str) -> bool:
        return any(net.bridge == bridge for net in self.nets())

    def nftables(self) -> Nft:
        if self.nft is None:
            raise DynodError("nftables are not open yet", "restart the daemon", status=500)
        return self.nft

    def resolv_path(self, bridge: str) -> str:
        return os.path.join(self.resolv_dir, f"{bridge}.conf")
