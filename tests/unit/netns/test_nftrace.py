"""Trace events parsed from netlink datagrams as the kernel sends them, the flow's match and
the trace table's text."""

from __future__ import annotations

import socket
import struct

from netns import nftrace


def attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * ((4 - length % 4) % 4)


def message(family: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    kind = (nftrace.NFNL_SUBSYS_NFTABLES << 8) | nftrace.NFT_MSG_TRACE
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def ipv4(src: str, dst: str, proto: int, ident: int = 0x1234) -> bytes:
    return (
        struct.pack("!BBHHHBBH", 0x45, 0, 40, ident, 0x4000, 64, proto, 0)
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
    )


def verdict(code: int, chain: str = "") -> bytes:
    nested = attr(nftrace.VERDICT_CODE, struct.pack("!i", code))
    if chain:
        nested += attr(nftrace.VERDICT_CHAIN, chain.encode() + b"\0")
    return attr(nftrace.TRACE_VERDICT, nested)


def test_a_rule_event_with_its_packet() -> None:
    data = message(
        1,  # inet
        attr(nftrace.TRACE_ID, struct.pack("!I", 77)),
        attr(nftrace.TRACE_TABLE, b"dynod\0"),
        attr(nftrace.TRACE_CHAIN, b"forward\0"),
        attr(nftrace.TRACE_TYPE, struct.pack("!I", 3)),
        attr(nftrace.TRACE_RULE_HANDLE, struct.pack("!Q", 24)),
        verdict(0),
        attr(nftrace.TRACE_NETWORK_HEADER, ipv4("172.16.0.6", "172.16.0.10", 6)),
        attr(nftrace.TRACE_TRANSPORT_HEADER, struct.pack("!HH", 40000, 8080) + b"\0" * 16),
    )
    (event,) = nftrace.parse_events(data)
    assert (event.id, event.family, event.table, event.chain) == (77, "inet", "dynod", "forward")
    assert (event.kind, event.verdict, event.handle) == ("rule", "drop", 24)
    assert event.packet == nftrace.Packet("172.16.0.6", "172.16.0.10", "tcp", 0x1234, 40000, 8080)


def test_a_jump_a_policy_and_two_messages_in_one_datagram() -> None:
    jump = message(
        7,  # bridge
        attr(nftrace.TRACE_ID, struct.pack("!I", 5)),
        attr(nftrace.TRACE_TYPE, struct.pack("!I", 3)),
        verdict(-3, "from_dyno"),
    )
    policy = message(
        1,
        attr(nftrace.TRACE_ID, struct.pack("!I", 5)),
        attr(nftrace.TRACE_TYPE, struct.pack("!I", 1)),
        attr(nftrace.TRACE_POLICY, struct.pack("!I", 1)),
    )
    first, second = nftrace.parse_events(jump + policy)
    assert (first.family, first.verdict, first.target) == ("bridge", "jump", "from_dyno")
    assert (second.kind, second.verdict, second.packet) == ("policy", "accept", None)


def test_other_messages_and_truncated_ones_are_skipped() -> None:
    other = struct.pack("=IHHII", 20, (10 << 8) | 15, 0, 0, 0) + b"\0" * 4  # a NEWGEN
    assert nftrace.parse_events(other + b"\x01\x02") == []


def test_an_icmp_echo_request_and_what_is_not_ipv4() -> None:
    echo = nftrace.parse_packet(ipv4("10.1.0.6", "10.1.0.10", 1), bytes([8, 0, 0, 0, 0, 9, 0, 1]))
    assert echo is not None and (echo.icmp_type, echo.icmp_id) == (8, 9)
    assert nftrace.parse_packet(b"\x60" + b"\0" * 39, b"") is None  # IPv6
    assert nftrace.parse_packet(b"\x45\0", b"") is None


def test_a_flow_matches_its_own_packets_only() -> None:
    flow = nftrace.Flow("udp", "10.1.0.1", "10.1.0.6", 41000, 53)
    assert flow.match() == "ip saddr 10.1.0.6 ip daddr 10.1.0.1 udp sport 41000 udp dport 53"
    assert flow.carries(nftrace.Packet("10.1.0.6", "10.1.0.1", "udp", 1, 41000, 53))
    assert not flow.carries(nftrace.Packet("10.1.0.6", "10.1.0.1", "udp", 1, 41001, 53))
    assert not flow.carries(nftrace.Packet("10.1.0.1", "10.1.0.6", "udp", 1, 53, 41000))
    ping = nftrace.Flow("icmp", "172.16.0.6", icmp_id=7)
    assert ping.match() == "ip daddr 172.16.0.6 icmp type echo-request icmp id 7"
    assert ping.carries(
        nftrace.Packet("172.16.0.1", "172.16.0.6", "icmp", 1, icmp_type=8, icmp_id=7)
    )
    assert not ping.carries(
        nftrace.Packet("172.16.0.1", "172.16.0.6", "icmp", 1, icmp_type=0, icmp_id=7)
    )


def test_the_trace_table_traces_the_first_packet_where_it_enters() -> None:
    flow = nftrace.Flow("tcp", "172.16.0.10", "172.16.0.6", 40000, 8080)
    text = nftrace.trace_table("inet", "dynod-trace", ("output", "postrouting"), flow)
    assert text.startswith("add table inet dynod-trace\ndelete table inet dynod-trace\n")
    assert "type filter hook output priority -400; policy accept;" in text
    assert f"{flow.match()} limit rate 1/hour burst 1 packets meta nftrace set 1" in text
    assert text.count("meta nftrace set 1") == 1  # in output, not postrouting
