"""What the DNS server keeps per scope (a space, or the Common Runtime: its network and its
zone of prepared answers) and per serving thread (its counts)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dynod.dns.zone import EMPTY_ZONE, Zone

__all__ = ["NOWHERE", "Counters", "Route", "Scope"]


@dataclass(eq=False, slots=True)
class Counters:
    """Counts of one thread, written by that thread only (no lock, no lost increments)."""

    queries: int = 0
    formerr: int = 0
    notimp: int = 0
    nxdomain: int = 0
    dropped: int = 0


@dataclass(eq=False, slots=True)
class Scope:
    name: str
    network: ipaddress.IPv4Network
    zone: Zone  # replaced whole by set_scope


NOWHERE = Scope("", ipaddress.IPv4Network("0.0.0.0/32"), EMPTY_ZONE)  # askers in no scope

# (network address, netmask, scope) as integers, most specific network first
Route = tuple[int, int, Scope]
