"""Carving a range into /30s: one per dyno, plus the first for the bridge itself.

A /30 holds four addresses: network, gateway (the host's, routed to the dyno's bridge), the
dyno, broadcast.
Slot 0 is the bridge's own (its address is where dynod offers services to dynos); dyno slots
count from 1. MAC addresses are derived from the IP, so an address that is reused always comes
with the same MAC and no neighbour cache can point it at the wrong one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dynod.errors import DynodError

COMMON_RUNTIME_RANGE = ipaddress.IPv4Network("172.16.0.0/12")
# A bridge takes at most 1,023 ports (BR_MAX_PORTS is 1,024 and port number 0 is never used):
# the 1,024th `ip link set ... master` fails with EXFULL. A network is sharded over bridges
# of SHARD_PORTS ports each (machine.Net). Adding a port walks the bridge's other ports several
# times (MTU, features, headroom, promiscuity): a start costs O(ports of its bridge), so smaller
# bridges keep the 4,000th dyno's start near the first's (bench/README.md, density). 256 is
# Docker's scale of a bridge, a quarter of the limit; more bridges cost only their pairs in the
# `intra` set.
BRIDGE_PORT_LIMIT = 1023
SHARD_PORTS = 256


@dataclass(frozen=True)
class Subnet:
    slot: int
    network: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def address(self) -> str:
        return str(self.network.network_address + 2)

    @property
    def prefixlen(self) -> int:
        return 30

    @property
    def dyno_mac(self) -> str:
        return mac_for(self.address, 0x58)

    @property
    def host_mac(self) -> str:
        return mac_for(self.address, 0x59)


def mac_for(ip: str, kind: int) -> str:
    """0a:KIND:a:b:c:d: locally administered, unicast, unique per IP and role."""
    octets = ipaddress.IPv4Address(ip).packed
    return ":".join(f"{b:02x}" for b in (0x0A, kind, *octets))


class Pool:
    """The /30s of one range. Pure arithmetic; which slots are taken lives in the state."""

    def __init__(self, cidr: str | ipaddress.IPv4Network) -> None:
        network = ipaddress.IPv4Network(cidr)
        if network.prefixlen > 29:
            raise DynodError(
                f"range {network} is too small", "give a range of /29 or larger (a /30 per dyno)"
            )
        self.network = network
        self.size = network.num_addresses // 4

    def subnet(self, slot: int) -> Subnet:
        if not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} outside {self.network}")
        base = self.network.network_address + 4 * slot
        return Subnet(slot, ipaddress.IPv4Network(f"{base}/30"))

    @property
    def bridge(self) -> Subnet:
        return self.subnet(0)

    @property
    def bridge_mac(self) -> str:
        """The MAC of every bridge of the network (its shards too): its dynos' gateway's."""
        return mac_for(self.bridge.gateway, 0x5A)

    def allocate(self, unavailable: Iterable[int], start: int = 1) -> Subnet:
        """The lowest dyno slot not in use and not still being torn down, from `start` (every
        slot below it is known to be taken)."""
        taken = set(unavailable)
        for slot in range(max(start, 1), self.size):
            if slot not in taken:
                return self.subnet(slot)
        raise DynodError(
            f"no free /30 left in {self.network}: {self.size - 1} dynos is its limit",
            "stop some dynos, or restart the daemon with a larger range (--cidr)",
            status=503,
        )
