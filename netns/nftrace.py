"""nftables tracing (`nft monitor trace`), without the text: a netlink socket in the
NFNLGRP_NFTRACE group, its events parsed, and the table that switches tracing on for one flow.

A packet is traced when a rule sets its nftrace bit (`meta nftrace set 1`); from then on every
base chain it passes in that network namespace reports, as NFT_MSG_TRACE messages, each rule that
matched with its verdict, and the chain's policy when no rule decided. Crossing into another
namespace (a veth) clears the bit, so each namespace on the path needs a rule of its own.

Trace events of a namespace go to the NFNLGRP_NFTRACE listeners of that namespace: a socket
opened inside it (`ip netns exec NS nft monitor trace`). The socket is subscribed before the
probe is sent, so no event can come before the listener (an `nft monitor trace` subprocess gives
no sign of when it has subscribed).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from netns.conntrack import PROTOCOLS
from netns.nfevents import (
    NFGENMSG,
    NFNL_SUBSYS_NFTABLES,
    NFNLGRP_NFTRACE,
    attributes,
    messages,
    open_group,
    receive,
)

NFT_MSG_TRACE = 17

# enum nft_trace_attributes (linux/netfilter/nf_tables.h)
TRACE_TABLE = 1
TRACE_CHAIN = 2
TRACE_RULE_HANDLE = 3
TRACE_TYPE = 4
TRACE_VERDICT = 5
TRACE_ID = 6
TRACE_NETWORK_HEADER = 8
TRACE_TRANSPORT_HEADER = 9
TRACE_IIF = 10
TRACE_OIF = 12
TRACE_MARK = 14
TRACE_POLICY = 16
VERDICT_CODE = 1
VERDICT_CHAIN = 2

TYPES = {1: "policy", 2: "return", 3: "rule"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
# NF_DROP, NF_ACCEPT, ... and nftables' own verdicts (negative, as signed 32 bits)
VERDICTS = {
    0: "drop",
    1: "accept",
    2: "stolen",
    3: "queue",
    4: "repeat",
    -1: "continue",
    -2: "break",
    -3: "jump",
    -4: "goto",
    -5: "return",
}

# Before every usual priority (raw is -300, conntrack -200, filter 0), so the first table a
# packet meets in each hook is the one that switches tracing on.
TRACE_PRIORITY = -400
INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
BRIDGE_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")


@dataclass(frozen=True)
class Packet:
    """The IPv4 header (and ports, or ICMP type and id) a trace event carries."""

    src: str
    dst: str
    protocol: str  # "tcp", "udp", "icmp" or the number
    ident: int  # the IP header's identification field
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_id: int | None = None


@dataclass(frozen=True)
class TraceEvent:
    """One NFT_MSG_TRACE: a rule that matched (kind "rule"), a chain's end (return) or its
    policy, in table `family table`, for the packet traced as `id`."""

    id: int
    family: str  # the table's family
    table: str
    chain: str
    kind: str  # "rule", "return" or "policy"
    verdict: str  # "accept", "drop", "continue", "jump", "goto", "return", ...
    target: str = ""  # the chain a jump or goto goes to
    handle: int | None = None  # the rule's handle (`nft -a list`)
    iif: int | None = None
    oif: int | None = None
    mark: int | None = None
    packet: Packet | None = None  # only the first event of each base chain carries it


class TraceEvents:
    """`nft monitor trace` for the calling thread's network namespace (the socket stays in the
    namespace it was opened in). Non-blocking: read() returns what has come so far."""

    def __init__(self) -> None:
        self._sock = open_group(NFNLGRP_NFTRACE)
        self.lost = False  # the kernel dropped events nobody read in time

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[TraceEvent]:
        found: list[TraceEvent] = []
        for data in receive(self._sock):
            if data is None:
                self.lost = True
            else:
                found.extend(parse_events(data))
        return found

    def close(self) -> None:
        self._sock.close()


def _text(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: bytes | None) -> int | None:
    return int(struct.unpack("!I", value[:4])[0]) if value and len(value) >= 4 else None


def parse_events(data: bytes) -> list[TraceEvent]:
    """The trace events (NFT_MSG_TRACE) in a netlink datagram."""
    found = []
    for body in messages(data, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE):
        if len(body) >= NFGENMSG.size:
            family = NFGENMSG.unpack_from(body)[0]
            found.append(
                _event(FAMILIES.get(family, str(family)), attributes(body[NFGENMSG.size :]))
            )
    return found


def _event(family: str, attrs: dict[int, bytes]) -> TraceEvent:
    verdict, target = "", ""
    if TRACE_VERDICT in attrs:
        nested = attributes(attrs[TRACE_VERDICT])
        code = _u32(nested.get(VERDICT_CODE))
        if code is not None:
            signed = code - (1 << 32) if code & 0x80000000 else code
            verdict = VERDICTS.get(signed, str(signed))
        target = _text(nested.get(VERDICT_CHAIN))
    policy = _u32(attrs.get(TRACE_POLICY))
    if not verdict and policy is not None:
        verdict = VERDICTS.get(policy, str(policy))
    handle = attrs.get(TRACE_RULE_HANDLE)
    return TraceEvent(
        id=_u32(attrs.get(TRACE_ID)) or 0,
        family=family,
        table=_text(attrs.get(TRACE_TABLE)),
        chain=_text(attrs.get(TRACE_CHAIN)),
        kind=TYPES.get(_u32(attrs.get(TRACE_TYPE)) or 0, "?"),
        verdict=verdict,
        target=target,
        handle=int(struct.unpack("!Q", handle)[0]) if handle and len(handle) == 8 else None,
        iif=_u32(attrs.get(TRACE_IIF)),
        oif=_u32(attrs.get(TRACE_OIF)),
        mark=_u32(attrs.get(TRACE_MARK)),
        packet=parse_packet(
            attrs.get(TRACE_NETWORK_HEADER, b""), attrs.get(TRACE_TRANSPORT_HEADER, b"")
        ),
    )


def parse_packet(network: bytes, transport: bytes) -> Packet | None:
    """An IPv4 header and what follows it (ports, or ICMP type and id); None for anything
    else (ARP, IPv6) or a header too short to read."""
    if len(network) < 20 or network[0] >> 4 != 4:
        return None
    ident = int(struct.unpack("!H", network[4:6])[0])
    number = network[9]
    packet = Packet(
        src=str(ipaddress.IPv4Address(network[12:16])),
        dst=str(ipaddress.IPv4Address(network[16:20])),
        protocol=PROTOCOLS.get(number, str(number)),
        ident=ident,
    )
    if number in (6, 17) and len(transport) >= 4:
        sport, dport = struct.unpack("!HH", transport[:4])
        return Packet(packet.src, packet.dst, packet.protocol, ident, sport, dport)
    if number == 1 and len(transport) >= 8:
        icmp_id = int(struct.unpack("!H", transport[4:6])[0])
        return Packet(
            packet.src, packet.dst, packet.protocol, ident, None, None, transport[0], icmp_id
        )
    return packet


# ---------------------------------------------------------------- the table that traces
@dataclass(frozen=True)
class Flow:
    """The probe's 5-tuple (source address unknown when the host's routing picks it); ICMP
    echo requests are told apart by their id."""

    protocol: str  # "tcp", "udp" or "icmp"
    dst: str
    src: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None

    def match(self) -> str:
        """The nft expression that matches this flow's packets, in any family with IPv4."""
        words = []
        if self.src:
            words.append(f"ip saddr {self.src}")
        words.append(f"ip daddr {self.dst}")
        if self.protocol == "icmp":
            words.append(f"icmp type echo-request icmp id {self.icmp_id}")
        else:
            words.append(f"{self.protocol} sport {self.sport} {self.protocol} dport {self.dport}")
        return " ".join(words)

    def carries(self, packet: Packet) -> bool:
        """Is this packet one of the flow's (in its first direction)?"""
        if packet.dst != self.dst or packet.protocol != self.protocol:
            return False
        if self.src and packet.src != self.src:
            return False
        if self.protocol == "icmp":
            return packet.icmp_id == self.icmp_id and packet.icmp_type == 8
        return packet.sport == self.sport and packet.dport == self.dport


def trace_table(family: str, name: str, hooks: Sequence[str], flow: Flow) -> str:
    """`nft -f` text: a table of its own with a chain per hook, each before every other
    table's, that switches tracing on for the flow's first packet only (the limit: a TCP SYN's
    retransmission is not traced again). Chains that set nothing still show where the packet
    went: a traced packet reports the policy of every base chain it passes."""
    chains = []
    for hook in hooks:
        rule = ""
        if hook in ("prerouting", "output"):  # where a packet enters this namespace's paths
            rule = f"\n        {flow.match()} limit rate 1/hour burst 1 packets meta nftrace set 1"
        chains.append(
            f"    chain {hook} {{\n"
            f"        type filter hook {hook} priority {TRACE_PRIORITY}; policy accept;{rule}\n"
            "    }"
        )
    body = "\n".join(chains)
    return f"{remove_table(family, name)}table {family} {name} {{\n{body}\n}}\n"


def remove_table(family: str, name: str) -> str:
    """`nft delete table FAMILY NAME`, whether or not it exists."""
    return f"add table {family} {name}\ndelete table {family} {name}\n"
