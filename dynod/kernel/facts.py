"""A dyno's network facts, computed once when its /30 is allocated and handed down whole: the
kernel side never sees a state row and never decides what a web dyno is (the control side does,
by giving a web target or none). A restart's new PORT is a new value (dataclasses.replace)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from dynod.kernel.addressing import Subnet
from dynod.kernel.firewall import Port, WebTarget
from dynod.kernel.machine import Net, shard_bridge


@dataclass(frozen=True)
class DynoNetwork:
    """What `ip netns add`, `ip link add ... type veth`, `ip route add` and the firewall's set
    elements of one dyno are made from."""

    netns: str  # its network namespace, /run/netns/NETNS
    veth: str  # the host end of its veth (the dyno end is eth0)
    bridge: str  # its network's bridge (shard 0), which names the network
    shard: int  # which of the network's bridges its veth is a port of (machine.Net)
    subnet: Subnet  # its /30: address, gateway, prefix length, MACs
    bridge_mac: str  # its bridge's MAC, which its gateway's neighbour entry holds
    web: WebTarget | None  # where the router may reach it; None: not a web dyno

    @property
    def port_bridge(self) -> str:
        """The bridge its veth is a port of: its shard's."""
        return shard_bridge(self.bridge, self.shard)

    @property
    def address(self) -> str:
        return self.subnet.address

    @property
    def gateway(self) -> str:
        return self.subnet.gateway

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def gateway_routes(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """The host's two routes its gateway is made of (netns/addresses.py add_gateway), as
        (destination, prefix length): `local GATEWAY` and `NETWORK/30`."""
        return (self.gateway, 32), (str(self.subnet.network.network_address), self.prefixlen)

    @property
    def port(self) -> Port:
        """Its bridge port, as the firewall's ports set holds it."""
        return Port(self.veth, self.subnet.dyno_mac, self.subnet.address)

    def on_port(self, web_port: int | None) -> DynoNetwork:
        """The same network with its web target on another PORT (a restart's new one)."""
        return replace(self, web=target(self.subnet, web_port) if self.web else None)


def target(subnet: Subnet, web_port: int | None) -> WebTarget | None:
    return WebTarget(subnet.address, web_port) if web_port else None


def describe(netns: str, veth: str, net: Net, subnet: Subnet, web_port: int | None) -> DynoNetwork:
    """The facts of a dyno given its allocation in net: web_port is its PORT if it is a web
    dyno. Its shard follows from its slot (Net.shard_of)."""
    shard = net.shard_of(subnet.slot)
    return DynoNetwork(
        netns, veth, net.bridge, shard, subnet, net.pool.bridge_mac, target(subnet, web_port)
    )


Pids = frozenset[int]
NO_PIDS: Pids = frozenset()


@dataclass(frozen=True)
class Running:
    """A dyno's processes as the kernel finds them: those in its network namespace, and its
    recorded process (the first of its pid namespace, pid and start time) with that namespace."""

    netns: str
    pid: int | None
    pid_start: float | None


@dataclass(frozen=True)
class Removed:
    """What someone removed of a dyno's network while it ran (`ip netns delete`, `ip link
    del`): a field per object, for the control side to decide on, and words for the user."""

    netns: str | None = None  # the namespace's name, when it is gone
    veth: str | None = None  # the veth's name, when it is gone

    @property
    def namespace_gone(self) -> bool:
        return self.netns is not None

    def __bool__(self) -> bool:
        return self.netns is not None or self.veth is not None

    def described(self) -> list[str]:
        """["network namespace NS", "veth VETH"], what is gone of them."""
        found = [] if self.netns is None else [f"network namespace {self.netns}"]
        return found if self.veth is None else [*found, f"veth {self.veth}"]
