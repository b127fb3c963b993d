"""The kernel's connection tracking table (`conntrack -L`, `conntrack -D`), through pyroute2.

Runs on the kernel worker's thread like every other netlink call; the table is the one of the
namespace that thread is in (the host's).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import Conntrack

from netns import record


@dataclass(frozen=True)
class Flow:
    """One tracked flow, as its first packet went (the original direction)."""

    proto: int  # socket.IPPROTO_TCP, _UDP, _ICMP, ...
    src: str
    dst: str
    sport: int | None
    dport: int | None
    icmp_type: int | None


def delete_where(refused: Callable[[Flow], bool]) -> int:
    """`conntrack -L -f ipv4`, then `conntrack -D -p PROTO -s SRC -d DST ...` for every flow
    `refused` picks; how many were deleted. A flow that ends on its own meanwhile is skipped."""
    deleted = 0
    ct = Conntrack()
    try:
        doomed = []
        for entry in ct.dump_entries():
            orig = entry.tuple_orig
            if orig.family not in (None, socket.AF_INET) or not orig.saddr:
                continue
            flow = Flow(orig.proto, orig.saddr, orig.daddr, orig.sport, orig.dport, orig.icmp_type)
            if refused(flow):
                doomed.append(orig)
        for orig in doomed:
            try:
                ct.entry("del", tuple_orig=orig)
                deleted += 1
                record.note(*_delete_words(orig))
            except Exception as exc:  # noqa: BLE001 - ENOENT: it ended on its own
                if getattr(exc, "code", None) != 2:
                    raise
    finally:
        ct.close()
    return deleted


PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp"}


def _delete_words(orig: object) -> list[str]:
    """`conntrack -D -p PROTO -s SRC -d DST [--sport N --dport N]` for one flow."""
    words = [
        "conntrack",
        "-D",
        "-p",
        PROTOCOLS.get(getattr(orig, "proto", 0), str(getattr(orig, "proto", ""))),
        "-s",
        str(getattr(orig, "saddr", "")),
        "-d",
        str(getattr(orig, "daddr", "")),
    ]
    for option, attr in (("--sport", "sport"), ("--dport", "dport")):
        value = getattr(orig, attr, None)
        if value:
            words += [option, str(value)]
    return words
