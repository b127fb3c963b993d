"""Private Spaces: the rules for their ranges, NAT addresses and trusted IP ranges.

Pure decisions, no kernel work: the daemon asks the kernel for the facts (routes, local
addresses) and these functions say yes, no (with the problem and the fix), or which range.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from dynod.errors import DynodError
from dynod.rules.names import SPACE_PREFIXLEN

DEFAULT_BLOCK = ipaddress.IPv4Network("10.0.0.0/8")
MAX_TRUSTED = 20  # Heroku's limit per space
EVERYWHERE = "0.0.0.0/0"  # a new space's trusted range, as on Heroku


def check_range_free(
    wanted: ipaddress.IPv4Network, in_use: Mapping[str, ipaddress.IPv4Network]
) -> None:
    """Refuse a range that overlaps one in use; in_use maps a description to its range."""
    for what, used in in_use.items():
        if wanted.overlaps(used):
            raise DynodError(
                f"the range {wanted} overlaps {what} ({used})",
                "give another /16 with --cidr, or none for the next free one",
                status=409,
            )


def next_free_range(in_use: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The lowest /16 of 10.0.0.0/8 that overlaps nothing in use."""
    used = list(in_use)
    for candidate in DEFAULT_BLOCK.subnets(new_prefix=SPACE_PREFIXLEN):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise DynodError(
        "no free /16 is left in 10.0.0.0/8",
        "give a /16 of 172.16.0.0/12 or 192.168.0.0/16 with --cidr",
        status=409,
    )


def check_nat_address(address: str, local: set[str], dyno_ranges: Iterable[str]) -> None:
    """A NAT address must be the host's own: replies to it must come back to this host."""
    ip = ipaddress.IPv4Address(address)
    for cidr in dyno_ranges:
        if ip in ipaddress.IPv4Network(cidr):
            raise DynodError(
                f"{address} is inside the dyno range {cidr}",
                "give an address of the host's uplink (`ip -4 addr` lists them)",
            )
    if address not in local:
        raise DynodError(
            f"{address} is not an address of this host, so replies to it would never come back",
            f"add it first (`ip addr add {address}/32 dev UPLINK`), or leave --nat-ip out to "
            "use the source address of the host's default route",
        )


def allows(trusted: Iterable[ipaddress.IPv4Network], client: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(client)
    except ValueError:
        return False  # an IPv6 client: trusted ranges are IPv4, as on Heroku
    return any(ip in network for network in trusted)


def check_can_add_trusted(current: list[str], cidr: str) -> None:
    if cidr not in current and len(current) >= MAX_TRUSTED:
        raise DynodError(
            f"the space already has {MAX_TRUSTED} trusted IP ranges, Heroku's limit",
            "remove one first (`dynod trusted-ips:remove CIDR --space SPACE`), or merge ranges",
            status=409,
        )
